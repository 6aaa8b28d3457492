using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Images;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.Pipeline;

/// <summary>What a pipeline run is for.</summary>
public enum UpdateMode
{
    /// <summary>Checkpoint, load the new kernel, jump (the first half of an update).</summary>
    Update,

    /// <summary>Checkpoint, seal, verify and restore on the same kernel, with no kernel loaded.</summary>
    Rehearse,

    /// <summary>After the jump: find the set, verify it, restore every target (the second half).</summary>
    Resume,
}

/// <summary>
/// The state one pipeline run shares between its stages: what is checkpointed,
/// where, the journal, and per-target results. One context serves one run.
/// </summary>
public sealed class UpdateContext
{
    private readonly Dictionary<string, object?> _items = new(StringComparer.Ordinal);
    private int _started;
    private string? _skipReason;

    /// <summary>Creates the context of one run over <paramref name="targets"/>.</summary>
    /// <param name="mode">What the run is for.</param>
    /// <param name="targets">What to checkpoint (for a resume: what the journal names; may be empty, Locate fills it).</param>
    public UpdateContext(UpdateMode mode, IEnumerable<UpdateTarget> targets)
    {
        ArgumentNullException.ThrowIfNull(targets);
        Mode = mode;
        Targets = [.. targets.Select(t => new TargetRun(t ?? throw new ArgumentException("a target is null", nameof(targets))))];
        var duplicate = Targets.GroupBy(t => t.Target.Id, StringComparer.Ordinal).FirstOrDefault(g => g.Count() > 1);
        if (duplicate is not null)
        {
            throw new ArgumentException($"target {duplicate.Key} is named twice; name each workload once.", nameof(targets));
        }
    }

    /// <summary>What the run is for.</summary>
    public UpdateMode Mode { get; }

    /// <summary>Every target and what happened to it so far.</summary>
    public IReadOnlyList<TargetRun> Targets { get; internal set; }

    /// <summary>The image store (required by the standard stages).</summary>
    public IImageStore? Store { get; init; }

    /// <summary>The CRIU client (required by the standard stages that dump or restore).</summary>
    public CriuClient? Criu { get; init; }

    /// <summary>The clock for timings. Default: <see cref="TimeProvider.System"/>.</summary>
    public TimeProvider TimeProvider { get; init; } = TimeProvider.System;

    /// <summary>Where the stages log. Default: nowhere.</summary>
    public ILogger Logger { get; init; } = NullLogger.Instance;

    /// <summary>Receives progress events. Default: none.</summary>
    public IProgress<UpdateProgress>? Progress { get; init; }

    /// <summary>
    /// Update and rehearsal: restore every target lazily (see <see cref="TargetCriuSettings.LazyPages"/>).
    /// Plan records it in each target's settings in the journal, so the resume after the jump restores
    /// lazily too. Default false.
    /// </summary>
    public bool LazyRestore { get; init; }

    /// <summary>
    /// Update and rehearsal: restore every target lazily with its memory served from the store through our page
    /// server (see <see cref="Stages.RestoreStageOptions.ServePagesFromStore"/>; implies <see cref="LazyRestore"/>).
    /// Plan records it in each target's settings in the journal, so the resume after the jump does the same. Default false.
    /// </summary>
    public bool PagesFromStore { get; init; }

    /// <summary>The checkpoint set's id once Plan (or Locate) chose it.</summary>
    public string? SetId { get; internal set; }

    /// <summary>The set being written (update and rehearsal), once Plan created it.</summary>
    public CheckpointSet? CheckpointSet { get; internal set; }

    /// <summary>The journal of this run, once Plan (or Locate) opened it.</summary>
    public UpdateJournal? Journal { get; internal set; }

    /// <summary>
    /// Set when the run passed its point of no return (the jump started): failures
    /// after it are reported but nothing is compensated.
    /// </summary>
    public bool PointOfNoReturnPassed { get; internal set; }

    /// <summary>True when a resume found nothing to do (no unfinished run, or the set was already resumed).</summary>
    public bool NothingToDo => Recovery == RecoveryKind.NothingToDo;

    /// <summary>What the run after boot does, as Locate decided it (a resume until it decides otherwise).</summary>
    internal RecoveryKind Recovery { get; set; } = RecoveryKind.Resume;

    /// <summary>A place for custom stages to pass values to each other.</summary>
    public IDictionary<string, object?> Items => _items;

    /// <summary>Marks the running stage as skipped, with the reason shown in the report.</summary>
    public void SkipStage(string reason)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(reason);
        _skipReason = reason;
    }

    /// <summary>Sends an informational progress event from a stage.</summary>
    /// <param name="stage">The stage's name.</param>
    /// <param name="message">What happened, for a human.</param>
    /// <param name="target">The target concerned, when there is one.</param>
    /// <param name="bytes">An amount of bytes the message reports (dumped, verified), for progress displays.</param>
    public void ReportProgress(string stage, string message, string? target = null, long? bytes = null) =>
        Progress?.Report(new UpdateProgress(UpdateProgressKind.Info, stage, message, target, bytes));

    internal ImageStoreLock? StoreLock { get; set; }

    /// <summary>The host's processes, as the stages see them (a scripted table in unit tests).</summary>
    internal IProcessTable Processes { get; set; } = HostProcessTable.Instance;

    /// <summary>The cgroup freezer, as the stages use it (a recording one in unit tests).</summary>
    internal ICgroupFreezer Freezer { get; set; } = HostCgroupFreezer.Instance;

    /// <summary>The service manager of service targets, as the stages use it (a recording one in unit tests).</summary>
    internal IServiceManager Services { get; set; } = SystemctlServiceManager.Host;

    /// <summary>
    /// The boot that waits for this resume: the resume unit's readiness (<c>rebootless resume --systemd-notify</c>).
    /// None by default: a run never speaks for a unit that merely started it.
    /// </summary>
    internal IBootGate BootGate { get; set; } = SystemdNotifyGate.None;

    /// <summary>Restored service trees whose units' queued boot starts were made their adoption: checked once the boot goes on.</summary>
    internal List<(TargetRun Target, int Pid)> QueuedAdoptions { get; } = [];

    /// <summary>Targets whose units' queued starts had not run when this run stopped waiting: their adoption drop-ins stay, untouched.</summary>
    internal HashSet<string> AdoptionsLeftQueued { get; } = new(StringComparer.Ordinal);

    internal string? CriuVersion { get; set; }

    internal bool KernelLoaded { get; set; }

    internal RestorableSet? Restorable { get; set; }

    /// <summary>The capacity estimate Plan made.</summary>
    public CapacityEstimate? Estimate { get; internal set; }

    internal void ReleaseLock()
    {
        StoreLock?.Dispose();
        StoreLock = null;
    }

    internal string? TakeSkipReason()
    {
        var r = _skipReason;
        _skipReason = null;
        return r;
    }

    internal void MarkStarted()
    {
        if (Interlocked.Exchange(ref _started, 1) != 0)
        {
            throw new InvalidOperationException("this UpdateContext was already used by a pipeline run; create a new context for each run.");
        }
    }

    internal IImageStore RequireStore() => Store ?? throw new InvalidOperationException("the standard stages need UpdateContext.Store.");

    internal CriuClient RequireCriu() => Criu ?? throw new InvalidOperationException("the standard stages need UpdateContext.Criu.");

    internal UpdateJournal RequireJournal() => Journal ?? throw new InvalidOperationException("no journal yet: the Plan (or Locate) stage must run first.");

    internal CheckpointSet RequireSet() => CheckpointSet ?? throw new InvalidOperationException("no checkpoint set yet: the Plan stage must run first.");
}
