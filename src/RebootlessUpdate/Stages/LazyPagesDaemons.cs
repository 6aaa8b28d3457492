using RebootlessUpdate.Criu;
using RebootlessUpdate.Criu.Interop;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.Stages;

/// <summary>What a running <c>criu lazy-pages</c> daemon is to this host's runs.</summary>
internal enum LazyPagesDaemonRole
{
    /// <summary>Its set's journal says it serves a restored target whose tree still runs.</summary>
    Serving,

    /// <summary>A restore handed it a tree the journal does not record (an interrupted run): `resume` decides.</summary>
    Undecided,

    /// <summary>It serves nothing: its target failed, was refused or rolled back, its tree is gone, or its set is unknown to its store.</summary>
    Orphan,

    /// <summary>Not started by the pipeline (its work folder is no set's logs folder).</summary>
    Foreign,
}

/// <summary>A running daemon and what it is, with the reason in words.</summary>
/// <param name="Daemon">The daemon.</param>
/// <param name="Role">What it is.</param>
/// <param name="Reason">Why, for messages.</param>
/// <param name="StoreRoot">The store whose set it belongs to, when its work folder is a set's logs folder.</param>
/// <param name="SetId">That set.</param>
/// <param name="Folder">The target folder in that set.</param>
/// <param name="ServedRoot">For a daemon serving a restored target: that target's restored root (its tree is what it serves).</param>
internal sealed record LazyPagesDaemonVerdict(RunningLazyPagesDaemon Daemon, LazyPagesDaemonRole Role, string Reason,
    string? StoreRoot = null, string? SetId = null, string? Folder = null, int? ServedRoot = null)
{
    /// <summary>
    /// True when a checkpoint now could miss pages it has not delivered yet: it serves a live target, may serve one,
    /// or serves a tree of unknown origin. A daemon holding no tree's memory (no userfaultfd) serves nothing.
    /// </summary>
    public bool BlocksCheckpoint => Role is LazyPagesDaemonRole.Serving or LazyPagesDaemonRole.Undecided
        || (Role == LazyPagesDaemonRole.Foreign && Daemon.HoldsUserfaultfd);

    /// <summary>
    /// Whether a checkpoint of the trees of <paramref name="targetRoots"/> could miss pages this daemon has not delivered:
    /// when it serves one of those trees' processes, or a tree it cannot name (then any checkpoint could). A daemon serving
    /// another workload's tree holds no checkpoint of these up.
    /// </summary>
    public bool BlocksCheckpointOf(IReadOnlyCollection<int> targetRoots)
    {
        if (!BlocksCheckpoint)
        {
            return false;
        }

        if (ServedRoot is not { } served)
        {
            return true;
        }

        var dumped = targetRoots.SelectMany(r => ProcStat.Tree(r)).ToHashSet();
        return ProcStat.Tree(served).Any(dumped.Contains);
    }

    /// <summary>One line naming the daemon, whose it is and why it is what it is.</summary>
    public string Describe() => $"criu lazy-pages (pid {Daemon.Pid})"
        + (SetId is null ? string.Empty : $" of set {SetId} target folder {Folder} in {StoreRoot}") + $" {Reason}";
}

/// <summary>
/// Lazy-pages daemons belong to their set: the pipeline starts each one with its work folder (socket, log and pid file)
/// in the set's logs folder (<c>STORE/journal/SET.logs/TARGET/</c>, see <see cref="TargetFolders.WorkDirectory"/>), so
/// the set's journal says whether it still serves a live target. Only such a daemon holds up a checkpoint; an orphan
/// (left by a killed lazy restore: it waits forever for a tree that is gone) is stopped by <c>rebootless resume</c>
/// through its pid file.
/// </summary>
internal static class LazyPagesDaemons
{
    /// <summary>Judges every daemon in <paramref name="daemons"/> (default: those running on this host).</summary>
    internal static IReadOnlyList<LazyPagesDaemonVerdict> Judge(IReadOnlyList<RunningLazyPagesDaemon>? daemons = null) =>
        [.. (daemons ?? CriuLazyPagesDaemon.FindRunningDaemons()).Select(Judge)];

    /// <summary>Judges one daemon from its work folder, its set's journal and the processes that run.</summary>
    internal static LazyPagesDaemonVerdict Judge(RunningLazyPagesDaemon daemon)
    {
        ArgumentNullException.ThrowIfNull(daemon);
        if (daemon.WorkDirectory is not { } work || OwnerOf(work) is not var (root, setId, folder))
        {
            return new(daemon, LazyPagesDaemonRole.Foreign, daemon.HoldsUserfaultfd
                ? "serves a lazily restored tree that no rebootless set records (its work folder is not a set's logs folder)"
                : "serves nothing and belongs to no rebootless set");
        }

        LazyPagesDaemonVerdict Verdict(LazyPagesDaemonRole role, string reason) => new(daemon, role, reason, root, setId, folder);
        JournalRecord? journal;
        try
        {
            journal = UpdateJournal.Open(root, setId)?.Record;
        }
        catch (Exception e) when (e is InvalidDataException or IOException or UnauthorizedAccessException or ArgumentException or JournalException)
        {
            return Verdict(LazyPagesDaemonRole.Undecided, $"cannot be judged: its set's journal is unreadable ({e.Message})");
        }

        if (journal is null)
        {
            return Verdict(LazyPagesDaemonRole.Orphan, "serves nothing: its set has no journal");
        }

        var target = journal.Targets.FirstOrDefault(t => t.Folder == folder);
        if (target is null)
        {
            return Verdict(LazyPagesDaemonRole.Orphan, "serves nothing: its set's journal has no target in that folder");
        }

        // By the pid the journal records (kept from the restoring record, so a tree adopted after an interrupted restore keeps its daemon).
        if (target.Phase == TargetPhase.Restored && target.LazyPagesDaemonPid == daemon.Pid)
        {
            // The restored root by pid and start time (an older journal has no start time: by pid alone).
            return target.RestoredPid is { } pid
                && (target.RestoredStartTime is { } start ? new ProcessIdentity(pid, start).IsAlive : ProcessIdentity.Of(pid) is not null)
                ? Verdict(LazyPagesDaemonRole.Serving, $"still delivers the memory of {target.Id}, restored lazily as pid {pid}") with { ServedRoot = pid }
                : Verdict(LazyPagesDaemonRole.Orphan, $"serves nothing: the tree of {target.Id} it served (pid {target.RestoredPid}) is gone");
        }

        if (target.Phase is TargetPhase.Restored or TargetPhase.Failed or TargetPhase.Resumed or TargetPhase.Ended)
        {
            return Verdict(LazyPagesDaemonRole.Orphan, target.Phase switch
            {
                TargetPhase.Restored => $"serves nothing: {target.Id} was restored without it",
                TargetPhase.Failed => $"serves nothing: {target.Id} failed or was refused",
                TargetPhase.Ended => $"serves nothing: {target.Id} ran and has exited since",
                _ => $"serves nothing: {target.Id} ran on in place (rolled back)",
            });
        }

        if (journal.State is JournalState.Resumed or JournalState.RolledBack)
        {
            return Verdict(LazyPagesDaemonRole.Orphan, $"serves nothing: its run ended ({journal.State.ToString().ToLowerInvariant()}) without restoring {target.Id} through it");
        }

        // The journal does not (yet) record a restore through it: an interrupted run. Without a tree's memory it serves nothing.
        return daemon.HoldsUserfaultfd
            ? Verdict(LazyPagesDaemonRole.Undecided, $"holds the memory of a tree the journal does not record as restored ({target.Id}, run {journal.State.ToString().ToLowerInvariant()}); `rebootless resume --store {root}` decides")
            : Verdict(LazyPagesDaemonRole.Orphan, $"serves nothing: no restore of {target.Id} ever reached it");
    }

    /// <summary>
    /// Stops the orphaned daemons of the store at <paramref name="storeRoot"/> (of one set, when given) through their
    /// pid files, each only while it is the criu lazy-pages process the pid file and its command line name. Returns those stopped.
    /// </summary>
    internal static async Task<IReadOnlyList<LazyPagesDaemonVerdict>> StopOrphansAsync(string storeRoot, string? setId = null,
        IReadOnlyList<RunningLazyPagesDaemon>? daemons = null)
    {
        var root = Normalize(storeRoot);
        var stopped = new List<LazyPagesDaemonVerdict>();
        foreach (var v in Judge(daemons))
        {
            if (v.Role == LazyPagesDaemonRole.Orphan && v.StoreRoot == root && (setId is null || v.SetId == setId)
                && await StopAsync(v.Daemon.WorkDirectory!, v.Daemon).ConfigureAwait(false))
            {
                stopped.Add(v);
            }
        }

        return stopped;
    }

    /// <summary>
    /// Stops the daemon whose pid file lies in <paramref name="workDirectory"/> (one target's work folder), if one still
    /// runs there. For the restore path, once it decided that target's tree does not run. Returns its pid, or null.
    /// </summary>
    internal static async Task<int?> StopForAsync(string workDirectory)
    {
        if (CriuLazyPagesDaemon.Find(workDirectory) is not { } daemon)
        {
            return null;
        }

        await daemon.DisposeAsync().ConfigureAwait(false);
        return daemon.Pid;
    }

    /// <summary>Stops the daemon of <paramref name="workDirectory"/> when it is still <paramref name="expected"/> (same pid and start).</summary>
    private static async Task<bool> StopAsync(string workDirectory, RunningLazyPagesDaemon expected)
    {
        if (CriuLazyPagesDaemon.Find(workDirectory) is not { } daemon || daemon.Pid != expected.Pid || daemon.StartTime != expected.StartTime)
        {
            return false;
        }

        await daemon.DisposeAsync().ConfigureAwait(false);
        return daemon.HasExited;
    }

    /// <summary>(store root, set id, target folder) of a work folder shaped <c>ROOT/journal/SET.logs/FOLDER</c>; null otherwise.</summary>
    internal static (string Root, string SetId, string Folder)? OwnerOf(string workDirectory)
    {
        var work = Normalize(workDirectory);
        var folder = Path.GetFileName(work);
        var logs = Path.GetDirectoryName(work);
        var journalDir = logs is null ? null : Path.GetDirectoryName(logs);
        var root = journalDir is null ? null : Path.GetDirectoryName(journalDir);
        var logsName = logs is null ? string.Empty : Path.GetFileName(logs);
        if (root is null || folder.Length == 0 || !logsName.EndsWith(".logs", StringComparison.Ordinal) || logsName.Length == ".logs".Length
            || Path.GetFileName(journalDir) != UpdateJournal.FolderName)
        {
            return null;
        }

        return (root, logsName[..^".logs".Length], folder);
    }

    private static string Normalize(string path) => Path.TrimEndingDirectorySeparator(Path.GetFullPath(path));
}
