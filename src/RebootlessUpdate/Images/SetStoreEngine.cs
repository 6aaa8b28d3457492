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

    /// <summary>How much older than its hash a file's last change must be for a pre-hash to count (covers coarse file-system clocks).</summary>
    private static readonly TimeSpan RacyMargin = TimeSpan.FromMilliseconds(50);

    private readonly IImageStore _owner;
    private readonly TimeProvider _time;
    private readonly string _machineIdPath;
    private readonly ILogger _logger;

    internal SetStoreEngine(IImageStore owner, string root, TimeProvider time, string machineIdPath, ILogger logger)
    {
        _owner = owner;
        _time = time;
        _machineIdPath = machineIdPath;
        _logger = logger;
        Root = Path.GetFullPath(root);
        Initialise();
    }

    internal string Root { get; }

    private string SetsDirectory => Path.Combine(Root, CheckpointSetLayout.SetsFolder);

    [GeneratedRegex("^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$", RegexOptions.CultureInvariant)]
    internal static partial Regex SetIdPattern();

    /// <summary>
    /// Makes <see cref="Root"/> a store, or checks it is one. An existing folder
    /// that is neither a store nor empty is refused: taking it over would chmod and
    /// later prune someone else's files.
    /// </summary>
    private void Initialise()
    {
        var marker = Path.Combine(Root, CheckpointSetLayout.MarkerFile);
        if (!Directory.Exists(Root))
        {
            Directory.CreateDirectory(Path.GetDirectoryName(Root)!);
            MakeDirectory(Root);
        }
        else if (!File.Exists(marker))
        {
            var foreign = Directory.EnumerateFileSystemEntries(Root).Select(Path.GetFileName)
                .Where(n => n is not "lost+found").ToList();
            if (foreign.Count > 0)
            {
                throw new ImageStoreException(
                    $"{Root} is not an image store (no {CheckpointSetLayout.MarkerFile}) and is not empty (holds {string.Join(", ", foreign.Take(5))}); "
                    + "give an empty or new folder for the store");
            }
        }

        if (Syscall.stat(Root, out var st) != 0)
        {
            throw new ImageStoreException($"cannot stat the store folder {Root}: {Stdlib.strerror(Stdlib.GetLastError())}");
        }

        if (st.st_uid != Syscall.geteuid())
        {
            throw new ImageStoreException($"the store folder {Root} belongs to uid {st.st_uid}, not to this process (uid {Syscall.geteuid()}); images hold process memory, so the store must belong to the user running the update");
        }

        // Root-only: images contain process memory (keys, passwords).
        Chmod(Root, DirMode0700);
        if (!File.Exists(marker))
        {
            File.WriteAllText(marker, CheckpointSetLayout.MarkerContent);
            Chmod(marker, FileMode0600);
        }

        MakeDirectory(SetsDirectory);
        Chmod(SetsDirectory, DirMode0700);
    }

    internal ImageStoreLock AcquireLock() => StoreLock.Acquire(Path.Combine(Root, CheckpointSetLayout.LockFile));

    internal CheckpointSet CreateSet(IReadOnlyList<string> targets)
    {
        ArgumentNullException.ThrowIfNull(targets);
        if (targets.Any(string.IsNullOrWhiteSpace))
        {
            throw new ArgumentException("a target description is empty", nameof(targets));
        }

        var machineId = ReadMachineId();
        var now = _time.GetUtcNow();
        var id = now.ToString("yyyyMMdd'T'HHmmss'Z'", CultureInfo.InvariantCulture) + "-" + RandomNumberGenerator.GetHexString(8, lowercase: true);
        var dir = Path.Combine(SetsDirectory, id);
        MakeDirectory(dir);
        MakeDirectory(Path.Combine(dir, CheckpointSetLayout.ImagesFolder));
        Log.SetCreated(_logger, id, Root);
        return new CheckpointSet(_owner, id, dir, [.. targets], machineId, now);
    }

    internal async Task<CheckpointManifest> SealAsync(CheckpointSet checkpointSet, SealOptions options, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(checkpointSet);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentException.ThrowIfNullOrWhiteSpace(options.CriuVersion);
        if (!ReferenceEquals(checkpointSet.Store, _owner))
        {
            throw new ArgumentException($"set {checkpointSet.Id} belongs to another store", nameof(checkpointSet));
        }

        var manifestPath = Path.Combine(checkpointSet.Directory, ManifestFormat.FileName);
        if (File.Exists(manifestPath))
        {
            throw new ImageStoreException($"set {checkpointSet.Id} is already sealed ({manifestPath} exists); a sealed set is never rewritten — create a new set");
        }

        if (!Directory.Exists(checkpointSet.ImagesDirectory))
        {
            throw new CheckpointSetNotFoundException(checkpointSet.Id, Root);
        }

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

        WriteAtomically(checkpointSet.Directory, manifestPath, ManifestFormat.Write(manifest));
        Log.SetSealed(_logger, checkpointSet.Id, entries.Count, manifest.TotalBytes);
        return manifest;
    }

    internal async Task PrehashAsync(CheckpointSet checkpointSet, string folder, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(checkpointSet);
        ArgumentException.ThrowIfNullOrWhiteSpace(folder);
        if (!ReferenceEquals(checkpointSet.Store, _owner))
        {
            throw new ArgumentException($"set {checkpointSet.Id} belongs to another store", nameof(checkpointSet));
        }

        if (SetPaths.Check(folder) is { } why)
        {
            throw new ArgumentException($"'{folder}' {why}", nameof(folder));
        }

        var dir = Path.Combine(checkpointSet.ImagesDirectory, folder);
        if (!Directory.Exists(dir))
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

            using var handle = FileHasher.OpenNoFollow(full);
            var identity = PrepareForSeal(handle, full);
            // A write after the hash must move the identity. Time stamps come from a coarse clock
            // (a tick of up to 10 ms), so a write in the same tick as the last one could keep them:
            // hash only once the last change is older than that ("racy git"'s rule).
            var age = DateTimeOffset.UtcNow - DateTimeOffset.FromUnixTimeSeconds(identity.CTime).AddTicks(identity.CTimeNsec / 100);
            if (age < RacyMargin)
            {
                Thread.Sleep(RacyMargin - age);
            }

            var (hash, length) = FileHasher.Hash(handle, cancellationToken);
            // Written to while it was read (its identity moved): leave it to the seal.
            if (length == identity.Size && Identity(handle, full) == identity)
            {
                into[relative] = new PrehashedFile(identity, hash);
                files++;
                bytes += length;
            }
        }

        return (files, bytes);
    }

    /// <summary>Makes a file 0600 (only when it is not: a chmod moves its ctime) and durable; returns its identity after that.</summary>
    private static FileIdentity PrepareForSeal(SafeFileHandle handle, string path)
    {
        if (Syscall.fstat(Fd(handle), out var st) != 0)
        {
            throw new ImageStoreException($"fstat {path} failed: {Stdlib.strerror(Stdlib.GetLastError())}");
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
                    Chmod(full, DirMode0700);
                    Libc.FsyncDirectory(full);
                    break;
                case FilePermissions.S_IFREG:
                    using (var handle = FileHasher.OpenNoFollow(full))
                    {
                        var identity = PrepareForSeal(handle, full);
                        var (hash, length) = prehashed.TryGetValue(relative, out var known) && known.Identity == identity
                            ? (known.Xxh128, identity.Size)
                            : FileHasher.Hash(handle, cancellationToken);
                        entries.Add(new ManifestEntry { Path = relative, Size = length, Xxh128 = hash });
                    }

                    break;
                case FilePermissions.S_IFLNK:
                    var target = ReadLink(full);
                    if (SetPaths.CheckSymlinkTarget(relative, target) is { } why)
                    {
                        throw new UnsafeSetPathException(relative, why);
                    }

                    entries.Add(new ManifestEntry { Path = relative, Size = 0, SymlinkTarget = target });
                    break;
                default:
                    throw new UnsafeSetPathException(relative, $"is a {Describe(type)}, not a plain file");
            }
        }

        Libc.FsyncDirectory(images);
        entries.Sort((a, b) => string.CompareOrdinal(a.Path, b.Path));
        return entries;
    }

    /// <summary>Temp file, fsync, rename, fsync the folder: the manifest appears whole or not at all.</summary>
    private static void WriteAtomically(string directory, string path, byte[] content)
    {
        var temp = path + ".tmp";
        File.Delete(temp);
        using (var handle = Libc.Open(temp, Libc.OWrOnly | Libc.OCreat | Libc.OExcl, Libc.Mode0600))
        {
            RandomAccess.Write(handle, content, 0);
            Libc.FsyncOrThrow(handle, temp);
        }

        File.Move(temp, path, overwrite: false);
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

        if (!File.Exists(manifestPath))
        {
            issues.Add(new(VerificationIssueKind.NotSealed, ManifestFormat.FileName,
                "the set has no manifest: it was never sealed or sealing did not finish, so nothing vouches for its images"));
            return Done(null, 0);
        }

        CheckpointManifest manifest;
        try
        {
            manifest = ManifestFormat.Read(File.ReadAllBytes(manifestPath), manifestPath);
        }
        catch (ManifestCorruptException e)
        {
            issues.Add(new(VerificationIssueKind.ManifestCorrupt, ManifestFormat.FileName, e.Reason));
            return Done(null, 0);
        }
        catch (UnsafeSetPathException e)
        {
            issues.Add(new(VerificationIssueKind.PathEscape, e.SetPath, e.Message));
            return Done(null, 0);
        }

        if (manifest.SetId != setId)
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
        if (options.ReportUnlisted && Directory.Exists(images))
        {
            foreach (var item in Walk(images, images))
            {
                if (item.Type != FilePermissions.S_IFDIR && !listed.Contains(item.Relative))
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
                FilePermissions.S_IFLNK when SetPaths.CheckSymlinkTarget(relative, ReadLink(full)) is { } why => $"not in the manifest, and {why}",
                _ => $"not in the manifest (a {Describe(type)})",
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
            if (type != FilePermissions.S_IFLNK)
            {
                return (new(VerificationIssueKind.TypeChanged, entry.Path, $"recorded as a symbolic link, found a {Describe(type)}"), false, 0);
            }

            var target = ReadLink(full);
            return target == recordedTarget
                ? (null, false, 0)
                : (SetPaths.CheckSymlinkTarget(entry.Path, target) is { } why
                    ? new(VerificationIssueKind.PathEscape, entry.Path, why)
                    : new(VerificationIssueKind.TypeChanged, entry.Path, $"the link points to '{target}', recorded '{recordedTarget}'"), false, 0);
        }

        if (type != FilePermissions.S_IFREG)
        {
            return (type == FilePermissions.S_IFLNK && SetPaths.CheckSymlinkTarget(entry.Path, ReadLink(full)) is { } escape
                ? new(VerificationIssueKind.PathEscape, entry.Path, $"was a file, now {escape}")
                : new(VerificationIssueKind.TypeChanged, entry.Path, $"recorded as a file, found a {Describe(type)}"), false, 0);
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
            var (hash, length) = FileHasher.Hash(full, cancellationToken);
            return length != entry.Size
                ? (new(VerificationIssueKind.Truncated, entry.Path, $"read {length} bytes, recorded {entry.Size} (changed while verifying)"), false, length)
                : hash != entry.Xxh128
                    ? (new(VerificationIssueKind.ContentChanged, entry.Path, $"content hash {hash}, recorded {entry.Xxh128} (same size {entry.Size}): the bytes were altered"), false, length)
                    : (null, false, length);
        }
        catch (IOException e)
        {
            return (new(VerificationIssueKind.Unreadable, entry.Path, e.Message), false, 0);
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
        foreach (var dir in Directory.EnumerateDirectories(SetsDirectory))
        {
            var id = Path.GetFileName(dir);
            if (!SetIdPattern().IsMatch(id))
            {
                continue;
            }

            var manifestPath = Path.Combine(dir, ManifestFormat.FileName);
            var created = DateTimeOffset.ParseExact(id[..16], "yyyyMMdd'T'HHmmss'Z'", CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal);
            if (!File.Exists(manifestPath))
            {
                list.Add(new(id, false, created, null));
                continue;
            }

            try
            {
                var m = ManifestFormat.Read(File.ReadAllBytes(manifestPath), manifestPath);
                list.Add(new(id, true, m.CreatedAt, m.TotalBytes));
            }
            catch (ImageStoreException)
            {
                list.Add(new(id, true, created, null));
            }
        }

        return [.. list.OrderBy(s => s.CreatedAt).ThenBy(s => s.SetId, StringComparer.Ordinal)];
    }

    internal void DeleteSet(string setId)
    {
        var dir = SetDirectory(setId);
        Directory.Delete(dir, recursive: true); // does not follow links inside the set
        Log.SetDeleted(_logger, setId);
    }

    internal IReadOnlyList<string> ApplyRetention(int keepSealed)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(keepSealed);
        var sets = ListSets();
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
        if (Syscall.statvfs(Root, out var vfs) != 0)
        {
            throw new ImageStoreException($"statvfs {Root} failed: {Stdlib.strerror(Stdlib.GetLastError())}");
        }

        return new StoreCapacity((long)(vfs.f_blocks * vfs.f_frsize), (long)(vfs.f_bavail * vfs.f_frsize));
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
                $"the image store at {Root} has {Bytes(free)} free but checkpointing {processes} processes (trees of {string.Join(", ", rootPids)}) "
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
        return Directory.Exists(dir) ? dir : throw new CheckpointSetNotFoundException(setId, Root);
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

    private static string ReadLink(string path) =>
        new FileInfo(path).LinkTarget ?? throw new IOException($"{path} is not a symbolic link");

    private static long FileSize(string path) => Syscall.lstat(path, out var st) == 0 ? st.st_size : -1;

    private static string? SafeHash(string path, CancellationToken cancellationToken)
    {
        try
        {
            return FileHasher.Hash(path, cancellationToken).Hash;
        }
        catch (IOException)
        {
            return null;
        }
    }

    private static string Describe(FilePermissions type) => type switch
    {
        FilePermissions.S_IFDIR => "folder",
        FilePermissions.S_IFLNK => "symbolic link",
        FilePermissions.S_IFREG => "file",
        FilePermissions.S_IFIFO => "named pipe",
        FilePermissions.S_IFSOCK => "socket",
        FilePermissions.S_IFCHR => "character device",
        FilePermissions.S_IFBLK => "block device",
        _ => "special file",
    };

    /// <summary>mkdir with 0700 from the start (no window in which the folder is world-readable); an existing one is fine.</summary>
    private static void MakeDirectory(string path)
    {
        if (Syscall.mkdir(path, DirMode0700) != 0 && Stdlib.GetLastError() != Errno.EEXIST)
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
internal sealed record PrehashedFile(FileIdentity Identity, string Xxh128);
