using RebootlessUpdate.Images;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.Pipeline;

/// <summary>
/// Where a target is in a run; <see cref="TargetTransitions"/> lists every move. A run that is rolled back leaves each
/// target <see cref="Resumed"/> (in place) or <see cref="Restored"/> (from its images, on the same kernel); a target
/// refused for damaged images is <see cref="Failed"/> with its images kept. The numbers are those of earlier versions
/// (journals name the phases).
/// </summary>
public enum TargetPhase
{
    /// <summary>Resolved, nothing done yet.</summary>
    Planned = 0,

    /// <summary>CRIU copied its memory while it ran (a pre-dump); nothing of it changed, the final dump builds on that copy.</summary>
    PreDumped = 8,

    /// <summary>CRIU holds it frozen after writing its images (it can still be resumed in place).</summary>
    Frozen = 1,

    /// <summary>Still held frozen by CRIU, and its images are sealed (hashed into the manifest): ready for the jump.</summary>
    Sealed = 9,

    /// <summary>Committed: its images are complete and CRIU ended the original processes.</summary>
    Dumped = 2,

    /// <summary>
    /// CRIU has (or may have) been asked to restore it: journaled before the request, and again with the restored
    /// root's pid and start time before CRIU lets the tree run. A later run looks for that tree and never restores
    /// a second copy.
    /// </summary>
    Restoring = 3,

    /// <summary>Restored from the images.</summary>
    Restored = 4,

    /// <summary>Running in place again after a rollback that needed no restore.</summary>
    Resumed = 5,

    /// <summary>Something failed; see the error.</summary>
    Failed = 6,

    /// <summary>
    /// It ran again after its checkpoint (restored, or resumed in place) and has exited since: its images are older
    /// than what it did, so it is never restored from them again. Needs an operator, like <see cref="Failed"/>.
    /// </summary>
    Ended = 7,
}

/// <summary>
/// One target in a run: its state, timings and CRIU statistics. Its phase, and what each move records (the
/// restored root, the dump's and the restore's results), change only through its own methods, each a move of
/// the table in <see cref="TargetTransitions"/>.
/// </summary>
public sealed class TargetRun
{
    internal TargetRun(UpdateTarget target, TargetPhase journaled = TargetPhase.Planned)
    {
        Target = target;
        Phase = journaled;
    }

    /// <summary>The target.</summary>
    public UpdateTarget Target { get; }

    /// <summary>Where it is now. It moves only as <see cref="TargetTransitions"/> allows.</summary>
    public TargetPhase Phase { get; private set; }

    /// <summary>Moves to <paramref name="next"/>.</summary>
    /// <exception cref="InvalidOperationException">The move is not one a target can make (a bug): nothing changed.</exception>
    internal void MoveTo(TargetPhase next)
    {
        TargetTransitions.Check(Target.Id, Phase, next);
        Phase = next;
    }

    /// <summary>
    /// A target as its journal left it (before deciding what it needs): the one mapping from the journal back to
    /// a run; <see cref="UpdateJournal"/> maps a run to the journal.
    /// </summary>
    internal static TargetRun FromJournal(JournalTarget jt, string setImagesDirectory) => new(new JournaledTarget(jt.Id, jt.Settings), jt.Phase)
    {
        Settings = jt.Settings,
        Folder = jt.Folder,
        ImagesDirectory = Path.Combine(setImagesDirectory, jt.Folder),
        DumpStartedAt = jt.DumpStartedAt,
        RestoreRequestedAt = jt.RestoreRequestedAt,
        RestoredPid = jt.RestoredPid,
        RestoredStartTime = jt.RestoredStartTime,
        Original = jt.RootStartTime == 0 ? null : new ProcessIdentity(jt.RootPid, jt.RootStartTime),
        PreDumpRefused = jt.PreDumpRefused,
        Error = jt.Phase == TargetPhase.Ended ? jt.Error : null, // why it ended stays with it; other phases are settled anew
    };

    // What the stages learn of a target without a move: each is the only writer of what it records.

    /// <summary>Plan resolved it: its root, the CRIU settings of this run, its folder in the set.</summary>
    internal void Resolve(ResolvedTarget resolved, TargetCriuSettings settings, string folder)
    {
        Resolved = resolved;
        Settings = settings;
        Folder = folder;
    }

    /// <summary>CRIU refused its pre-dump (<paramref name="reason"/>): it is dumped whole inside the freeze.</summary>
    internal void PreDumpWasRefused(string reason) => PreDumpRefused = reason;

    /// <summary>
    /// Its dump is being asked of CRIU: into <paramref name="imagesDirectory"/>, of the tree whose root is
    /// <paramref name="original"/>, from the context's clock <paramref name="timestamp"/> (wall clock <paramref name="at"/>).
    /// </summary>
    internal void DumpRequested(string imagesDirectory, ProcessIdentity original, bool ownsPidNamespace, long timestamp, DateTimeOffset at, Pending pending)
    {
        ImagesDirectory = imagesDirectory;
        Original = original;
        OwnsPidNamespace = ownsPidNamespace;
        DumpStartedTimestamp = timestamp;
        DumpStartedAt = at;
        PendingDump = pending;
    }

    /// <summary>Its dump is asked of CRIU once more (CRIU could not stop the tree and let it run on), from <paramref name="timestamp"/> (wall clock <paramref name="at"/>).</summary>
    internal void DumpAskedAgain(long timestamp, DateTimeOffset at)
    {
        DumpStartedTimestamp = timestamp;
        DumpStartedAt = at;
    }

    /// <summary>Its page images are being checked by <paramref name="check"/> while CRIU restores it (awaited at post-restore).</summary>
    internal void CheckPagesWith(Task<VerificationResult> check) => PendingPageVerification = check;

    /// <summary>Its pages failed their check at this run's restore (<paramref name="why"/>): never restored from these images again.</summary>
    internal void PagesFailedCheck(string why) => PagesRefused = why;

    /// <summary>Its memory is served by <paramref name="daemon"/> (null: restored whole), fed from the store by <paramref name="onDemand"/> when it is.</summary>
    internal void ServedBy(CriuLazyPagesDaemon? daemon, Stages.OnDemandMemory? onDemand)
    {
        LazyPagesDaemon = daemon;
        OnDemand = daemon is null ? null : onDemand;
    }

    /// <summary>Our page server for it stopped: it holds all of its memory (<paramref name="after"/> set), or it was ended without it.</summary>
    internal void OnDemandEnded(long pagesServed, TimeSpan? after = null)
    {
        OnDemand = null;
        PagesServedOnDemand = pagesServed;
        AllMemoryBackAfter = after ?? AllMemoryBackAfter;
    }

    // The moves that carry data: each is the only writer of what it records, and moves first (a refused move changes nothing).

    /// <summary>CRIU pre-dumped it into <paramref name="folder"/> (relative to the set's images folder) while it ran.</summary>
    internal void PreDumped(string folder)
    {
        MoveTo(TargetPhase.PreDumped);
        PreDumpFolder = folder;
    }

    /// <summary>Held by CRIU, its images are now in the sealed manifest.</summary>
    internal void MarkSealed() => MoveTo(TargetPhase.Sealed);

    /// <summary>True while CRIU holds it frozen at post-dump (sealed or not): it waits for a commit or a veto.</summary>
    internal bool IsHeld => Phase is TargetPhase.Frozen or TargetPhase.Sealed;

    /// <summary>CRIU holds it at post-dump, <paramref name="bytes"/> of images written after <paramref name="dumpTime"/>.</summary>
    internal void Froze(TimeSpan dumpTime, long bytes)
    {
        MoveTo(TargetPhase.Frozen);
        DumpTime = dumpTime;
        Bytes = bytes;
    }

    /// <summary>CRIU finished its dump and ended the original processes.</summary>
    internal void DumpFinished(CriuDumpStatistics? statistics, TimeSpan? dumpTime = null, long? bytes = null)
    {
        MoveTo(TargetPhase.Dumped);
        DumpStatistics = statistics;
        DumpTime = dumpTime ?? DumpTime;
        Bytes = bytes ?? Bytes;
    }

    /// <summary>CRIU could not dump it (<paramref name="error"/> says why; the run fails with it).</summary>
    internal void DumpFailed(Exception error, TimeSpan dumpTime)
    {
        MoveTo(TargetPhase.Failed);
        Error = error.Message;
        DumpException = error;
        DumpTime = dumpTime;
    }

    /// <summary>Failed, for <paramref name="error"/>: it needs an operator (its images, if any, are kept).</summary>
    internal void Fail(string error)
    {
        MoveTo(TargetPhase.Failed);
        Error = error;
    }

    /// <summary>
    /// It ran after its checkpoint and has exited since: never restored again (<paramref name="error"/> says what is known;
    /// an ended target only learns more).
    /// </summary>
    internal void End(string? error)
    {
        if (Phase != TargetPhase.Ended)
        {
            MoveTo(TargetPhase.Ended);
        }

        Error = error;
    }

    /// <summary>A restore of it failed (<paramref name="why"/>); where it stands (its phase) is what the attempt left.</summary>
    internal void RestoreFailed(string why) => Error = why;

    /// <summary>
    /// A CRIU may still be restoring it, so it is not asked again: <paramref name="why"/> says so and what to run
    /// (after what was known of it, with <paramref name="afterEarlier"/>).
    /// </summary>
    /// <exception cref="InvalidOperationException">It is not being restored.</exception>
    internal void LeftRestoring(string why, bool afterEarlier = false)
    {
        if (Phase != TargetPhase.Restoring)
        {
            throw new InvalidOperationException($"{Target.Id}: only a target being restored is left so, not a {Phase} target.");
        }

        Error = afterEarlier && Error is not null ? $"{Error}; {why}" : why;
    }

    /// <summary>
    /// About to ask CRIU (or podman) for a restore, at <paramref name="at"/>: no restored root is known yet. Returns the
    /// phase before, for <see cref="RevertRestoring"/> when the move cannot be journaled.
    /// </summary>
    internal TargetPhase BeginRestoring(DateTimeOffset at)
    {
        var before = Phase;
        MoveTo(TargetPhase.Restoring);
        RestoreRequestedAt = at;
        ForgetRestoredRoot();
        Error = null; // a new attempt: what an earlier one met no longer describes it
        return before;
    }

    /// <summary>CRIU reported the restored root at post-restore (before the tree runs).</summary>
    /// <exception cref="InvalidOperationException">The target is not being restored.</exception>
    internal void RecordRestoredRoot(ProcessIdentity root)
    {
        if (Phase != TargetPhase.Restoring)
        {
            throw new InvalidOperationException($"{Target.Id}: a restored root is recorded only while restoring, not for a {Phase} target.");
        }

        RestoredPid = root.Pid;
        RestoredStartTime = root.StartTime;
    }

    /// <summary>The recorded root is not (or no longer) a tree of this target: nothing of that restore runs.</summary>
    internal void ForgetRestoredRoot()
    {
        RestoredPid = null;
        RestoredStartTime = null;
    }

    /// <summary>Nothing of an attempted restore runs: it may be restored (once) again.</summary>
    internal void NothingRestored()
    {
        MoveTo(TargetPhase.Dumped);
        ForgetRestoredRoot();
    }

    /// <summary>Restored: CRIU let the tree rooted at <paramref name="pid"/> run.</summary>
    internal void MarkRestored(int pid, CriuRestoreStatistics? statistics, TimeSpan took, long timestamp, DateTimeOffset at, TimeSpan? downtime)
    {
        MoveTo(TargetPhase.Restored);
        RestoredPid = pid;
        RestoreStatistics = statistics;
        RestoreTime = took;
        RestoredTimestamp = timestamp;
        RestoredAt = at;
        Downtime = downtime;
    }

    /// <summary>
    /// Takes back a move to <see cref="TargetPhase.Restoring"/> that could not be journaled: nothing was asked of CRIU.
    /// </summary>
    internal void RevertRestoring(TargetPhase before)
    {
        if (Phase != TargetPhase.Restoring)
        {
            throw new InvalidOperationException($"{Target.Id}: only a restore that was not journaled is taken back, not a {Phase} target.");
        }

        Phase = before;
    }

    /// <summary>The target's images folder (inside the set's images folder), once dumping started.</summary>
    public string? ImagesDirectory { get; private set; }

    /// <summary>Root pid of the restored tree, once restored.</summary>
    public int? RestoredPid { get; private set; }

    /// <summary>Start time of the restored root (with <see cref="RestoredPid"/>: tells the restored tree from a reused pid).</summary>
    internal ulong? RestoredStartTime { get; private set; }

    /// <summary>The restored root, once CRIU reported it at post-restore.</summary>
    internal ProcessIdentity? RestoredRoot => RestoredPid is { } pid && RestoredStartTime is { } start ? new ProcessIdentity(pid, start) : null;

    /// <summary>Time from the dump request to CRIU holding the images (freezing, dumping, writing).</summary>
    public TimeSpan? DumpTime { get; private set; }

    /// <summary>Time the restore request took.</summary>
    public TimeSpan? RestoreTime { get; private set; }

    /// <summary>From the dump request (freeze) to the restored tree running again, when both happened in this process.</summary>
    public TimeSpan? Downtime { get; private set; }

    /// <summary>Bytes of the target's images.</summary>
    public long? Bytes { get; private set; }

    /// <summary>CRIU's dump statistics (frozen time, pages), when it wrote them.</summary>
    public CriuDumpStatistics? DumpStatistics { get; private set; }

    /// <summary>CRIU's restore statistics, when it wrote them.</summary>
    public CriuRestoreStatistics? RestoreStatistics { get; private set; }

    /// <summary>What went wrong for this target, if anything.</summary>
    public string? Error { get; private set; }

    /// <summary>True when it was restored lazily: its memory is served on demand by a lazy-pages daemon.</summary>
    public bool LazyPages => LazyPagesDaemon is not null;

    /// <summary>
    /// The pid of the <c>criu lazy-pages</c> daemon serving its memory, when restored lazily. The daemon
    /// outlives the run and exits by itself once every page is delivered.
    /// </summary>
    public int? LazyPagesDaemonPid => LazyPagesDaemon?.Pid;

    /// <summary>The daemon serving its memory after a lazy restore (not stopped when the run ends).</summary>
    internal CriuLazyPagesDaemon? LazyPagesDaemon { get; private set; }

    /// <summary>Our page server feeding that daemon from the set, when its memory is served from the store.</summary>
    internal Stages.OnDemandMemory? OnDemand { get; private set; }

    /// <summary>With memory served from the store: the pages sent to its daemon (set when it has all of them, or failed).</summary>
    public long? PagesServedOnDemand { get; private set; }

    /// <summary>With memory served from the store: from the restore's answer until it held all of its memory.</summary>
    public TimeSpan? AllMemoryBackAfter { get; private set; }

    /// <summary>When the dump request was sent (from the context's clock).</summary>
    internal long? DumpStartedTimestamp { get; private set; }

    /// <summary>The wall-clock time of the dump request (survives the jump in the journal).</summary>
    internal DateTimeOffset? DumpStartedAt { get; private set; }

    /// <summary>The process identity recorded before dumping (to tell "still running" from "pid reused").</summary>
    internal ProcessIdentity? Original { get; private set; }

    internal Pending? PendingDump { get; private set; }

    /// <summary>
    /// Why its pages failed their check at this run's restore (held at post-restore, before it ran), if they did: a
    /// rollback then never restores it from the same images.
    /// </summary>
    internal string? PagesRefused { get; private set; }

    /// <summary>The check of the target's page images, still running while CRIU restores it (awaited at post-restore).</summary>
    internal Task<VerificationResult>? PendingPageVerification { get; private set; }

    internal Exception? DumpException { get; private set; }

    /// <summary>When the restore finished (wall clock).</summary>
    internal DateTimeOffset? RestoredAt { get; private set; }

    /// <summary>When its last restore was asked for (this kernel's wall clock; see <see cref="JournalTarget.RestoreRequestedAt"/>).</summary>
    internal DateTimeOffset? RestoreRequestedAt { get; private set; }

    /// <summary>When the restore finished (context clock).</summary>
    internal long? RestoredTimestamp { get; private set; }

    /// <summary>What Plan found: root pid and CRIU settings.</summary>
    internal ResolvedTarget? Resolved { get; private set; }

    /// <summary>CRIU settings (from Plan, or from the journal after the jump).</summary>
    internal TargetCriuSettings? Settings { get; private set; }

    /// <summary>The target's folder name inside the set's images folder.</summary>
    internal string? Folder { get; private set; }

    /// <summary>The pre-dump folder (relative to the set's images folder) the final dump builds on.</summary>
    internal string? PreDumpFolder { get; private set; }

    /// <summary>
    /// Why CRIU refused this target's pre-dump, when it did: the target is then dumped whole inside the freeze (and
    /// first, before any other target freezes), the others keep their pre-dumps.
    /// </summary>
    public string? PreDumpRefused { get; private set; }

    /// <summary>
    /// True once CRIU was asked anything about this target's processes (a pre-dump, a dump) or it left
    /// <see cref="TargetPhase.Planned"/>: a run that fails before that refused it, it rolled nothing back.
    /// </summary>
    internal bool Touched => Phase != TargetPhase.Planned || DumpStartedTimestamp is not null || _preDumpAsked;

    private bool _preDumpAsked;

    /// <summary>Recorded before CRIU is asked for a pre-dump (CRIU freezes the tree while it copies).</summary>
    internal void PreDumpAsked() => _preDumpAsked = true;

    /// <summary>The root is the init of its own PID namespace: CRIU restores it into a new one, so its old pids cannot collide.</summary>
    internal bool OwnsPidNamespace { get; private set; }

    /// <summary>A dump CRIU holds at its post-dump notification until the pipeline commits or vetoes it.</summary>
    internal sealed class Pending
    {
        public TaskCompletionSource<bool> Decision { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public TaskCompletionSource HeldAtPostDump { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public Task<CriuDumpResult> Request { get; set; } = Task.FromResult<CriuDumpResult>(null!);

        /// <summary>Whether CRIU announced more than its pre-dump in the current request: it had stopped the tree then.</summary>
        public volatile bool PastSeize;

        /// <summary>Asks CRIU for the dump (again): the request's task.</summary>
        public Func<Task<CriuDumpResult>> Ask { get; set; } = () => Task.FromResult<CriuDumpResult>(null!);

        /// <summary>Cancels the request (criu is killed, which releases the tree): for a rollback that cannot wait for it.</summary>
        public CancellationTokenSource Abandon { get; set; } = new();
    }
}
