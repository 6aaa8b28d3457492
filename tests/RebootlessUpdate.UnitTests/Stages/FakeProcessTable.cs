using RebootlessUpdate.Targets;

namespace RebootlessUpdate.UnitTests.Stages;

/// <summary>
/// A scripted process table for stage unit tests: processes start and exit when the test says, a tree is what the
/// test's parent links say, and a process stays traced (held by a "CRIU") for as many looks as the test gives it.
/// </summary>
internal sealed class FakeProcessTable : IProcessTable
{
    private readonly Dictionary<int, (ulong Start, int Parent)> _running = [];
    private readonly Dictionary<int, int> _tracedLooks = [];

    /// <summary>Processes that are pid 1 of their own PID namespace.</summary>
    public HashSet<int> NamespaceInits { get; } = [];

    /// <summary>Who holds a folder open, by folder.</summary>
    public Dictionary<string, List<int>> Holders { get; } = [];

    /// <summary>How many times each question was asked (a stage that must not look, did not).</summary>
    public int Looks { get; private set; }

    /// <summary>Starts <paramref name="pid"/> (replacing whatever had that pid: a reused pid has a new start time).</summary>
    public ProcessIdentity Start(int pid, ulong startTime = 1000, int parent = 1)
    {
        _running[pid] = (startTime, parent);
        return new ProcessIdentity(pid, startTime);
    }

    /// <summary>Ends <paramref name="pid"/>.</summary>
    public void Exit(int pid) => _running.Remove(pid);

    /// <summary>The roots <see cref="KillTree"/> was asked to end (they exit).</summary>
    public List<int> Killed { get; } = [];

    public void KillTree(ProcessIdentity root)
    {
        Killed.Add(root.Pid);
        Exit(root.Pid);
    }

    /// <summary><paramref name="process"/> is traced for the next <paramref name="looks"/> questions about it.</summary>
    public void TraceFor(ProcessIdentity process, int looks) => _tracedLooks[process.Pid] = looks;

    public ProcessIdentity? IdentityOf(int pid)
    {
        Looks++;
        return _running.TryGetValue(pid, out var p) ? new ProcessIdentity(pid, p.Start) : null;
    }

    public bool IsAlive(ProcessIdentity process)
    {
        Looks++;
        return _running.TryGetValue(process.Pid, out var p) && p.Start == process.StartTime;
    }

    public bool IsTraced(ProcessIdentity process)
    {
        if (!IsAlive(process) || !_tracedLooks.TryGetValue(process.Pid, out var left) || left <= 0)
        {
            return false;
        }

        _tracedLooks[process.Pid] = left - 1;
        return true;
    }

    public IReadOnlyList<int> Tree(int root)
    {
        Looks++;
        var tree = new List<int>();
        var queue = new Queue<int>([root]);
        while (queue.TryDequeue(out var pid))
        {
            if (_running.ContainsKey(pid))
            {
                tree.Add(pid);
                foreach (var child in _running.Where(kv => kv.Value.Parent == pid && kv.Key != pid).Select(kv => kv.Key))
                {
                    queue.Enqueue(child);
                }
            }
        }

        return tree;
    }

    public bool IsNamespaceInit(int pid) => NamespaceInits.Contains(pid);

    public IReadOnlyList<int> HoldersOf(string directory) => Holders.TryGetValue(directory, out var pids) ? [.. pids] : [];
}

/// <summary>A cgroup freezer that records what it was asked to thaw, or fails as the test says.</summary>
internal sealed class FakeCgroupFreezer : ICgroupFreezer
{
    /// <summary>The cgroups thawed, in order.</summary>
    public List<string> Thawed { get; } = [];

    /// <summary>When set, every thaw fails with it.</summary>
    public Exception? Failure { get; set; }

    public void Thaw(string cgroup)
    {
        if (Failure is not null)
        {
            throw Failure;
        }

        Thawed.Add(cgroup);
    }
}
