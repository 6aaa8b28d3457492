using System.Text.Json.Serialization;

namespace RebootlessUpdate.Pipeline;

/// <summary>How a run ended.</summary>
public enum UpdateOutcome
{
    /// <summary>Every stage completed.</summary>
    Succeeded,

    /// <summary>Nothing needed doing (e.g. the set was already resumed).</summary>
    NothingToDo,

    /// <summary>A stage failed before the point of no return and every compensation succeeded: every workload runs on the current kernel.</summary>
    RolledBack,

    /// <summary>A stage failed and the rollback was incomplete, or the failure came after the point of no return. Read the targets' errors.</summary>
    Failed,

    /// <summary>
    /// Refused before any workload was touched (a bad or missing target, criu or kexec unusable, the store locked or
    /// full at plan, a journal that cannot be trusted): nothing was frozen, dumped or restored, every workload runs as it did.
    /// </summary>
    Refused,
}

/// <summary>How a stage ended.</summary>
public enum StageStatus
{
    /// <summary>It did its work.</summary>
    Completed,

    /// <summary>It had nothing to do (the reason is in the message).</summary>
    Skipped,

    /// <summary>It failed.</summary>
    Failed,

    /// <summary>It had run (or failed) and was compensated.</summary>
    Compensated,

    /// <summary>Its compensation failed.</summary>
    CompensationFailed,
}

/// <summary>One stage's outcome and timing.</summary>
/// <param name="Name">The stage.</param>
/// <param name="Status">How it ended (the compensation's status when it was compensated).</param>
/// <param name="Duration">Time spent in the stage (all attempts).</param>
/// <param name="Attempts">Attempts made (more than 1 only for stages marked safe to repeat).</param>
/// <param name="Message">Why it was skipped or failed, when it was.</param>
public sealed record StageResult(string Name, StageStatus Status, TimeSpan Duration, int Attempts, string? Message)
{
    /// <summary>Wall-clock time the stage (or its compensation) started, from the pipeline's time provider.</summary>
    public DateTimeOffset? StartedAt { get; init; }
}

/// <summary>One target's outcome, timings and CRIU statistics.</summary>
public sealed record TargetReport
{
    /// <summary>The target (e.g. <c>pid:1234</c>).</summary>
    public required string Target { get; init; }

    /// <summary>Where it ended.</summary>
    public required TargetPhase Phase { get; init; }

    /// <summary>True when the target was checkpointed and restored (a rehearsal's verdict).</summary>
    public bool Restorable { get; init; }

    /// <summary>Root pid after restore.</summary>
    public int? RestoredPid { get; init; }

    /// <summary>Dump request time.</summary>
    public TimeSpan? DumpTime { get; init; }

    /// <summary>Time CRIU kept the tasks frozen (CRIU's statistics).</summary>
    public TimeSpan? FrozenTime { get; init; }

    /// <summary>Restore request time.</summary>
    public TimeSpan? RestoreTime { get; init; }

    /// <summary>From freeze to running again.</summary>
    public TimeSpan? Downtime { get; init; }

    /// <summary>Image bytes.</summary>
    public long? Bytes { get; init; }

    /// <summary>Pages CRIU scanned.</summary>
    public ulong? PagesScanned { get; init; }

    /// <summary>Pages CRIU wrote.</summary>
    public ulong? PagesWritten { get; init; }

    /// <summary>Pages CRIU restored.</summary>
    public ulong? PagesRestored { get; init; }

    /// <summary>True when it was restored lazily (its memory served on demand after it resumed).</summary>
    public bool LazyPages { get; init; }

    /// <summary>The pid of the lazy-pages daemon serving its memory (it exits by itself when done).</summary>
    public int? LazyPagesDaemonPid { get; init; }

    /// <summary>With memory served from the store: the pages our page server sent its daemon.</summary>
    public long? PagesServedOnDemand { get; init; }

    /// <summary>With memory served from the store: from the restore's answer until the target held all of its memory.</summary>
    public TimeSpan? AllMemoryBackAfter { get; init; }

    /// <summary>Why CRIU refused its pre-dump, when it did: it was dumped whole inside the freeze.</summary>
    public string? PreDumpRefused { get; init; }

    /// <summary>What went wrong, if anything.</summary>
    public string? Error { get; init; }

    internal static TargetReport From(TargetRun t) => new()
    {
        Target = t.Target.Id,
        Phase = t.Phase,
        Restorable = t.Phase == TargetPhase.Restored,
        RestoredPid = t.RestoredPid,
        DumpTime = t.DumpTime,
        FrozenTime = t.DumpStatistics?.Frozen,
        RestoreTime = t.RestoreTime,
        Downtime = t.Downtime,
        Bytes = t.Bytes,
        PagesScanned = t.DumpStatistics?.PagesScanned,
        PagesWritten = t.DumpStatistics?.PagesWritten,
        PagesRestored = t.RestoreStatistics?.PagesRestored,
        LazyPages = t.LazyPages,
        LazyPagesDaemonPid = t.LazyPagesDaemonPid,
        PagesServedOnDemand = t.PagesServedOnDemand,
        AllMemoryBackAfter = t.AllMemoryBackAfter,
        PreDumpRefused = t.PreDumpRefused,
        Error = t.Error,
    };
}

/// <summary>
/// The report of a run: how it ended, what failed and why, every stage's timing,
/// every target's timings and statistics, and the total downtime.
/// </summary>
public sealed record UpdateResult
{
    /// <summary>How the run ended.</summary>
    public required UpdateOutcome Outcome { get; init; }

    /// <summary>What the run was for.</summary>
    public required UpdateMode Mode { get; init; }

    /// <summary>The checkpoint set, when one was chosen.</summary>
    public string? SetId { get; init; }

    /// <summary>The stage that failed, if one did.</summary>
    public string? FailedStage { get; init; }

    /// <summary>The failure's message, if the run failed.</summary>
    public string? Error { get; init; }

    /// <summary>The failure's exception type name, if the run failed.</summary>
    public string? ErrorType { get; init; }

    /// <summary>True when the run was cancelled (cancellation is never retried).</summary>
    public bool Cancelled { get; init; }

    /// <summary>Every stage that ran, in order, then the compensations in the order they ran.</summary>
    public required IReadOnlyList<StageResult> Stages { get; init; }

    /// <summary>Every target's outcome.</summary>
    public required IReadOnlyList<TargetReport> Targets { get; init; }

    /// <summary>From the first freeze to the last resume, when every target was restored in this run.</summary>
    public TimeSpan? Downtime { get; init; }

    /// <summary>Total run time.</summary>
    public TimeSpan Duration { get; init; }

    /// <summary>The exception that failed the run, if any (not serialised).</summary>
    [JsonIgnore]
    public Exception? Exception { get; init; }

    /// <summary>True for <see cref="UpdateOutcome.Succeeded"/> and <see cref="UpdateOutcome.NothingToDo"/>.</summary>
    public bool IsSuccess => Outcome is UpdateOutcome.Succeeded or UpdateOutcome.NothingToDo;
}
