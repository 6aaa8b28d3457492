using System.Text.Json;
using System.Text.Json.Serialization;
using RebootlessUpdate.Images.Interop;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.Pipeline;

/// <summary>The steps a journal records.</summary>
public enum JournalState
{
    /// <summary>Targets resolved, set created; nothing frozen.</summary>
    Planned,

    /// <summary>The next kernel is loaded; nothing frozen yet.</summary>
    KernelLoaded,

    /// <summary>Freezing and dumping the targets.</summary>
    Dumping,

    /// <summary>The set is sealed: every target's images are complete and hashed.</summary>
    Sealed,

    /// <summary>The jump into the next kernel is under way.</summary>
    Jumping,

    /// <summary>Restoring the targets (after the jump, or at the end of a rehearsal).</summary>
    Resuming,

    /// <summary>Every target runs again (on the new kernel, or on this one after a rehearsal).</summary>
    Resumed,

    /// <summary>A failure before the jump was rolled back: every target runs on the kernel it ran on.</summary>
    RolledBack,

    /// <summary>A failure that could not be fully rolled back; the record says which targets need attention.</summary>
    Failed,
}

/// <summary>One step in a journal's history.</summary>
/// <param name="State">The state entered.</param>
/// <param name="At">When (the store's clock).</param>
/// <param name="Detail">Why or what, when useful.</param>
public sealed record JournalEntry(JournalState State, DateTimeOffset At, string? Detail);

/// <summary>A target as the journal keeps it: enough to restore it after the jump.</summary>
public sealed record JournalTarget
{
    /// <summary>The target's id (e.g. <c>pid:1234</c>).</summary>
    public required string Id { get; init; }

    /// <summary>Its images folder, relative to the set's images folder.</summary>
    public required string Folder { get; init; }

    /// <summary>The CRIU settings it was dumped with (restore uses the same).</summary>
    public required TargetCriuSettings Settings { get; init; }

    /// <summary>Root pid when dumped.</summary>
    public int RootPid { get; init; }

    /// <summary>Start time (clock ticks since boot) of the root when dumped: tells the original from a reused pid.</summary>
    public ulong RootStartTime { get; init; }

    /// <summary>Where the target is.</summary>
    public TargetPhase Phase { get; init; }

    /// <summary>Root pid after restore (recorded at CRIU's post-restore point, before the tree runs).</summary>
    public int? RestoredPid { get; init; }

    /// <summary>Start time (clock ticks since boot) of the restored root: tells the restored tree from a reused pid.</summary>
    public ulong? RestoredStartTime { get; init; }

    /// <summary>When its dump started (wall clock; survives the jump).</summary>
    public DateTimeOffset? DumpStartedAt { get; init; }

    /// <summary>When it was restored.</summary>
    public DateTimeOffset? RestoredAt { get; init; }

    /// <summary>From its freeze until CRIU held it with every image written.</summary>
    public TimeSpan? DumpTime { get; init; }

    /// <summary>Bytes of its images.</summary>
    public long? ImageBytes { get; init; }

    /// <summary>How long CRIU took to restore it.</summary>
    public TimeSpan? RestoreTime { get; init; }

    /// <summary>The pid of the lazy-pages daemon serving its memory, when it was restored lazily.</summary>
    public int? LazyPagesDaemonPid { get; init; }

    /// <summary>What went wrong, if anything.</summary>
    public string? Error { get; init; }
}

/// <summary>The content of a journal file (<c>STORE/journal/SETID.json</c>).</summary>
public sealed record JournalRecord
{
    /// <summary>Always <c>rebootless-journal</c>.</summary>
    public string Format { get; init; } = UpdateJournal.FormatName;

    /// <summary>Format version (1).</summary>
    public int Version { get; init; } = 1;

    /// <summary>The checkpoint set.</summary>
    public required string SetId { get; init; }

    /// <summary>What the run was for.</summary>
    public required UpdateMode Mode { get; init; }

    /// <summary>The latest state.</summary>
    public required JournalState State { get; init; }

    /// <summary>The boot id of the kernel that wrote the plan (<c>/proc/sys/kernel/random/boot_id</c>): tells "after the jump" from "crashed before it".</summary>
    public required string BootId { get; init; }

    /// <summary>The kernel release that wrote the plan.</summary>
    public required string KernelRelease { get; init; }

    /// <summary>The kernel to jump into, once loaded.</summary>
    public string? NextKernel { get; init; }

    /// <summary>The next kernel's command line, once loaded.</summary>
    public string? NextCommandLine { get; init; }

    /// <summary>The targets.</summary>
    public required IReadOnlyList<JournalTarget> Targets { get; init; }

    /// <summary>Every state entered, oldest first.</summary>
    public required IReadOnlyList<JournalEntry> History { get; init; }

    /// <summary>The stage that failed, if one did.</summary>
    public string? FailedStage { get; init; }

    /// <summary>The failure, if one happened.</summary>
    public string? Error { get; init; }
}

/// <summary>
/// The journal of one checkpoint set, kept in the store next to the sets
/// (<c>STORE/journal/SETID.json</c>) and rewritten atomically (temporary file,
/// fsync, rename, fsync of the folder) at every step, so that a crash at any
/// point leaves either the previous or the next state, and the set survives the
/// jump together with its journal.
/// </summary>
public sealed class UpdateJournal
{
    internal const string FormatName = "rebootless-journal";
    internal const string FolderName = "journal";
    private readonly Lock _lock = new();
    private readonly TimeProvider _time;

    private UpdateJournal(string path, JournalRecord record, TimeProvider time)
    {
        FilePath = path;
        Record = record;
        _time = time;
    }

    /// <summary>The journal file.</summary>
    public string FilePath { get; }

    /// <summary>The current content.</summary>
    public JournalRecord Record { get; private set; }

    /// <summary>The current state.</summary>
    public JournalState State => Record.State;

    /// <summary>The journal folder of a store.</summary>
    public static string DirectoryOf(string storeRoot) => Path.Combine(storeRoot, FolderName);

    /// <summary>The folder for CRIU logs and statistics of a set (outside the sealed images).</summary>
    public static string LogDirectoryOf(string storeRoot, string setId) => Path.Combine(DirectoryOf(storeRoot), setId + ".logs");

    /// <summary>Reads the journal of <paramref name="setId"/>, or null when it has none.</summary>
    /// <exception cref="InvalidDataException">The file is not a journal.</exception>
    public static UpdateJournal? Open(string storeRoot, string setId, TimeProvider? time = null)
    {
        var path = Path.Combine(DirectoryOf(storeRoot), setId + ".json");
        return File.Exists(path) ? new UpdateJournal(path, Read(path), time ?? TimeProvider.System) : null;
    }

    /// <summary>Every journal in the store, oldest set first.</summary>
    public static IReadOnlyList<JournalRecord> List(string storeRoot)
    {
        var dir = DirectoryOf(storeRoot);
        if (!Directory.Exists(dir))
        {
            return [];
        }

        var list = new List<JournalRecord>();
        foreach (var file in Directory.EnumerateFiles(dir, "*.json").Order(StringComparer.Ordinal))
        {
            try
            {
                list.Add(Read(file));
            }
            catch (InvalidDataException)
            {
                // A damaged journal is reported by `status`, not fatal to listing.
            }
        }

        return list;
    }

    internal static UpdateJournal Create(string storeRoot, string setId, UpdateMode mode, IReadOnlyList<JournalTarget> targets, TimeProvider time)
    {
        var dir = DirectoryOf(storeRoot);
        if (!Directory.Exists(dir))
        {
            Directory.CreateDirectory(dir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
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
        var journal = new UpdateJournal(Path.Combine(dir, setId + ".json"), record, time);
        journal.Write(record);
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
    /// The unfinished journals that must be resumed or rolled back (<c>rebootless resume</c>)
    /// before another run may use the store: an update in any state short of its end, or a
    /// rehearsal interrupted in this very boot (one from an earlier boot has nothing left to put back).
    /// </summary>
    internal static IReadOnlyList<JournalRecord> Unfinished(string storeRoot)
    {
        var boot = SystemInfo.BootId();
        return [.. List(storeRoot).Where(r => r.State is not (JournalState.Resumed or JournalState.RolledBack or JournalState.Failed)
            && (r.Mode != UpdateMode.Rehearse || r.BootId == boot))];
    }

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
            DumpTime = run.DumpTime ?? t.DumpTime,
            ImageBytes = run.Bytes ?? t.ImageBytes,
            RestoreTime = run.RestoreTime ?? t.RestoreTime,
            // Only a restored target's daemon serves anything (one of a restore in flight or refused is stopped).
            LazyPagesDaemonPid = run.Phase == TargetPhase.Restored ? run.LazyPagesDaemonPid ?? t.LazyPagesDaemonPid : null,
            Error = run.Error,
            RootPid = run.Original?.Pid ?? t.RootPid,
            RootStartTime = run.Original?.StartTime ?? t.RootStartTime,
        };
    }

    private void Write(JournalRecord record)
    {
        var tmp = FilePath + ".tmp";
        var bytes = JsonSerializer.SerializeToUtf8Bytes(record, PipelineJson.Default.JournalRecord);
        using (var stream = new FileStream(tmp, new FileStreamOptions
        {
            Mode = FileMode.Create,
            Access = FileAccess.Write,
            UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
        }))
        {
            stream.Write(bytes);
            stream.Flush(flushToDisk: true);
        }

        File.Move(tmp, FilePath, overwrite: true);
        // The rename is durable only once the folder is synced (kexec does not flush page cache).
        Libc.FsyncDirectory(Path.GetDirectoryName(FilePath)!);
        Record = record;
        Written?.Invoke(record);
    }

    private static JournalRecord Read(string path)
    {
        try
        {
            var record = JsonSerializer.Deserialize(File.ReadAllBytes(path), PipelineJson.Default.JournalRecord)
                ?? throw new InvalidDataException($"{path} is empty");
            return record.Format == FormatName && record.Version == 1
                ? record
                : throw new InvalidDataException($"{path} is not a rebootless journal of version 1 (format '{record.Format}', version {record.Version})");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path} is not a readable journal: {e.Message}", e);
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
    UseStringEnumConverter = true, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(JournalRecord))]
[JsonSerializable(typeof(UpdateResult))]
[JsonSerializable(typeof(IReadOnlyList<JournalRecord>))]
internal sealed partial class PipelineJson : JsonSerializerContext;

/// <summary>JSON metadata of the report for the tool.</summary>
internal static class PipelineJsonPublic
{
    internal static System.Text.Json.Serialization.Metadata.JsonTypeInfo<UpdateResult> UpdateResultInfo => PipelineJson.Default.UpdateResult;
}
