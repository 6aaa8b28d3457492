using System.Collections.Concurrent;
using System.Globalization;
using System.Security.Cryptography;
using System.Text.RegularExpressions;
using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;
using RebootlessUpdate.Images.Interop;

namespace RebootlessUpdate.Images;

/// <summary>
/// The logic every folder-backed store shares (layout in MANIFEST.md):
/// <c>ROOT/.rebootless-store</c>, <c>ROOT/.lock</c>,
/// <c>ROOT/sets/ID/images/</c> (CRIU's folder) and <c>ROOT/sets/ID/manifest.json</c>.
/// </summary>
internal sealed partial class SetStoreEngine
{
    private const FilePermissions FileMode0600 = FilePermissions.S_IRUSR | FilePermissions.S_IWUSR;
    private const FilePermissions DirMode0700 = FilePermissions.S_IRWXU;

    /// <summary>Folders created on the way to a new store: 0755, never writable by others whatever the umask allows.</summary>
    private const UnixFileMode AncestorMode = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute
        | UnixFileMode.GroupRead | UnixFileMode.GroupExecute | UnixFileMode.OtherRead | UnixFileMode.OtherExecute;

    /// <summary>A manifest larger than this is refused unread (a real one lists a few thousand files).</summary>
    private const long MaxManifestBytes = 64L << 20;

    /// <summary>How much older than its hash a file's last change must be for a pre-hash to count (covers coarse file-system clocks).</summary>
    private static readonly TimeSpan RacyMargin = TimeSpan.FromMilliseconds(50);

    private readonly IImageStore _owner;
    private readonly TimeProvider _time;
    private readonly string _machineIdPath;
    private readonly ManifestKey? _key;
    private readonly ILogger _logger;

    internal SetStoreEngine(IImageStore owner, string root, TimeProvider time, string machineIdPath, ILogger logger, bool readOnly = false, string? manifestKeyPath = null)
    {
        _owner = owner;
        _time = time;
        _machineIdPath = machineIdPath;
        _logger = logger;
        Root = Path.GetFullPath(root);
        _key = manifestKeyPath is null ? null : new ManifestKey(KeyOutsideStore(manifestKeyPath, Root));
        ReadOnly = readOnly;
        if (readOnly)
        {
            Probe();
        }
        else
        {
            Initialise();
        }
    }

    internal string Root { get; }

    /// <summary>
    /// Narrows what the file system reports (a store in memory must leave memory to the system); null: the file
    /// system's figures.
    /// </summary>
    internal Func<StoreCapacity, StoreCapacity>? CapacityLimit { get; init; }

    /// <summary>How <see cref="CapacityLimit"/> counts, said when a plan does not fit.</summary>
    internal string? CapacityNote { get; init; }

    /// <summary>Opened only to look (<see cref="DirectoryImageStoreOptions.ReadOnly"/>).</summary>
    internal bool ReadOnly { get; }

    /// <summary>False for a read-only store whose folder (or sets folder) does not exist yet: it reads as empty.</summary>
    private bool HasSets { get; set; } = true;

    private string SetsDirectory => Path.Combine(Root, CheckpointSetLayout.SetsFolder);

    [GeneratedRegex("^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$", RegexOptions.CultureInvariant)]
    internal static partial Regex SetIdPattern();

    /// <summary>
    /// Makes <see cref="Root"/> a store, or checks it is one. The way to it is checked first
    /// (nothing is created or chmod'ed through a folder others may change). An existing folder
    /// that is neither a store nor empty is refused: taking it over would chmod and later
    /// prune someone else's files.
    /// </summary>
    private void Initialise()
    {
        StoreFiles.CheckStorePath(Root);
        if (StoreFiles.TypeOf(Root) is null)
        {
            Directory.CreateDirectory(Path.GetDirectoryName(Root)!, AncestorMode);
            MakeDirectory(Root);
            // Once more now that the whole way exists: in a sticky shared folder (like /tmp) someone may
            // have made a missing folder first. Nothing has been chmod'ed or written yet.
            StoreFiles.CheckStorePath(Root);
        }

        var isStore = CheckRootFolder();
        // Root-only: images contain process memory (keys, passwords).
        Chmod(Root, DirMode0700);
        if (!isStore)
        {
            using var handle = Libc.Open(MarkerPath, Libc.OWrOnly | Libc.OCreat | Libc.OExcl | Libc.ONoFollow, Libc.Mode0600);
            RandomAccess.Write(handle, System.Text.Encoding.ASCII.GetBytes(CheckpointSetLayout.MarkerContent), 0);
        }

        MakeDirectory(SetsDirectory);
        RequireOwnFolder(SetsDirectory);
        Chmod(SetsDirectory, DirMode0700);
    }

    /// <summary>The read-only open: the same checks as <see cref="Initialise"/>, and nothing created or changed.</summary>
    private void Probe()
    {
        StoreFiles.CheckStorePath(Root);
        if (StoreFiles.TypeOf(Root) is null)
        {
            HasSets = false;
            return;
        }

        CheckRootFolder();
        if (StoreFiles.TypeOf(SetsDirectory) is null)
        {
            HasSets = false;
            return;
        }

        RequireOwnFolder(SetsDirectory);
    }

    private string MarkerPath => Path.Combine(Root, CheckpointSetLayout.MarkerFile);

    /// <summary>Checks the existing root folder; returns whether it already is a store (carries the marker).</summary>
    private bool CheckRootFolder()
    {
        if (StoreFiles.CheckOwnFolder(Root, anyMode: true) is { } why)
        {
            throw new ImageStoreException($"the store folder {Root} {why}; images hold process memory, so the store must be a folder of the user running the update (uid {Syscall.geteuid()})");
        }

        var marker = StoreFiles.TypeOf(MarkerPath);
        if (marker is null)
        {
            var foreign = Directory.EnumerateFileSystemEntries(Root).Select(Path.GetFileName)
                .Where(n => n is not "lost+found").ToList();
            if (foreign.Count > 0)
            {
                throw new ImageStoreException(
                    $"{Root} is not an image store (no {CheckpointSetLayout.MarkerFile}) and is not empty (holds {string.Join(", ", foreign.Take(5))}); "
                    + "give an empty or new folder for the store");
            }

            return false; // empty: becomes a store (or, read-only, reads as an empty one)
        }

        if (marker != FilePermissions.S_IFREG)
        {
            throw new UnsafeStorePathException(Root, MarkerPath, $"is a {StoreFiles.Describe(marker.Value)}, not the store's marker file");
        }

        if (StoreFiles.CheckOwnFolder(Root) is { } open)
        {
            throw new UnsafeStorePathException(Root, Root, $"{open}: anyone allowed to write there may have planted sets; check what it holds, then chmod 700 {Root}");
        }

        return true;
    }

    /// <summary>Throws unless <paramref name="folder"/> is a real folder of ours that others cannot write.</summary>
    private void RequireOwnFolder(string folder)
    {
        if (StoreFiles.CheckOwnFolder(folder) is { } why)
        {
            throw new UnsafeStorePathException(Root, folder, why);
        }
    }

    private void RequireWritable(string what)
    {
        if (ReadOnly)
        {
            throw new InvalidOperationException($"the image store at {Root} was opened read-only; {what} needs it opened for writing");
        }
    }

    internal ImageStoreLock AcquireLock()
    {
        RequireWritable("locking");
        return StoreLock.Acquire(Path.Combine(Root, CheckpointSetLayout.LockFile));
    }

    internal CheckpointSet CreateSet(IReadOnlyList<string> targets)
    {
        ArgumentNullException.ThrowIfNull(targets);
        RequireWritable("creating a set");
        if (targets.Any(string.IsNullOrWhiteSpace))
        {
            throw new ArgumentException("a target description is empty", nameof(targets));
        }

        var machineId = ReadMachineId();
        var now = _time.GetUtcNow();
        var id = now.ToString("yyyyMMdd'T'HHmmss'Z'", CultureInfo.InvariantCulture) + "-" + RandomNumberGenerator.GetHexString(8, lowercase: true);
        var dir = Path.Combine(SetsDirectory, id);
        MakeDirectory(dir, mustBeNew: true);
        MakeDirectory(Path.Combine(dir, CheckpointSetLayout.ImagesFolder), mustBeNew: true);
        Log.SetCreated(_logger, id, Root);
        return new CheckpointSet(_owner, id, dir, [.. targets], machineId, now);
    }

    internal async Task<CheckpointManifest> SealAsync(CheckpointSet checkpointSet, SealOptions options, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(checkpointSet);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentException.ThrowIfNullOrWhiteSpace(options.CriuVersion);
        RequireWritable("sealing");
        if (!ReferenceEquals(checkpointSet.Store, _owner))
        {
            throw new ArgumentException($"set {checkpointSet.Id} belongs to another store", nameof(checkpointSet));
        }

        var manifestPath = Path.Combine(checkpointSet.Directory, ManifestFormat.FileName);
        var markPath = Path.Combine(checkpointSet.Directory, CheckpointSetLayout.SealMarkFile);
        if (StoreFiles.TypeOf(manifestPath) is not null || StoreFiles.TypeOf(markPath) is not null)
        {
            throw new ImageStoreException($"set {checkpointSet.Id} is already sealed ({manifestPath} or its seal mark exists); a sealed set is never rewritten — create a new set");
        }

        if (StoreFiles.TypeOf(checkpointSet.ImagesDirectory) is null)
        {
            throw new CheckpointSetNotFoundException(checkpointSet.Id, Root);
        }

        RequireOwnFolder(checkpointSet.Directory);
        RequireOwnFolder(checkpointSet.ImagesDirectory);

        var key = _key?.Load(create: true); // before anything is written: a key that cannot be used fails the seal cleanly
        var kernel = options.KernelRelease ?? (await File.ReadAllTextAsync("/proc/sys/kernel/osrelease", cancellationToken).ConfigureAwait(false)).Trim();
        var entries = await Task.Run(() => HashForSeal(checkpointSet.ImagesDirectory, checkpointSet.Prehashed, cancellationToken), cancellationToken).ConfigureAwait(false);
        var manifest = new CheckpointManifest
        {
            SetId = checkpointSet.Id,
            HostMachineId = checkpointSet.HostMachineId,
            KernelRelease = kernel,
            CriuVersion = options.CriuVersion,
            Targets = checkpointSet.Targets,
            TotalBytes = entries.Sum(e => e.Size),
            CreatedAt = checkpointSet.CreatedAt,
            SealedAt = _time.GetUtcNow(),
            Files = entries,
        };

        var bytes = ManifestFormat.Write(manifest);
        WriteSealed(checkpointSet.Directory, manifestPath, bytes, markPath, key is null ? [] : ManifestKey.Mark(key, bytes));
        Log.SetSealed(_logger, checkpointSet.Id, entries.Count, manifest.TotalBytes);
        return manifest;
    }

    internal async Task PrehashAsync(CheckpointSet checkpointSet, string folder, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(checkpointSet);
        ArgumentException.ThrowIfNullOrWhiteSpace(folder);
        RequireWritable("pre-hashing");
        if (!ReferenceEquals(checkpointSet.Store, _owner))
        {
            throw new ArgumentException($"set {checkpointSet.Id} belongs to another store", nameof(checkpointSet));
        }

        if (SetPaths.Check(folder) is { } why)
        {
            throw new ArgumentException($"'{folder}' {why}", nameof(folder));
        }

        var dir = SetPaths.Resolve(checkpointSet.ImagesDirectory, folder, out var unsafePath)
            ?? throw new ArgumentException($"'{folder}' {unsafePath}", nameof(folder));
        if (StoreFiles.TypeOf(dir) != FilePermissions.S_IFDIR)
        {
            throw new DirectoryNotFoundException($"set {checkpointSet.Id} has no folder '{folder}'");
        }

        var (files, bytes) = await Task.Run(() => Prehash(checkpointSet.ImagesDirectory, dir, checkpointSet.Prehashed, cancellationToken), cancellationToken).ConfigureAwait(false);
        Log.SetPrehashed(_logger, checkpointSet.Id, folder, files, bytes);
    }

    /// <summary>Fsyncs and hashes the plain files under <paramref name="dir"/> (not following links), remembering each one's identity.</summary>
    private static (int Files, long Bytes) Prehash(string images, string dir, ConcurrentDictionary<string, PrehashedFile> into, CancellationToken cancellationToken)
    {
        int files = 0;
        long bytes = 0;
        foreach (var (relative, full, type) in Walk(images, dir))
        {
            cancellationToken.ThrowIfCancellationRequested();
            if (type != FilePermissions.S_IFREG)
            {
                continue;
            }

            using var handle = StoreFiles.OpenRegular(full);
            var identity = PrepareForSeal(handle, full, relative);
            // A write after the hash must move the identity. Time stamps come from a coarse clock
            // (a tick of up to 10 ms), so a write in the same tick as the last one could keep them:
            // hash only once the last change is older than that ("racy git"'s rule).
            var age = DateTimeOffset.UtcNow - DateTimeOffset.FromUnixTimeSeconds(identity.CTime).AddTicks(identity.CTimeNsec / 100);
            if (age < RacyMargin)
            {
                Thread.Sleep(RacyMargin - age);
            }

            var digest = FileHasher.Hash(handle, ChunkedFiles.Wanted(relative), cancellationToken);
            // Written to while it was read (its identity moved): leave it to the seal.
            if (digest.Length == identity.Size && Identity(handle, full) == identity)
            {
                into[relative] = new PrehashedFile(identity, digest);
                files++;
                bytes += digest.Length;
            }
        }

        return (files, bytes);
    }

    /// <summary>
    /// Makes a file 0600 (only when it is not: a chmod moves its ctime) and durable; returns its identity after that.
    /// A file of another user is refused: its owner could rewrite it after the seal.
    /// </summary>
    /// <exception cref="UnsafeSetPathException">The file belongs to another user.</exception>
    private static FileIdentity PrepareForSeal(SafeFileHandle handle, string path, string relative)
    {
        if (Syscall.fstat(Fd(handle), out var st) != 0)
        {
            throw new ImageStoreException($"fstat {path} failed: {Stdlib.strerror(Stdlib.GetLastError())}");
        }

        if (StoreFiles.CheckOwner(st) is { } notOurs)
        {
            throw new UnsafeSetPathException(relative, notOurs);
        }

        if ((st.st_mode & FilePermissions.ALLPERMS) != FileMode0600 && Syscall.fchmod(Fd(handle), FileMode0600) != 0)
        {
            throw new ImageStoreException($"chmod {path} failed: {Stdlib.strerror(Stdlib.GetLastError())}");
        }

        Libc.FsyncOrThrow(handle, path);
        return Identity(handle, path);
    }

    private static FileIdentity Identity(SafeFileHandle handle, string path) =>
        Syscall.fstat(Fd(handle), out var st) == 0
            ? new FileIdentity(st.st_dev, st.st_ino, st.st_size, st.st_mtime, st.st_mtime_nsec, st.st_ctime, st.st_ctime_nsec)
            : throw new ImageStoreException($"fstat {path} failed: {Stdlib.strerror(Stdlib.GetLastError())}");

    private static int Fd(SafeFileHandle handle) => (int)handle.DangerousGetHandle();

    /// <summary>
    /// Walks the images folder: rejects anything unsafe, makes files 0600 and
    /// folders 0700, fsyncs every file (the page cache does not survive kexec;
    /// the manifest must never be durable before the data it vouches for) and hashes it,
    /// unless <paramref name="prehashed"/> holds its hash from before and the file has not
    /// changed since (same device, inode, size, mtime and ctime).
    /// </summary>
    private static List<ManifestEntry> HashForSeal(string images, ConcurrentDictionary<string, PrehashedFile> prehashed, CancellationToken cancellationToken)
    {
        var entries = new List<ManifestEntry>();
        foreach (var (relative, full, type) in Walk(images, images))
        {
            cancellationToken.ThrowIfCancellationRequested();
            switch (type)
            {
                case FilePermissions.S_IFDIR:
                    if (StoreFiles.CheckOwnFolder(full, anyMode: true) is { } notOurs)
                    {
                        throw new UnsafeSetPathException(relative, notOurs);
                    }

                    Chmod(full, DirMode0700);
                    Libc.FsyncDirectory(full);
                    break;
                case FilePermissions.S_IFREG:
                    using (var handle = StoreFiles.OpenRegular(full))
                    {
                        var identity = PrepareForSeal(handle, full, relative);
                        var digest = prehashed.TryGetValue(relative, out var known) && known.Identity == identity
                            ? known.Digest
                            : FileHasher.Hash(handle, ChunkedFiles.Wanted(relative), cancellationToken);
                        entries.Add(new ManifestEntry
                        {
                            Path = relative, Size = digest.Length, Xxh128 = digest.Hash,
                            ChunkSize = digest.Chunks is null ? null : FileHasher.ChunkSize, ChunkXxh128 = digest.Chunks,
                        });
                    }

                    break;
                case FilePermissions.S_IFLNK:
                    // Only CRIU's own link to the previous dump of an iterative dump; it is not hashed,
                    // the folder it names is (and must be a real folder of the set).
                    var target = StoreFiles.ReadLink(full);
                    if (SetPaths.CheckParentLink(relative, target) is { } why)
                    {
                        throw new UnsafeSetPathException(relative, why);
                    }

                    if (StoreFiles.TypeOf(Path.Combine(images, SetPaths.ParentLinkFolder(target))) is var parentType && parentType != FilePermissions.S_IFDIR)
                    {
                        throw new UnsafeSetPathException(relative, $"is CRIU's parent link to '{target}', but that is {(parentType is { } t ? "a " + StoreFiles.Describe(t) : "missing")}, not a folder of the set");
                    }

                    entries.Add(new ManifestEntry { Path = relative, Size = 0, SymlinkTarget = target });
                    break;
                default:
                    throw new UnsafeSetPathException(relative, $"is a {StoreFiles.Describe(type)}, not a plain file");
            }
        }

        Libc.FsyncDirectory(images);
        entries.Sort((a, b) => string.CompareOrdinal(a.Path, b.Path));
        return entries;
    }

    /// <summary>
    /// Temp file, fsync, rename, then the seal mark, fsync the folder: the manifest appears whole
    /// or not at all, and once it has, the mark says so even if the manifest is later deleted.
    /// </summary>
    private static void WriteSealed(string directory, string path, byte[] content, string markPath, byte[] markContent)
    {
        StoreFiles.WriteAtomically(path, content, overwrite: false, syncDirectory: false);
        StoreFiles.WriteNew(markPath, markContent);

        // One folder fsync for both (the seal runs inside the freeze). Should a crash keep the
        // mark without the manifest, the set reads as damaged: refused, never restored unchecked.
        Libc.FsyncDirectory(directory);
    }

    internal async Task<VerificationResult> VerifyAsync(string setId, VerifyOptions? options, CancellationToken cancellationToken)
    {
        options ??= new VerifyOptions();
        var dir = SetDirectory(setId);
        return await Task.Run(() => Verify(setId, dir, options, cancellationToken), cancellationToken).ConfigureAwait(false);
    }

    private VerificationResult Verify(string setId, string dir, VerifyOptions options, CancellationToken cancellationToken)
    {
        var images = Path.Combine(dir, CheckpointSetLayout.ImagesFolder);
        var manifestPath = Path.Combine(dir, ManifestFormat.FileName);
        var issues = new List<VerificationIssue>();
        VerificationResult Done(CheckpointManifest? m, long hashed)
        {
            var result = new VerificationResult(setId, images, options.Mode, m, issues, hashed);
            Log.SetVerified(_logger, setId, options.Mode, issues.Count);
            return result;
        }

        if (StoreFiles.TypeOf(images) is not null && StoreFiles.CheckOwnFolder(images) is { } untrusted)
        {
            // Never walked or read through: a linked images folder would make the manifest vouch for files elsewhere.
            issues.Add(new(VerificationIssueKind.UntrustedFolder, CheckpointSetLayout.ImagesFolder, $"the images folder {untrusted}; the set was not made by rebootless as it is"));
            return Done(null, 0);
        }

        var (manifest, problem) = ReadManifest(dir);
        if (problem is not null)
        {
            issues.Add(problem);
            return Done(null, 0);
        }

        if (manifest!.SetId != setId)
        {
            issues.Add(new(VerificationIssueKind.ManifestCorrupt, ManifestFormat.FileName,
                $"the manifest belongs to set {manifest.SetId}, not {setId} (copied or moved between sets)"));
            return Done(null, 0);
        }

        if (!options.AllowForeignHost)
        {
            var here = ReadMachineId();
            if (!string.Equals(here, manifest.HostMachineId, StringComparison.Ordinal))
            {
                issues.Add(new(VerificationIssueKind.ForeignHost, ManifestFormat.FileName,
                    $"sealed on host {manifest.HostMachineId}, this host is {here}; restoring another host's processes is refused unless explicitly allowed"));
            }
        }

        // Files are checked in parallel (hashing is CPU-bound once the data is in
        // memory, as it is on tmpfs or pmem); results are merged in manifest order.
        var selected = options.Include is { } include ? manifest.Files.Where(f => include(f.Path)).ToList() : manifest.Files;
        var checks = new (VerificationIssue? Issue, bool Missing, long Hashed)[selected.Count];
        var parallelism = Math.Clamp(options.MaxParallelism ?? Environment.ProcessorCount, 1, Environment.ProcessorCount);
        Parallel.For(0, selected.Count, new ParallelOptions { CancellationToken = cancellationToken, MaxDegreeOfParallelism = parallelism },
            i => checks[i] = CheckEntry(images, selected[i], options.Mode, cancellationToken));
        long hashed = 0;
        var missing = new List<ManifestEntry>();
        var listed = new HashSet<string>(manifest.Files.Select(f => f.Path), StringComparer.Ordinal);
        for (var i = 0; i < checks.Length; i++)
        {
            hashed += checks[i].Hashed;
            if (checks[i].Missing)
            {
                missing.Add(selected[i]);
            }
            else if (checks[i].Issue is { } issue)
            {
                issues.Add(issue);
            }
        }

        // Whatever is on disk and not listed: extra files, or the other half of a rename.
        var extras = new List<(string Relative, string Full, FilePermissions Type)>();
        if (options.ReportUnlisted && StoreFiles.TypeOf(images) == FilePermissions.S_IFDIR)
        {
            foreach (var item in Walk(images, images))
            {
                if (item.Type == FilePermissions.S_IFDIR)
                {
                    if (StoreFiles.CheckOwnFolder(item.Full) is { } why)
                    {
                        issues.Add(new(VerificationIssueKind.UntrustedFolder, item.Relative, $"the folder {why}"));
                    }
                }
                else if (!listed.Contains(item.Relative))
                {
                    extras.Add(item);
                }
            }
        }

        foreach (var entry in missing)
        {
            var match = entry.Xxh128 is null ? default : extras.FirstOrDefault(x => x.Type == FilePermissions.S_IFREG
                && FileSize(x.Full) == entry.Size && SafeHash(x.Full, cancellationToken) == entry.Xxh128);
            if (match.Relative is not null)
            {
                extras.Remove(match);
                issues.Add(new(VerificationIssueKind.Renamed, entry.Path, $"renamed to '{match.Relative}' (same content)", match.Relative));
            }
            else
            {
                issues.Add(new(VerificationIssueKind.Missing, entry.Path, $"recorded ({entry.Size} bytes) but not present"));
            }
        }

        foreach (var (relative, full, type) in extras)
        {
            var detail = type switch
            {
                FilePermissions.S_IFREG => $"not in the manifest ({FileSize(full)} bytes)",
                FilePermissions.S_IFLNK => $"not in the manifest (a symbolic link to '{StoreFiles.ReadLink(full)}')",
                _ => $"not in the manifest (a {StoreFiles.Describe(type)})",
            };
            issues.Add(new(VerificationIssueKind.Extra, relative, detail));
        }

        return Done(manifest, hashed);
    }

    /// <summary>Checks one manifest entry against the disk; "missing" is decided later (it may be half of a rename).</summary>
    private static (VerificationIssue? Issue, bool Missing, long Hashed) CheckEntry(string images, ManifestEntry entry, VerificationMode mode, CancellationToken cancellationToken)
    {
        var full = SetPaths.Resolve(images, entry.Path, out var problem);
        if (full is null)
        {
            return (new(VerificationIssueKind.PathEscape, entry.Path, problem!), false, 0);
        }

        if (Syscall.lstat(full, out var st) != 0)
        {
            return (null, true, 0);
        }

        var type = st.st_mode & FilePermissions.S_IFMT;
        if (entry.SymlinkTarget is { } recordedTarget)
        {
            return (CheckParentLinkEntry(images, entry, recordedTarget, type, full), false, 0);
        }

        if (type != FilePermissions.S_IFREG)
        {
            return (type == FilePermissions.S_IFLNK
                ? new(VerificationIssueKind.PathEscape, entry.Path, $"was a file, now a symbolic link to '{StoreFiles.ReadLink(full)}'")
                : new(VerificationIssueKind.TypeChanged, entry.Path, $"recorded as a file, found a {StoreFiles.Describe(type)}"), false, 0);
        }

        if (StoreFiles.CheckOwn(st) is { } notOurs)
        {
            return (new(VerificationIssueKind.UntrustedFile, entry.Path, notOurs + ": someone other than us could change it after the check"), false, 0);
        }

        if (st.st_size < entry.Size)
        {
            return (new(VerificationIssueKind.Truncated, entry.Path, $"{st.st_size} bytes, recorded {entry.Size}"), false, 0);
        }

        if (st.st_size > entry.Size)
        {
            return (new(VerificationIssueKind.Grown, entry.Path, $"{st.st_size} bytes, recorded {entry.Size}"), false, 0);
        }

        if (mode != VerificationMode.Full)
        {
            return (null, false, 0);
        }

        try
        {
            var chunked = entry.ChunkXxh128 is not null && entry.ChunkSize == FileHasher.ChunkSize;
            var digest = FileHasher.Hash(full, chunked, cancellationToken);
            var length = digest.Length;
            var badChunk = chunked ? ChunkedFiles.FirstMismatch(entry.ChunkXxh128!, digest.Chunks!) : -1;
            var where = badChunk < 0 ? string.Empty : $"; the first altered chunk starts at offset {(long)badChunk * FileHasher.ChunkSize}";
            return length != entry.Size
                ? (new(VerificationIssueKind.Truncated, entry.Path, $"read {length} bytes, recorded {entry.Size} (changed while verifying)"), false, length)
                : digest.Hash != entry.Xxh128
                    ? (new(VerificationIssueKind.ContentChanged, entry.Path, $"content hash {digest.Hash}, recorded {entry.Xxh128} (same size {entry.Size}): the bytes were altered{where}"), false, length)
                    : badChunk >= 0
                        ? (new(VerificationIssueKind.ContentChanged, entry.Path, $"its content matches the recorded hash but not the recorded chunk hashes{where}: the manifest was altered"), false, length)
                        : (null, false, length);
        }
        catch (IOException e)
        {
            return (new(VerificationIssueKind.Unreadable, entry.Path, e.Message), false, 0);
        }
    }

    /// <summary>
    /// A link entry is trusted only as CRIU's parent link of an iterative dump whose folder is a
    /// real folder of the set (its files are entries of their own, hashed); any other link
    /// entry is damage, whatever the manifest says (an old manifest could list any link).
    /// </summary>
    private static VerificationIssue? CheckParentLinkEntry(string images, ManifestEntry entry, string recordedTarget, FilePermissions type, string full)
    {
        if (SetPaths.CheckParentLink(entry.Path, recordedTarget) is { } why)
        {
            return new(VerificationIssueKind.UnsafeEntry, entry.Path, $"recorded in the manifest as a link: {why}; a manifest vouches for no other link");
        }

        if (type != FilePermissions.S_IFLNK)
        {
            return new(VerificationIssueKind.TypeChanged, entry.Path, $"recorded as CRIU's parent link, found a {StoreFiles.Describe(type)}");
        }

        var target = StoreFiles.ReadLink(full);
        if (target != recordedTarget)
        {
            return new(VerificationIssueKind.TypeChanged, entry.Path, $"the link points to '{target}', recorded '{recordedTarget}'");
        }

        var folderType = StoreFiles.TypeOf(Path.Combine(images, SetPaths.ParentLinkFolder(target)));
        return folderType == FilePermissions.S_IFDIR
            ? null
            : new(VerificationIssueKind.UnsafeEntry, entry.Path, $"the parent link's '{target}' is {(folderType is { } t ? "a " + StoreFiles.Describe(t) : "missing")}, not a folder of the set");
    }

    /// <summary>
    /// The set's manifest, or the issue that stops verification: no manifest and no seal mark
    /// (never sealed), a seal mark without manifest (deleted), or a manifest that is no regular
    /// file, too large, unreadable or corrupt, or (with a manifest key) whose keyed hash is missing
    /// or wrong. Never opens a FIFO or device for a blocking read.
    /// </summary>
    private (CheckpointManifest? Manifest, VerificationIssue? Problem) ReadManifest(string dir)
    {
        var manifestPath = Path.Combine(dir, ManifestFormat.FileName);
        if (StoreFiles.TypeOf(manifestPath) is null)
        {
            return StoreFiles.TypeOf(Path.Combine(dir, CheckpointSetLayout.SealMarkFile)) is null
                ? (null, new(VerificationIssueKind.NotSealed, ManifestFormat.FileName,
                    "the set has no manifest and no seal mark: it was never sealed, so nothing vouches for its images"))
                : (null, new(VerificationIssueKind.ManifestMissing, ManifestFormat.FileName,
                    "the set was sealed (it carries the seal mark) but its manifest is gone (deleted or lost): nothing vouches for its images any more"));
        }

        try
        {
            var bytes = StoreFiles.ReadRegular(manifestPath, MaxManifestBytes);
            var manifest = ManifestFormat.Read(bytes, manifestPath);
            return (_key is null ? SealedWithAKey(dir) : CheckKeyedHash(dir, bytes)) is not { } why
                ? (manifest, null)
                : (null, new(VerificationIssueKind.ManifestUnauthenticated, ManifestFormat.FileName, why));
        }
        catch (ManifestCorruptException e)
        {
            return (null, new(VerificationIssueKind.ManifestCorrupt, ManifestFormat.FileName, e.Reason));
        }
        catch (UnsafeSetPathException e)
        {
            return (null, new(VerificationIssueKind.PathEscape, e.SetPath, e.Message));
        }
        catch (IOException e)
        {
            return (null, new(VerificationIssueKind.ManifestCorrupt, ManifestFormat.FileName, $"it cannot be read: {e.Message}"));
        }
    }

    /// <summary>The key file's full path, when it is absolute and outside the store (a key the store's writers can replace proves nothing).</summary>
    private static string KeyOutsideStore(string path, string root)
    {
        if (string.IsNullOrWhiteSpace(path) || !Path.IsPathRooted(path))
        {
            throw new ArgumentException($"the manifest key path must be absolute (the same file for every run and for resume), not '{path}'.", nameof(path));
        }

        var full = Path.GetFullPath(path);
        if (full == root || full.StartsWith(root + "/", StringComparison.Ordinal))
        {
            throw new ImageStoreException($"the manifest key {full} lies inside the store {root}: whoever can write the store could replace it; "
                + "keep it outside (e.g. /var/lib/rebootless/manifest.key)");
        }

        return full;
    }

    /// <summary>Why a set sealed with a key cannot be checked by this store (opened without one); null for a set sealed without a key.</summary>
    private static string? SealedWithAKey(string dir)
    {
        try
        {
            return ManifestKey.IsKeyedMark(StoreFiles.ReadRegular(Path.Combine(dir, CheckpointSetLayout.SealMarkFile), 4096))
                ? "the set was sealed with a manifest key and none was given, so nothing here can tell a rewritten manifest from ours: "
                    + "give the same key (--manifest-key FILE, or ManifestKeyPath) to verify or restore it"
                : null;
        }
        catch (IOException)
        {
            return null; // no readable mark: the manifest's own checks decide
        }
    }

    /// <summary>Null when the seal mark holds the keyed hash of the manifest bytes, else why not.</summary>
    private string? CheckKeyedHash(string dir, byte[] manifest)
    {
        byte[] key;
        try
        {
            key = _key!.Load(create: false);
        }
        catch (ImageStoreException e)
        {
            return e.Message;
        }

        try
        {
            return ManifestKey.Check(key, manifest, StoreFiles.ReadRegular(Path.Combine(dir, CheckpointSetLayout.SealMarkFile), 4096));
        }
        catch (IOException e)
        {
            return $"the seal mark cannot be read ({e.Message}), so nothing proves the manifest was written with the key";
        }
    }

    internal async Task<RestorableSet> OpenForRestoreAsync(string setId, VerifyOptions? options, CancellationToken cancellationToken)
    {
        var result = await VerifyAsync(setId, options, cancellationToken).ConfigureAwait(false);
        if (!result.IsValid)
        {
            throw new CheckpointSetVerificationException(result);
        }

        return new RestorableSet(result);
    }

    internal IReadOnlyList<CheckpointSetInfo> ListSets()
    {
        var list = new List<CheckpointSetInfo>();
        if (!HasSets)
        {
            return list;
        }

        foreach (var dir in Directory.EnumerateFileSystemEntries(SetsDirectory))
        {
            var id = Path.GetFileName(dir);
            if (!SetIdPattern().IsMatch(id))
            {
                continue;
            }

            var created = DateTimeOffset.ParseExact(id[..16], "yyyyMMdd'T'HHmmss'Z'", CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal);
            if (StoreFiles.CheckOwnFolder(dir) is { } untrusted)
            {
                // Not followed: whether it is sealed is unknown, and it is never taken for an unsealed set.
                list.Add(new(id, false, created, null) { Problem = $"the set folder {untrusted}", IsOwnFolder = false });
                continue;
            }

            var images = Path.Combine(dir, CheckpointSetLayout.ImagesFolder);
            var imagesProblem = StoreFiles.TypeOf(images) is not null && StoreFiles.CheckOwnFolder(images) is { } why ? $"the images folder {why}" : null;
            var (manifest, problem) = ReadManifest(dir);
            list.Add(problem?.Kind == VerificationIssueKind.NotSealed
                ? new(id, false, created, null) { Problem = imagesProblem }
                : new(id, true, manifest?.CreatedAt ?? created, manifest?.TotalBytes) { Problem = imagesProblem ?? problem?.Detail });
        }

        return [.. list.OrderBy(s => s.CreatedAt).ThenBy(s => s.SetId, StringComparer.Ordinal)];
    }

    internal void DeleteSet(string setId)
    {
        RequireWritable("deleting a set");
        var dir = SetDirectory(setId);
        Directory.Delete(dir, recursive: true); // does not follow links inside the set; the set folder itself is no link (checked)
        Log.SetDeleted(_logger, setId);
    }

    internal IReadOnlyList<string> ApplyRetention(int keepSealed)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(keepSealed);
        RequireWritable("retention");
        var sets = ListSets().Where(s => s.IsOwnFolder).ToList();
        var sealedNewestFirst = sets.Where(s => s.IsSealed).OrderByDescending(s => s.CreatedAt).ThenByDescending(s => s.SetId, StringComparer.Ordinal).ToList();
        var doomed = sealedNewestFirst.Skip(keepSealed).Select(s => s.SetId).ToList();
        if (sealedNewestFirst.Count > 0)
        {
            var newest = sealedNewestFirst[0].CreatedAt;
            doomed.AddRange(sets.Where(s => !s.IsSealed && s.CreatedAt < newest).Select(s => s.SetId));
        }

        foreach (var id in doomed)
        {
            DeleteSet(id);
        }

        return doomed;
    }

    internal StoreCapacity GetCapacity()
    {
        // A read-only store that does not exist yet: the file system it would be made on.
        var where = Root;
        while (StoreFiles.TypeOf(where) is null && Path.GetDirectoryName(where) is { } parent)
        {
            where = parent;
        }

        if (Syscall.statvfs(where, out var vfs) != 0)
        {
            throw new ImageStoreException($"statvfs {where} failed: {Stdlib.strerror(Stdlib.GetLastError())}");
        }

        var capacity = new StoreCapacity((long)(vfs.f_blocks * vfs.f_frsize), (long)(vfs.f_bavail * vfs.f_frsize));
        return CapacityLimit is null ? capacity : CapacityLimit(capacity);
    }

    internal CapacityEstimate EnsureCapacityFor(IReadOnlyCollection<int> rootPids)
    {
        ArgumentNullException.ThrowIfNull(rootPids);
        var (processes, memory, required) = CapacityEstimator.Estimate(rootPids);
        var free = GetCapacity().FreeBytes;
        var estimate = new CapacityEstimate(processes, memory, required, free);
        if (!estimate.Fits)
        {
            throw new StoreFullException(
                $"the image store at {Root} has {Bytes(free)} free{(CapacityNote is null ? "" : $" ({CapacityNote})")} but checkpointing {processes} processes (trees of {string.Join(", ", rootPids)}) "
                + $"needs about {Bytes(required)} ({Bytes(memory)} of memory plus margin); free space in the store or use a larger one before updating",
                free, required);
        }

        return estimate;
    }

    internal string SetDirectory(string setId)
    {
        ArgumentNullException.ThrowIfNull(setId);
        if (!SetIdPattern().IsMatch(setId))
        {
            throw new ArgumentException($"'{setId}' is not a checkpoint set id (expected e.g. 20261126T063200Z-1a2b3c4d)", nameof(setId));
        }

        var dir = Path.Combine(SetsDirectory, setId);
        if (!HasSets || StoreFiles.TypeOf(dir) is null)
        {
            throw new CheckpointSetNotFoundException(setId, Root);
        }

        // Never through a link (deleting or verifying must not reach outside the store), never another user's folder.
        RequireOwnFolder(dir);
        return dir;
    }

    internal string ReadMachineId()
    {
        try
        {
            var id = File.ReadAllText(_machineIdPath).Trim();
            if (id.Length > 0)
            {
                return id;
            }
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
        }

        throw new ImageStoreException($"cannot identify this host: {_machineIdPath} is missing or empty; create it (systemd-machine-id-setup or dbus-uuidgen) so sets can be tied to their host");
    }

    internal static string Bytes(long n) => n >= 1 << 20 ? $"{n / (double)(1 << 20):0.#} MiB ({n} bytes)" : $"{n} bytes";

    private static IEnumerable<(string Relative, string Full, FilePermissions Type)> Walk(string root, string dir)
    {
        foreach (var full in Directory.EnumerateFileSystemEntries(dir).Order(StringComparer.Ordinal))
        {
            var type = Syscall.lstat(full, out var st) == 0 ? st.st_mode & FilePermissions.S_IFMT : 0;
            if (type == 0)
            {
                continue; // vanished
            }

            yield return (SetPaths.Relative(root, full), full, type);
            if (type == FilePermissions.S_IFDIR)
            {
                foreach (var inner in Walk(root, full))
                {
                    yield return inner;
                }
            }
        }
    }

    private static long FileSize(string path) => Syscall.lstat(path, out var st) == 0 ? st.st_size : -1;

    private static string? SafeHash(string path, CancellationToken cancellationToken)
    {
        try
        {
            return FileHasher.Hash(path, chunks: false, cancellationToken).Hash;
        }
        catch (IOException)
        {
            return null;
        }
    }

    /// <summary>mkdir with 0700 from the start (no window in which the folder is world-readable); an existing one is fine unless <paramref name="mustBeNew"/>.</summary>
    private static void MakeDirectory(string path, bool mustBeNew = false)
    {
        if (Syscall.mkdir(path, DirMode0700) != 0 && (mustBeNew || Stdlib.GetLastError() != Errno.EEXIST))
        {
            throw new ImageStoreException($"mkdir {path} failed: {Stdlib.strerror(Stdlib.GetLastError())}");
        }
    }

    private static void Chmod(string path, FilePermissions mode)
    {
        if (Syscall.chmod(path, mode) != 0)
        {
            throw new ImageStoreException($"chmod {path} failed: {Stdlib.strerror(Stdlib.GetLastError())}");
        }
    }
}

/// <summary>What identifies one version of a file's content: a write, truncate, chmod or replacement moves one of these.</summary>
internal readonly record struct FileIdentity(ulong Device, ulong Inode, long Size, long MTime, long MTimeNsec, long CTime, long CTimeNsec);

/// <summary>A hash computed before sealing, valid while the file keeps <see cref="Identity"/>.</summary>
internal sealed record PrehashedFile(FileIdentity Identity, FileDigest Digest);
