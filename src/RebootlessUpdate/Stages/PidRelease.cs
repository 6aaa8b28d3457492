using System.Globalization;
using System.Text;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Criu.Interop;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.Stages;

/// <summary>
/// Before a tree is restored into the PID namespace it was dumped from: the ids CRIU will ask the kernel for
/// (every pid and thread id of <c>pstree.img</c>, and the process groups and sessions it must recreate) and
/// whether anything still uses them. The kernel keeps an id taken while any task has it as pid, thread id,
/// process group or session (a zombie included), and CRIU then fails with "Can't fork for N: File exists".
/// </summary>
internal static class PidRelease
{
    private static readonly TimeSpan PollInterval = TimeSpan.FromMilliseconds(20);

    /// <summary>What a needed id is to the dumped tree.</summary>
    internal enum Role
    {
        Process,
        Thread,
        ProcessGroup,
        Session,
    }

    /// <summary>An id CRIU will create, and what it is to the tree.</summary>
    internal readonly record struct NeededId(int Id, Role Role)
    {
        public override string ToString() => $"pid {Id.ToString(CultureInfo.InvariantCulture)} ({Role switch
        {
            Role.Process => "a process of the dumped tree",
            Role.Thread => "a thread of the dumped tree",
            Role.ProcessGroup => "the dumped tree's process group",
            _ => "the dumped tree's session",
        }})";
    }

    /// <summary>A live (or zombie) task that still uses a needed id, and how.</summary>
    internal sealed record Holder(NeededId Needed, ProcStat Task, string How)
    {
        public override string ToString() =>
            $"{Needed} is still used by pid {Task.Pid.ToString(CultureInfo.InvariantCulture)} '{Task.Comm}'{How}"
            + (Task.State is 'Z' or 'X' ? $" (a zombie its parent {Task.ParentPid.ToString(CultureInfo.InvariantCulture)} has not reaped yet)" : string.Empty);
    }

    /// <summary>
    /// The ids a restore of <paramref name="tree"/> creates. With <paramref name="shellJob"/> and a root that leads no
    /// session, CRIU moves the root's old process group and session to its own (criu/pstree.c,
    /// prepare_pstree_for_shell_job): those are inherited, not created. A process group equal to CRIU's own
    /// (<paramref name="restorerProcessGroup"/>: a swrk worker shares the caller's) is inherited too; any other group
    /// or session that no process of the tree leads gets a helper task with that pid (prepare_pstree_ids).
    /// </summary>
    internal static IReadOnlyList<NeededId> Needed(IReadOnlyList<CriuProcessTreeEntry> tree, bool shellJob, int restorerProcessGroup)
    {
        var root = tree[0];
        var migrated = shellJob && root.Session != root.Pid;
        var pids = tree.Select(e => e.Pid).ToHashSet();
        var needed = new List<NeededId>();
        var seen = new HashSet<int>();
        void Add(int id, Role role)
        {
            if (id > 0 && seen.Add(id))
            {
                needed.Add(new NeededId(id, role));
            }
        }

        foreach (var e in tree)
        {
            Add(e.Pid, Role.Process);
        }

        foreach (var e in tree)
        {
            foreach (var tid in e.Threads)
            {
                Add(tid, Role.Thread);
            }
        }

        foreach (var e in tree)
        {
            if (!pids.Contains(e.Session) && !(migrated && e.Session == root.Session))
            {
                Add(e.Session, Role.Session);
            }

            if (!pids.Contains(e.ProcessGroup) && !(migrated && e.ProcessGroup == root.ProcessGroup) && e.ProcessGroup != restorerProcessGroup)
            {
                Add(e.ProcessGroup, Role.ProcessGroup);
            }
        }

        return needed;
    }

    /// <summary>Every task under <paramref name="procRoot"/> that still uses one of <paramref name="needed"/>.</summary>
    internal static IReadOnlyList<Holder> Holders(IReadOnlyList<NeededId> needed, string procRoot = "/proc")
    {
        var holders = new List<Holder>();
        foreach (var n in needed)
        {
            // /proc/N resolves thread ids too, though only thread-group leaders are listed.
            if (ProcStat.Read(n.Id, procRoot) is { } task)
            {
                var group = ProcStat.ThreadGroupOf(n.Id, procRoot) ?? n.Id;
                holders.Add(group == n.Id || ProcStat.Read(group, procRoot) is not { } leader
                    ? new Holder(n, task, string.Empty)
                    : new Holder(n, leader, $" (its thread {n.Id.ToString(CultureInfo.InvariantCulture)})"));
            }
        }

        if (holders.Count > 0)
        {
            return holders; // cheap first: a full scan of /proc only once every pid itself is free
        }

        var wanted = needed.ToDictionary(n => n.Id);
        foreach (var task in ProcStat.All(procRoot))
        {
            var group = wanted.TryGetValue(task.ProcessGroup, out var g) ? g : (NeededId?)null;
            var session = wanted.TryGetValue(task.Session, out var s) ? s : (NeededId?)null;
            if (group is { } both && session is not null && task.ProcessGroup == task.Session)
            {
                holders.Add(new Holder(both, task, " as its process group and session"));
                continue;
            }

            if (group is { } pg)
            {
                holders.Add(new Holder(pg, task, " as its process group"));
            }

            if (session is { } sid)
            {
                holders.Add(new Holder(sid, task, " as its session"));
            }
        }

        return holders;
    }

    /// <summary>
    /// Waits until no task uses an id a restore of <paramref name="tree"/> needs, at most
    /// <paramref name="bound"/>; then throws <see cref="PidsInUseException"/> naming each id and its holder.
    /// Returns at once for a tree that brings its own PID namespace (its root was pid 1 there).
    /// </summary>
    internal static async Task WaitAsync(IReadOnlyList<CriuProcessTreeEntry> tree, bool shellJob, TimeSpan bound, TimeProvider time,
        CancellationToken cancellationToken, string procRoot = "/proc")
    {
        if (tree[0].Pid == 1)
        {
            return; // CRIU recreates the tree's PID namespace: nothing of this one is needed
        }

        // A swrk worker is our child and shares our process group (a criu service has its own: then this waits for more than needed).
        var own = ProcStat.Read(Environment.ProcessId)?.ProcessGroup ?? 0;
        var needed = Needed(tree, shellJob, own);
        var start = time.GetTimestamp();
        while (true)
        {
            var holders = Holders(needed, procRoot);
            if (holders.Count == 0)
            {
                return;
            }

            var waited = time.GetElapsedTime(start);
            if (waited >= bound)
            {
                throw new PidsInUseException(Describe(holders, waited), [.. holders.Select(h => h.Needed.Id).Distinct()]);
            }

            await Task.Delay(PollInterval, time, cancellationToken).ConfigureAwait(false);
        }
    }

    private static string Describe(IReadOnlyList<Holder> holders, TimeSpan waited)
    {
        const int Most = 5;
        var sb = new StringBuilder();
        sb.Append(CultureInfo.InvariantCulture, $"after waiting {waited.TotalSeconds:0.0} s, ids the restored tree needs are still in use on this host: ");
        sb.AppendJoin("; ", holders.Take(Most));
        if (holders.Count > Most)
        {
            sb.Append(CultureInfo.InvariantCulture, $"; and {holders.Count - Most} more");
        }

        sb.Append(". Nothing was restored (CRIU would fail with \"Can't fork for N: File exists\"): end what holds them, or wait until its parent reaps it, and restore again");
        return sb.ToString();
    }
}

/// <summary>
/// A restore into the PID namespace a tree was dumped from was not attempted: ids it needs (pids, thread ids,
/// process groups or sessions) stayed in use for the whole bounded wait. The message names each and what holds it.
/// </summary>
public sealed class PidsInUseException : InvalidOperationException
{
    /// <summary>Creates the exception.</summary>
    public PidsInUseException()
    {
        Ids = [];
    }

    /// <summary>Creates the exception.</summary>
    public PidsInUseException(string message)
        : base(message)
    {
        Ids = [];
    }

    /// <summary>Creates the exception.</summary>
    public PidsInUseException(string message, Exception innerException)
        : base(message, innerException)
    {
        Ids = [];
    }

    internal PidsInUseException(string message, IReadOnlyList<int> ids)
        : base(message)
    {
        Ids = ids;
    }

    /// <summary>The ids still in use when the wait ended.</summary>
    public IReadOnlyList<int> Ids { get; }
}
