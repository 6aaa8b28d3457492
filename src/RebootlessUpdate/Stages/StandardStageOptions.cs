using RebootlessUpdate.Kexec;

namespace RebootlessUpdate.Stages;

/// <summary>Options of the Dump stage. Immutable.</summary>
public sealed record DumpStageOptions
{
    /// <summary>
    /// Called for each CRIU notification while a target is dumped (pre-dump,
    /// network-lock, post-dump, ...), e.g. to tell a load balancer. Throwing vetoes
    /// the dump: CRIU resumes the target and the run rolls back. Time spent here is
    /// frozen time. Default: none.
    /// </summary>
    public Func<TargetNotification, CancellationToken, ValueTask>? OnCriuNotification { get; init; }

    /// <summary>
    /// How many more times a target's dump is asked when CRIU could not stop its processes and let them run on: a
    /// task it could not seize (one caught exiting while the freezer froze it, or traced by someone else) or its
    /// seize timeout. Asked again only while the tree's root is the same process. Other targets stay frozen meanwhile.
    /// A notification hook may see a target's early notifications again. Default 2; 0 fails at once; at most 10.
    /// </summary>
    public int SeizeRetries { get; init; } = 2;

    /// <summary>The pause before each of those retries. Default 1 s; at most 1 min.</summary>
    public TimeSpan SeizeRetryDelay { get; init; } = TimeSpan.FromSeconds(1);

    internal void Validate()
    {
        if (SeizeRetries is < 0 or > 10)
        {
            throw new ArgumentOutOfRangeException(nameof(SeizeRetries), SeizeRetries, "a dump is asked again 0-10 times.");
        }

        if (SeizeRetryDelay < TimeSpan.Zero || SeizeRetryDelay > TimeSpan.FromMinutes(1))
        {
            throw new ArgumentOutOfRangeException(nameof(SeizeRetryDelay), SeizeRetryDelay, "the pause before asking again is 0 to 1 min.");
        }
    }
}

/// <summary>Options of the PreDump stage. Immutable.</summary>
public sealed record PreDumpStageOptions
{
    /// <summary>
    /// Fail when memory tracking (soft-dirty) is unavailable instead of skipping the
    /// stage with a logged reason. Default: false (skip).
    /// </summary>
    public bool Required { get; init; }
}

/// <summary>Options of the LoadKernel stage. Immutable; validated when added.</summary>
public sealed record LoadKernelStageOptions
{
    /// <summary>The kernel to load (bzImage). Required.</summary>
    public required string KernelPath { get; init; }

    /// <summary>The initrd; default: found next to the kernel (<c>initrd.img-RELEASE</c>).</summary>
    public string? InitrdPath { get; init; }

    /// <summary>Load without an initrd. Default false.</summary>
    public bool NoInitrd { get; init; }

    /// <summary>Parameters to set on the next kernel's command line (name, value or null for a flag). Default none.</summary>
    public IReadOnlyList<KeyValuePair<string, string?>> SetParameters { get; init; } = [];

    /// <summary>Parameters to drop from the next command line. Default none.</summary>
    public IReadOnlyList<string> RemoveParameters { get; init; } = [];

    /// <summary>Persistent-memory regions (<c>SIZE!START</c>) the next kernel must keep, e.g. the pmem store's. Default none.</summary>
    public IReadOnlyList<string> PersistentMemoryRegions { get; init; } = [];

    /// <summary>How to load. Default: the kexec_file_load system call.</summary>
    public KexecLoadMethod Method { get; init; } = KexecLoadMethod.SystemCall;

    /// <summary>The loader. Default: a new <see cref="KexecLoader"/>.</summary>
    public KexecLoader? Loader { get; init; }

    /// <summary>Where the current command line is read. Default <c>/proc/cmdline</c>.</summary>
    public string CurrentCommandLinePath { get; init; } = "/proc/cmdline";

    internal void Validate()
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(KernelPath);
        if (NoInitrd && InitrdPath is not null)
        {
            throw new ArgumentException("give either InitrdPath or NoInitrd, not both.", nameof(NoInitrd));
        }

        if (!File.Exists(KernelPath))
        {
            throw new ArgumentException($"the kernel {KernelPath} does not exist.", nameof(KernelPath));
        }

        if (InitrdPath is not null && !File.Exists(InitrdPath))
        {
            throw new ArgumentException($"the initrd {InitrdPath} does not exist.", nameof(InitrdPath));
        }
    }
}

/// <summary>Options of the Jump stage. Immutable.</summary>
public sealed record JumpStageOptions
{
    /// <summary>The jump driver. Default: a new <see cref="KexecJump"/> (refuses under a test runner or CI without the allowance variable).</summary>
    public KexecJump? Jump { get; init; }
}

/// <summary>Options of the Locate stage. Immutable.</summary>
public sealed record LocateStageOptions
{
    /// <summary>The set to resume; default: the one the kernel command line names (<c>rebootless.resume=</c>), else the newest unfinished journal.</summary>
    public string? SetId { get; init; }

    /// <summary>Where the command line is read. Default <c>/proc/cmdline</c>.</summary>
    public string CommandLinePath { get; init; } = "/proc/cmdline";

    /// <summary>
    /// After a crash on this boot: how long to wait for a CRIU worker of the dead run to let go
    /// of a tree it still holds before judging whether the tree runs. Default 30 s.
    /// </summary>
    public TimeSpan CriuReleaseWait { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// For a target the journal shows restoring: how long to wait for a CRIU still restoring it before judging
    /// whether its restored tree runs (adopted) or not (restored once). Default <see cref="Pipeline.StageDefaults.InterruptedRestoreWait"/> (5 min).
    /// </summary>
    public TimeSpan InterruptedRestoreWait { get; init; } = Pipeline.StageDefaults.InterruptedRestoreWait;
}

/// <summary>Options of the Restore stage. Immutable.</summary>
public sealed record RestoreStageOptions
{
    /// <summary>Targets restored at the same time (1-64). Default 4.</summary>
    public int MaxParallelism { get; init; } = StageDefaultsValues.MaxParallelism;

    /// <summary>
    /// Restore every target lazily, whatever its settings say (a target whose journal records
    /// <see cref="Targets.TargetCriuSettings.LazyPages"/> is restored lazily anyway): a
    /// <c>criu lazy-pages</c> daemon per target, its socket and log in the target's work folder
    /// (never in the sealed images), serves the memory on demand once the tree runs, so the
    /// restore no longer copies every page while the target is down. The daemon outlives the run
    /// and exits by itself when every page is delivered; its pid is in the report and the journal.
    /// The page check still holds the target at post-restore: no page is served before it passed.
    /// Where userfaultfd or the daemon is unavailable the target is restored fully, and the progress
    /// says why. Default false.
    /// </summary>
    public bool LazyPages { get; init; }

    /// <summary>
    /// Restore lazily (implies <see cref="LazyPages"/>), each target's memory served from the set through our own page server
    /// (<see cref="Criu.LazyPageServer"/>) instead of letting CRIU's daemon read the page images: the daemon gets
    /// page contents only from us, each 1 MiB chunk checked against the manifest's chunk hashes the first time any
    /// page of it is asked for, so the target no longer waits at post-restore for its page images to be hashed
    /// whole (only the chunks CRIU restores itself are checked there). A chunk that fails its check ends that
    /// target before it gets the page (its tree is stopped and killed, its images kept), and the report names
    /// file and offset. The Restore stage waits until every such target holds all of its memory (the run must not
    /// end while a target still needs pages from it). A dump on a pre-dump is restored through a restore view in
    /// the target's work folder whose parent pages of lazy-capable memory are lazy too, so they are served the same
    /// way (<c>Criu.CriuRestoreView</c>; the sealed folders stay as they are for a full restore). Sets sealed without
    /// chunk hashes, and dumps whose view cannot be built (the progress says why), keep the whole check before they
    /// run. Default false.
    /// </summary>
    public bool ServePagesFromStore { get; init; }

    /// <summary>
    /// With <see cref="ServePagesFromStore"/>: the Restore stage waits for every target to hold all of its memory, for
    /// as long as the pages keep flowing (a slow machine or a large target only takes longer). A target whose daemon
    /// asks for no page for this long while pages are still missing is ended (a stuck daemon would leave it hanging
    /// on its next fault). Default 2 min.
    /// </summary>
    public TimeSpan PageStreamStallLimit { get; init; } = TimeSpan.FromMinutes(2);

    /// <summary>
    /// On the kernel a tree was dumped on (a rehearsal, a rollback, a resume after a crash before the jump), how long
    /// its restore waits for every pid, thread id, process group and session recorded in its <c>pstree.img</c> to be
    /// free: CRIU ended the original moments ago and an orphan it killed stays a zombie until the host's init reaps it.
    /// When the wait runs out, the restore is not attempted and a <see cref="PidsInUseException"/> names each id still
    /// in use and the process holding it. Not used for a tree restored into its own new PID namespace, nor after the
    /// jump. 0.1 s to 10 min. Default <see cref="Pipeline.StageDefaults.PidReleaseWait"/> (10 s).
    /// </summary>
    public TimeSpan PidReleaseWait { get; init; } = Pipeline.StageDefaults.PidReleaseWait;

    internal void Validate()
    {
        if (MaxParallelism is < 1 or > 64)
        {
            throw new ArgumentException($"MaxParallelism must be 1-64, not {MaxParallelism}.");
        }

        if (PidReleaseWait < TimeSpan.FromMilliseconds(100) || PidReleaseWait > TimeSpan.FromMinutes(10))
        {
            throw new ArgumentException($"PidReleaseWait must be 0.1 s to 10 min, not {PidReleaseWait}.");
        }

        if (PageStreamStallLimit < TimeSpan.FromSeconds(1))
        {
            throw new ArgumentException($"PageStreamStallLimit must be 1 s at least, not {PageStreamStallLimit}.");
        }
    }
}

/// <summary>Options of the Verify stage. Immutable.</summary>
public sealed record VerifyStageOptions
{
    /// <summary>
    /// After boot, hash the page images (the bulk of a set) while CRIU restores from them
    /// instead of before (default true). Everything else is verified first; CRIU then loads the
    /// memory of a target but does not let it run until its pages passed: the post-restore
    /// notification waits for that check and a mismatch makes CRIU abort the restore and kill
    /// the tree, so nothing of a damaged target ever runs. Turn it off to verify everything first.
    /// </summary>
    public bool HashPagesDuringRestore { get; init; } = true;
}

/// <summary>Options of the Cleanup stage. Immutable.</summary>
public sealed record CleanupStageOptions
{
    /// <summary>Delete a successful rehearsal's set (its images have no further use). Default true.</summary>
    public bool DeleteRehearsalSet { get; init; } = true;

    /// <summary>
    /// Sealed sets to keep after a resume (older ones are deleted, never one an unfinished run needs). Default 2; null keeps all.
    /// </summary>
    public int? KeepSealedSets { get; init; } = 2;

    /// <summary>
    /// Journals of finished runs (resumed or rolled back) to keep, newest first; older ones are deleted with their
    /// logs folders once their set is gone. A <c>Failed</c> or unreadable journal is never deleted. Default 10; null keeps all.
    /// </summary>
    public int? KeepJournals { get; init; } = 10;

    /// <summary>
    /// A set or logs folder that no journal accounts for (a crash between creating a set and its journal, or a
    /// retention pass cut short) is deleted once older than this. Default one day.
    /// </summary>
    public TimeSpan OrphanGracePeriod { get; init; } = TimeSpan.FromDays(1);

    /// <summary>
    /// A rehearsal restored lazily: how long to wait for the lazy-pages daemons to deliver every page
    /// before its set is deleted (they read from it). When they are not done by then the set is kept.
    /// Default 5 minutes.
    /// </summary>
    public TimeSpan LazyPagesWait { get; init; } = TimeSpan.FromMinutes(5);

    internal void Validate()
    {
        if (LazyPagesWait < TimeSpan.Zero)
        {
            throw new ArgumentException($"LazyPagesWait must not be negative, not {LazyPagesWait}.");
        }

        if (KeepSealedSets < 0 || KeepJournals < 0)
        {
            throw new ArgumentException($"KeepSealedSets and KeepJournals must not be negative, not {KeepSealedSets} and {KeepJournals}.");
        }

        if (OrphanGracePeriod < TimeSpan.Zero)
        {
            throw new ArgumentException($"OrphanGracePeriod must not be negative, not {OrphanGracePeriod}.");
        }
    }
}

internal static class StageDefaultsValues
{
    internal const int MaxParallelism = Pipeline.StageDefaults.MaxParallelism;
}

/// <summary>A CRIU notification during a target's dump, as passed to a dump hook.</summary>
/// <param name="Target">The target.</param>
/// <param name="Script">CRIU's hook name (pre-dump, network-lock, post-dump, ...).</param>
/// <param name="Pid">The pid CRIU names, if any.</param>
public readonly record struct TargetNotification(string Target, string Script, int? Pid);
