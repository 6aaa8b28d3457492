using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;
using RebootlessUpdate.Images;
using RebootlessUpdate.Images.Interop;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.Pipeline;

/// <summary>
/// The journal of one checkpoint set, kept in the store next to the sets
/// (<c>STORE/journal/SETID.json</c>) and rewritten atomically (temporary file,
/// fsync, rename, fsync of the folder) at every step, so that a crash at any
/// point leaves either the previous or the next state, and the set survives the
/// jump together with its journal.
/// </summary>
/// <remarks>
/// <para>
/// A journal is written only by the run that holds the store's lock: a journal is bound to the
/// lock it was opened (or created) under and every write checks that it is still held, so a run
/// refused by the lock can change nothing. <see cref="Open(string, string, TimeProvider?)"/> without
/// a lock gives a read-only journal.
/// </para>
/// <para>
/// Nothing is trusted because it is in the store: a journal file is read only when it is a regular
/// file of ours that others cannot write, of at most <see cref="MaxBytes"/>, opened without following
/// a link or blocking on a FIFO; its set id must be its file name and its targets' folders single names.
/// </para>
/// <para>
/// The journal can always record what happened, even on a full store: <see cref="Create"/> keeps
/// space aside (<c>SETID.reserve</c>, allocated with posix_fallocate); a write that hits ENOSPC
/// releases a record's worth of it and is retried, so a rollback after CRIU filled the store still records that the
/// workloads run again (otherwise the next `resume` would restore a second copy), and so do the records after
/// it when another writer (CRIU's restore log) takes every byte freed between two records.
/// </para>
/// </remarks>
public sealed class UpdateJournal
{
    internal const string FormatName = "rebootless-journal";
    internal const string FolderName = "journal";

    /// <summary>The largest journal file read (a journal of a few hundred targets is well under 1 MiB).</summary>
    internal const long MaxBytes = 16L << 20;

    /// <summary>
    /// The least space kept aside per journal; it is also at least 16 times the first record (the record
    /// grows with its history and the targets' errors, a few kB a run). Small, so a small store still fits a run.
    /// </summary>
    internal const long MinReserveBytes = 128L << 10;

    private const string Extension = ".json";
    private const string ReserveExtension = ".reserve";
    private const string SpareSuffix = ".spare";
    private const string PreviousSuffix = ".prev";
    private readonly Lock _lock = new();
    private readonly TimeProvider _time;
    private readonly ImageStoreLock? _storeLock;

    private UpdateJournal(string path, JournalRecord record, ImageStoreLock? storeLock, TimeProvider time)
    {
        FilePath = path;
        Record = record;
        _storeLock = storeLock;
        _time = time;
    }

    /// <summary>The journal file.</summary>
    public string FilePath { get; }

    /// <summary>The current content.</summary>
    public JournalRecord Record { get; private set; }

    /// <summary>The current state.</summary>
    public JournalState State => Record.State;

    /// <summary>True while this journal may be written (it was opened under the store's lock, still held).</summary>
    public bool IsWritable => _storeLock is { IsHeld: true };

    /// <summary>The space kept aside for this journal (<c>SETID.reserve</c>).</summary>
    internal string ReservePath => Path.Combine(Path.GetDirectoryName(FilePath)!, Record.SetId + ReserveExtension);

    /// <summary>The journal folder of a store.</summary>
    public static string DirectoryOf(string storeRoot) => Path.Combine(storeRoot, FolderName);

    /// <summary>The folder for CRIU logs and statistics of a set (outside the sealed images).</summary>
    /// <exception cref="ArgumentException"><paramref name="setId"/> is not a set id.</exception>
    public static string LogDirectoryOf(string storeRoot, string setId) => Path.Combine(DirectoryOf(storeRoot), RequireSetId(setId) + ".logs");

    /// <summary>True when <paramref name="id"/> is a checkpoint set id (e.g. <c>20261126T063200Z-1a2b3c4d</c>); only those are ever made into paths.</summary>
    public static bool IsSetId(string? id) => id is not null && SetStoreEngine.SetIdPattern().IsMatch(id);

    /// <summary>Reads the journal of <paramref name="setId"/> for reading only (writes throw), or null when it has none.</summary>
    /// <exception cref="InvalidDataException">The file is not a journal, or cannot be trusted.</exception>
    /// <exception cref="JournalException">The journal folder cannot be trusted.</exception>
    /// <exception cref="ArgumentException"><paramref name="setId"/> is not a set id.</exception>
    public static UpdateJournal? Open(string storeRoot, string setId, TimeProvider? time = null) => OpenCore(storeRoot, setId, null, time);

    /// <summary>
    /// Reads the journal of <paramref name="setId"/> to carry it on under <paramref name="storeLock"/>
    /// (the store's lock, held), or null when it has none.
    /// </summary>
    /// <exception cref="InvalidDataException">The file is not a journal, or cannot be trusted.</exception>
    /// <exception cref="JournalException">The journal folder cannot be trusted.</exception>
    /// <exception cref="ArgumentException"><paramref name="setId"/> is not a set id, or the lock is not this store's or not held.</exception>
    public static UpdateJournal? Open(string storeRoot, string setId, ImageStoreLock storeLock, TimeProvider? time = null)
    {
        RequireLockOf(storeRoot, storeLock);
        return OpenCore(storeRoot, setId, storeLock, time);
    }

    private static UpdateJournal? OpenCore(string storeRoot, string setId, ImageStoreLock? storeLock, TimeProvider? time)
    {
        RequireSetId(setId);
        if (CheckedDirectory(storeRoot) is not { } dir)
        {
            return null;
        }

        var path = Path.Combine(dir, setId + Extension);
        if (Syscall.lstat(path, out _) != 0)
        {
            return Stdlib.GetLastError() == Errno.ENOENT
                ? null
                : throw new InvalidDataException($"{path} cannot be examined: {Stdlib.strerror(Stdlib.GetLastError())}");
        }

        return new UpdateJournal(path, Read(path, setId), storeLock, time ?? TimeProvider.System);
    }

    /// <summary>
    /// Every journal file in the store, oldest set first, each with its record or why it cannot be
    /// read (a truncated journal, a FIFO or link in place of one): `status` shows them all.
    /// </summary>
    /// <exception cref="JournalException">The journal folder cannot be trusted.</exception>
    public static IReadOnlyList<JournalListing> Scan(string storeRoot)
    {
        if (CheckedDirectory(storeRoot) is not { } dir)
        {
            return [];
        }

        var list = new List<JournalListing>();
        foreach (var file in Directory.EnumerateFileSystemEntries(dir, "*" + Extension).Order(StringComparer.Ordinal))
        {
            if (Syscall.lstat(file, out var st) == 0 && (st.st_mode & FilePermissions.S_IFMT) == FilePermissions.S_IFDIR)
            {
                continue;
            }

            var id = Path.GetFileName(file)[..^Extension.Length];
            try
            {
                list.Add(new JournalListing(id, file, Read(file, id), null));
            }
            catch (InvalidDataException e)
            {
                list.Add(new JournalListing(id, file, null, e.Message));
            }
        }

        return list;
    }

    /// <summary>Every readable journal in the store, oldest set first (<see cref="Scan"/> also lists those that cannot be read).</summary>
    public static IReadOnlyList<JournalRecord> List(string storeRoot) => [.. Scan(storeRoot).Select(j => j.Record).OfType<JournalRecord>()];

    internal static UpdateJournal Create(string storeRoot, string setId, UpdateMode mode, IReadOnlyList<JournalTarget> targets, ImageStoreLock storeLock, TimeProvider time)
    {
        RequireLockOf(storeRoot, storeLock);
        RequireSetId(setId);
        var dir = CheckedDirectory(storeRoot);
        if (dir is null)
        {
            dir = DirectoryOf(storeRoot);
            if (Syscall.mkdir(dir, FilePermissions.S_IRWXU) != 0 && Stdlib.GetLastError() != Errno.EEXIST)
            {
                throw new IOException($"mkdir {dir} failed: {Stdlib.strerror(Stdlib.GetLastError())}");
            }

            dir = CheckedDirectory(storeRoot)!;
        }

        var record = new JournalRecord
        {
            SetId = setId,
            Mode = mode,
            State = JournalState.Planned,
            BootId = SystemInfo.BootId(),
            KernelRelease = SystemInfo.KernelRelease(),
            Targets = targets,
            History = [new JournalEntry(JournalState.Planned, time.GetUtcNow(), null)],
        };
        if (Validate(record, setId) is { } problem)
        {
            throw new ArgumentException($"the journal of set {setId} would be refused when read back: {problem}", nameof(targets));
        }

        var journal = new UpdateJournal(Path.Combine(dir, setId + Extension), record, storeLock, time);
        journal.KeepSpaceAside(Math.Max(MinReserveBytes, 16L * Serialize(record).Length));
        journal.Write(record);
        try
        {
            StoreFiles.WriteNew(journal.SparePath, []); // the inode every later record is written into
        }
        catch (IOException)
        {
            // No inode to spare now: the second record makes one of the first.
        }

        return journal;
    }

    /// <summary>Raised after every transition is durable (tests use it to crash at each step).</summary>
    internal static Action<JournalState>? TransitionWritten { get; set; }

    /// <summary>
    /// Raised after every durable write (a transition, or targets' phases), with what is now on
    /// disk. The tool's crash injection (<c>REBOOTLESS_CRASH_AT</c>) kills itself here.
    /// </summary>
    internal static Action<JournalRecord>? Written { get; set; }

    /// <summary>
    /// The journals that must be resumed, retried or given up before another run may use the store:
    /// an update in any state short of its end (<see cref="JournalState.Failed"/> included: its
    /// workloads may be down), a rehearsal interrupted or failed in this very boot (one from an earlier
    /// boot has nothing left to put back), and every journal of a set that cannot be read (it may be
    /// the only record of workloads that are down).
    /// </summary>
    internal static IReadOnlyList<JournalListing> Unfinished(string storeRoot)
    {
        var boot = SystemInfo.BootId();
        return [.. Scan(storeRoot).Where(j => IsUnfinished(j, boot))];
    }

    /// <summary>True when <paramref name="journal"/> still needs a resume, a retry or an operator (see <see cref="Unfinished"/>).</summary>
    internal static bool IsUnfinished(JournalListing journal, string bootId) => journal.Record is not { } r
        ? IsSetId(journal.SetId) // not a file we would name: it belongs to no run
        : r.State is not (JournalState.Resumed or JournalState.RolledBack or JournalState.Abandoned)
            && (r.Mode != UpdateMode.Rehearse || r.BootId == bootId);

    internal void Transition(JournalState state, string? detail = null, Func<JournalRecord, JournalRecord>? change = null)
    {
        lock (_lock)
        {
            var next = change is null ? Record : change(Record);
            next = next with { State = state, History = [.. Record.History, new JournalEntry(state, _time.GetUtcNow(), detail)] };
            Write(next);
        }

        TransitionWritten?.Invoke(state);
    }

    /// <summary>Records <paramref name="state"/> and, in the same write, the targets of <paramref name="context"/> (phases, pids).</summary>
    internal void Transition(JournalState state, string? detail, UpdateContext context) =>
        Transition(state, detail, r => r with { Targets = [.. r.Targets.Select(t => Merge(t, context))] });

    /// <summary>Rewrites the targets (phases, pids) without changing the state.</summary>
    internal void UpdateTargets(UpdateContext context)
    {
        lock (_lock)
        {
            Write(Record with { Targets = [.. Record.Targets.Select(t => Merge(t, context))] });
        }
    }

    internal void Fail(JournalState state, string? stage, string error, UpdateContext context)
    {
        lock (_lock)
        {
            if (Record.State is JournalState.Resumed or JournalState.RolledBack or JournalState.Abandoned)
            {
                return; // finished before the failure (e.g. in Cleanup): what it recorded of the workloads stays true
            }

            var next = Record with
            {
                State = state,
                FailedStage = stage,
                Error = error,
                Targets = [.. Record.Targets.Select(t => Merge(t, context))],
                History = [.. Record.History, new JournalEntry(state, _time.GetUtcNow(), stage is null ? error : $"{stage}: {error}")],
            };
            Write(next);
        }

        TransitionWritten?.Invoke(state);
    }

    /// <summary>
    /// Gives the run up (<c>images rm --force</c>): records <see cref="JournalState.Abandoned"/> with
    /// <paramref name="why"/> and the targets that were not running, which it returns.
    /// </summary>
    internal IReadOnlyList<JournalTarget> Abandon(string why)
    {
        var lost = Record.Targets.Where(t => t.Phase is not (TargetPhase.Resumed or TargetPhase.Restored)).ToList();
        Transition(JournalState.Abandoned, lost.Count == 0
            ? why
            : $"{why}; lost: {string.Join(", ", lost.Select(t => $"{t.Id} ({t.Phase})"))}");
        return lost;
    }

    /// <summary>
    /// Sets a journal that cannot be read aside (<c>SETID.json.unreadable</c>, kept for inspection)
    /// so it no longer blocks the store; returns the new name.
    /// </summary>
    internal static string SetAside(string storeRoot, string setId, ImageStoreLock storeLock)
    {
        RequireLockOf(storeRoot, storeLock);
        RequireSetId(setId);
        var dir = CheckedDirectory(storeRoot) ?? throw new FileNotFoundException($"{DirectoryOf(storeRoot)} does not exist");
        var path = Path.Combine(dir, setId + Extension);
        var aside = path + ".unreadable";
        for (var n = 1; Syscall.lstat(aside, out _) == 0; n++)
        {
            aside = $"{path}.unreadable.{n}";
        }

        // rename(2) moves the entry itself, whatever it is (a link or a FIFO is not followed).
        File.Move(path, aside);
        foreach (var companion in CompanionsOf(dir, setId))
        {
            File.Delete(companion);
        }

        Libc.FsyncDirectory(dir);
        return aside;
    }

    private static JournalTarget Merge(JournalTarget t, UpdateContext context)
    {
        var run = context.Targets.FirstOrDefault(r => r.Target.Id == t.Id);
        return run is null ? t : t with
        {
            Phase = run.Phase,
            RestoredPid = run.RestoredPid,
            RestoredStartTime = run.RestoredStartTime,
            DumpStartedAt = run.DumpStartedAt ?? t.DumpStartedAt,
            RestoredAt = run.RestoredAt ?? t.RestoredAt,
            RestoreRequestedAt = run.RestoreRequestedAt ?? t.RestoreRequestedAt,
            DumpTime = run.DumpTime ?? t.DumpTime,
            ImageBytes = run.Bytes ?? t.ImageBytes,
            RestoreTime = run.RestoreTime ?? t.RestoreTime,
            // Only a restored target's daemon serves anything (one of a restore in flight or refused is stopped).
            // (and of one being restored: if the run dies after CRIU let the tree run, the next one adopts tree and daemon).
            LazyPagesDaemonPid = run.Phase is TargetPhase.Restored or TargetPhase.Restoring ? run.LazyPagesDaemonPid ?? t.LazyPagesDaemonPid : null,
            Error = run.Error,
            PreDumpRefused = run.PreDumpRefused ?? t.PreDumpRefused,
            RootPid = run.Original?.Pid ?? t.RootPid,
            RootStartTime = run.Original?.StartTime ?? t.RootStartTime,
        };
    }

    private static byte[] Serialize(JournalRecord record) => JsonSerializer.SerializeToUtf8Bytes(record, PipelineJson.Default.JournalRecord);

    private void Write(JournalRecord record)
    {
        if (_storeLock is not { IsHeld: true })
        {
            throw new InvalidOperationException($"the journal {FilePath} is only written by the run that holds the store's lock, and this one "
                + (_storeLock is null ? "was opened for reading only" : "no longer holds it") + "; nothing was written");
        }

        var bytes = Serialize(record);
        if (bytes.Length > MaxBytes)
        {
            throw new InvalidOperationException($"the journal of set {record.SetId} would be {bytes.Length} bytes, more than the {MaxBytes} a journal may have; nothing was written");
        }

        // The store filled up (CRIU's images, its logs, another writer): the space kept aside pays for this record,
        // a record's worth at a time, so that what is left still pays for the records after it (CRIU's log takes
        // whatever is free between two records).
        while (true)
        {
            try
            {
                Replace(bytes);
                break;
            }
            catch (IOException e) when (e.HResult == Libc.ENoSpc && ReleaseReserve(ReleaseStep(bytes.Length)))
            {
            }
        }

        Record = record;
        if (record.State is JournalState.Resumed or JournalState.RolledBack or JournalState.Abandoned)
        {
            // Finished: nothing more to record that matters as much. The record is durable: what cannot be released
            // (a folder planted in place of the reserve) stays, and the run's outcome is what the record says.
            try
            {
                ReleaseReserve();
                File.Delete(SparePath);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
            }
        }

        Written?.Invoke(record);
    }

    /// <summary>
    /// Replaces the journal with <paramref name="bytes"/>, whole or not at all, and durably (the folder is fsynced: kexec
    /// does not flush the page cache). No new inode is needed once the journal has a spare (<c>SETID.json.spare</c>,
    /// ours, one name): the record is written into it, the old journal gets a second name, the spare is renamed over
    /// the journal and the old journal becomes the next spare, so a store whose inodes ran out still takes the record.
    /// Without a spare the record goes through a new temporary file, and the old journal becomes the spare.
    /// </summary>
    private void Replace(byte[] bytes)
    {
        var dir = Path.GetDirectoryName(FilePath)!;
        string source;
        SafeFileHandle? spare = null;
        try
        {
            spare = StoreFiles.OpenOwnSingle(SparePath, Libc.OWrOnly);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            if (Syscall.lstat(SparePath, out _) == 0)
            {
                File.Delete(SparePath); // not a spare of ours (a link, a FIFO, another's file): removed, never written through
            }
        }

        if (spare is not null)
        {
            using (spare)
            {
                RandomAccess.Write(spare, bytes, 0);
                RandomAccess.SetLength(spare, bytes.Length);
                Libc.FsyncOrThrow(spare, SparePath);
            }

            source = SparePath;
        }
        else
        {
            source = FilePath + ".tmp";
            File.Delete(source); // a leftover of a crash (a link or FIFO there is removed, never followed)
            try
            {
                StoreFiles.WriteNew(source, bytes);
            }
            catch
            {
                File.Delete(source); // a partial record must not take the space the retry needs
                throw;
            }
        }

        var previous = FilePath + PreviousSuffix;
        File.Delete(previous);
        var kept = Syscall.lstat(FilePath, out var old) == 0 && (old.st_mode & FilePermissions.S_IFMT) == FilePermissions.S_IFREG
            && Syscall.link(FilePath, previous) == 0;
        File.Move(source, FilePath, overwrite: true);
        if (kept)
        {
            try
            {
                File.Move(previous, SparePath, overwrite: false);
            }
            catch (IOException)
            {
                // The record is in place: without a spare the next one goes through a new file (and the .prev name
                // is removed before that one is kept).
            }
        }

        Libc.FsyncDirectory(dir);
    }

    /// <summary>The journal's spare inode (see <see cref="Replace"/>).</summary>
    internal string SparePath => FilePath + SpareSuffix;

    /// <summary>
    /// The files a journal keeps beside it in <paramref name="journalDirectory"/> (the space kept aside, the spare
    /// inode, a previous record a crash left named): they go with it.
    /// </summary>
    internal static IEnumerable<string> CompanionsOf(string journalDirectory, string setId)
    {
        var journal = Path.Combine(journalDirectory, setId + Extension);
        return [Path.Combine(journalDirectory, setId + ReserveExtension), journal + SpareSuffix, journal + PreviousSuffix];
    }

    private void KeepSpaceAside(long bytes)
    {
        var path = ReservePath;
        File.Delete(path);
        using var handle = Libc.Open(path, Libc.OWrOnly | Libc.OCreat | Libc.OExcl | Libc.ONoFollow, Libc.Mode0600);
        var errno = Libc.PosixFallocate(handle, 0, bytes);
        if (errno == 0)
        {
            Libc.FsyncOrThrow(handle, path);
            return;
        }

        handle.Dispose();
        File.Delete(path);
        if (errno == Libc.ENoSpc)
        {
            throw new StoreFullException($"the store has no room for the {bytes} bytes kept aside for the journal of set {Record.SetId} ({path}); "
                + "free space in the store and try again; nothing was frozen", 0, bytes);
        }

        // A file system that cannot allocate ahead at all (glibc already falls back to writing blocks when
        // fallocate is unsupported): the run goes on as runs did before there was a reserve.
    }

    /// <summary>What one ENOSPC frees of the space kept aside: room for the record's new copy and its folder entry.</summary>
    internal static long ReleaseStep(long recordBytes) => ((recordBytes + 4095) / 4096 * 4096) + 8192;

    /// <summary>
    /// Frees <paramref name="bytes"/> of the space kept aside by cutting the reserve file short (all that is left when
    /// less; null: all of it); false when there was none left to free. Only a reserve of ours with no other name is cut;
    /// anything else at its path (a link, a FIFO, a hard link to another file) is removed, never written through.
    /// </summary>
    private bool ReleaseReserve(long? bytes = null)
    {
        var path = ReservePath;
        if (Syscall.lstat(path, out var st) != 0 || (st.st_mode & FilePermissions.S_IFMT) == FilePermissions.S_IFDIR)
        {
            return false; // none, or a folder planted there: nothing of ours to free
        }

        if (bytes is { } b)
        {
            try
            {
                using var handle = StoreFiles.OpenOwnSingle(path, Libc.OWrOnly);
                var left = RandomAccess.GetLength(handle) - b;
                if (left > 0)
                {
                    RandomAccess.SetLength(handle, left);
                    return true;
                }
            }
            catch (IOException)
            {
                // Not a reserve of ours: removed below.
            }
        }

        File.Delete(path);
        return true;
    }

    private static string RequireSetId(string setId, [System.Runtime.CompilerServices.CallerArgumentExpression(nameof(setId))] string? name = null) =>
        IsSetId(setId) ? setId : throw new ArgumentException($"'{setId}' is not a checkpoint set id (expected e.g. 20261126T063200Z-1a2b3c4d)", name);

    private static void RequireLockOf(string storeRoot, ImageStoreLock storeLock)
    {
        ArgumentNullException.ThrowIfNull(storeLock);
        var expected = Path.GetFullPath(Path.Combine(storeRoot, CheckpointSetLayout.LockFile));
        if (!string.Equals(Path.GetFullPath(storeLock.LockFile), expected, StringComparison.Ordinal))
        {
            throw new ArgumentException($"the lock {storeLock.LockFile} is not the lock of the store {storeRoot} ({expected})", nameof(storeLock));
        }

        if (!storeLock.IsHeld)
        {
            throw new ArgumentException($"the store lock {storeLock.LockFile} was already released", nameof(storeLock));
        }
    }

    /// <summary>The journal folder, or null when there is none yet; refuses one that cannot be trusted.</summary>
    private static string? CheckedDirectory(string storeRoot)
    {
        var dir = DirectoryOf(storeRoot);
        if (Syscall.lstat(dir, out var st) != 0)
        {
            var errno = Stdlib.GetLastError();
            return errno == Errno.ENOENT
                ? null
                : throw new JournalException(JournalProblem.UnsafeFolder, null, $"the journal folder {dir} cannot be examined: {Stdlib.strerror(errno)}");
        }

        var type = st.st_mode & FilePermissions.S_IFMT;
        var problem = type == FilePermissions.S_IFLNK ? "is a symbolic link"
            : type != FilePermissions.S_IFDIR ? "is not a folder"
            : st.st_uid != Syscall.geteuid() ? $"belongs to uid {st.st_uid}, not to this process (uid {Syscall.geteuid()})"
            : (st.st_mode & (FilePermissions.S_IWGRP | FilePermissions.S_IWOTH)) != 0 ? "is writable by group or others"
            : null;
        return problem is null
            ? dir
            : throw new JournalException(JournalProblem.UnsafeFolder, null, $"the journal folder {dir} {problem}; nothing was read from it. "
                + "Journals are kept only in a folder of the store that belongs to the user running the update: move it away and check the store");
    }

    /// <summary>Reads and checks a journal file (see the remarks on the class).</summary>
    /// <exception cref="InvalidDataException">The file cannot be read or trusted; the message says why.</exception>
    internal static JournalRecord Read(string path, string expectedSetId)
    {
        var bytes = ReadPlainFile(path);
        JournalRecord record;
        try
        {
            record = JsonSerializer.Deserialize(bytes, PipelineJson.Default.JournalRecord)
                ?? throw new InvalidDataException($"{path} is not a journal (it holds null)");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path} is not a readable journal (truncated or damaged, {bytes.Length} bytes): {e.Message}", e);
        }

        if (record.Format != FormatName || record.Version != 1)
        {
            throw new InvalidDataException($"{path} is not a rebootless journal of version 1 (format '{record.Format}', version {record.Version})");
        }

        return Validate(record, expectedSetId) is { } problem ? throw new InvalidDataException($"{path} is refused: {problem}") : record;
    }

    /// <summary>Null when the record may be used as the journal of <paramref name="expectedSetId"/>, else why not.</summary>
    internal static string? Validate(JournalRecord record, string expectedSetId)
    {
        if (!IsSetId(record.SetId))
        {
            return $"its set id '{record.SetId}' is not a set id";
        }

        if (record.SetId != expectedSetId)
        {
            return $"it names set {record.SetId} but is the journal file of {expectedSetId}";
        }

        if (record.Targets is null || record.History is null || record.BootId is null)
        {
            return "it has no targets, history or boot id";
        }

        foreach (var t in record.Targets)
        {
            if (t?.Id is null || t.Folder is null || t.Settings is null)
            {
                return "a target has no id, folder or settings";
            }

            // A podman container's id becomes an argument of podman: its full id (hex) and nothing else.
            if (t.Settings.Podman is { } pod && !PodmanContainer.IsFullId(pod.Id))
            {
                return $"target {t.Id}'s podman container id '{pod.Id}' is not a full container id (64 hex digits)";
            }

            // Folders become paths: one plain name inside the set's images folder, nothing else.
            if ((SetPaths.Check(t.Folder) ?? (t.Folder.Contains('/', StringComparison.Ordinal) ? "has more than one component" : null)) is { } why)
            {
                return $"target {t.Id}'s folder '{t.Folder}' {why}; a target's folder is one name inside the set";
            }
        }

        return null;
    }

    /// <summary>
    /// The bytes of a journal file: a regular file (no link followed, a FIFO never blocks), ours, not
    /// writable by group or others, at most <see cref="MaxBytes"/>, read whole.
    /// </summary>
    /// <exception cref="InvalidDataException">The file cannot be read or trusted; the message says why.</exception>
    private static byte[] ReadPlainFile(string path)
    {
        try
        {
            return StoreFiles.ReadRegular(path, MaxBytes, ownOnly: true);
        }
        catch (NotARegularFileException e)
        {
            throw new InvalidDataException($"{e.Message}; a journal is read only from the plain file the tool wrote", e);
        }
        catch (UntrustedFileException e)
        {
            throw new InvalidDataException($"{e.Message}; a journal is read only from a file of the user running the update "
                + "that is not writable by group or others: move it away and check the store", e);
        }
        catch (IOException e)
        {
            throw new InvalidDataException(e.Message, e);
        }
    }
}

/// <summary>Facts about the running system.</summary>
internal static class SystemInfo
{
    internal static string BootId() => ReadTrimmed("/proc/sys/kernel/random/boot_id") ?? "unknown";

    internal static string KernelRelease() => ReadTrimmed("/proc/sys/kernel/osrelease") ?? Environment.OSVersion.Version.ToString();

    internal static string? ReadTrimmed(string path)
    {
        try
        {
            return File.ReadAllText(path).Trim();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }
}

/// <summary>Source-generated JSON for journals and reports (no reflection: the resume path must start fast).</summary>
[JsonSourceGenerationOptions(WriteIndented = true, PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase,
    UseStringEnumConverter = true, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull, Converters = [typeof(SecondsJsonConverter)])]
[JsonSerializable(typeof(JournalRecord))]
[JsonSerializable(typeof(UpdateResult))]
[JsonSerializable(typeof(IReadOnlyList<JournalRecord>))]
internal sealed partial class PipelineJson : JsonSerializerContext;

/// <summary>JSON metadata of the report for the tool.</summary>
internal static class PipelineJsonPublic
{
    internal static System.Text.Json.Serialization.Metadata.JsonTypeInfo<UpdateResult> UpdateResultInfo => PipelineJson.Default.UpdateResult;
}
