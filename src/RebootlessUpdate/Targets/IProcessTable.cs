using RebootlessUpdate.Criu.Interop;

namespace RebootlessUpdate.Targets;

/// <summary>
/// What the stages ask the host about processes: who runs, who CRIU holds, which processes form a tree, who holds a
/// folder open. The stages reach the host's process table only through this, so their decisions can be unit tested
/// against a scripted one; <see cref="HostProcessTable"/> reads <c>/proc</c>.
/// </summary>
internal interface IProcessTable
{
    /// <summary>The identity of the running process <paramref name="pid"/>, or null when there is none (or it is a zombie).</summary>
    ProcessIdentity? IdentityOf(int pid);

    /// <summary>True while this very process runs (not a zombie, not a reused pid).</summary>
    bool IsAlive(ProcessIdentity process);

    /// <summary>True while this very process is traced by another (CRIU holds a tree it dumps or restores this way).</summary>
    bool IsTraced(ProcessIdentity process);

    /// <summary>The pids of the tree rooted at <paramref name="root"/>, the root first.</summary>
    IReadOnlyList<int> Tree(int root);

    /// <summary>True when <paramref name="pid"/> is pid 1 of a PID namespace below ours.</summary>
    bool IsNamespaceInit(int pid);

    /// <summary>The processes that hold <paramref name="directory"/> or a file in it open (their cwd included).</summary>
    IReadOnlyList<int> HoldersOf(string directory);

    /// <summary>Stops, then kills, the tree under <paramref name="root"/> (this very process, not a reused pid).</summary>
    void KillTree(ProcessIdentity root);
}

/// <summary>The host's process table, read from <c>/proc</c>.</summary>
internal sealed class HostProcessTable : IProcessTable
{
    /// <summary>The one instance.</summary>
    public static HostProcessTable Instance { get; } = new();

    private HostProcessTable()
    {
    }

    public ProcessIdentity? IdentityOf(int pid) => ProcessIdentity.Of(pid);

    public bool IsAlive(ProcessIdentity process) => process.IsAlive;

    public bool IsTraced(ProcessIdentity process) => process.IsTraced;

    public IReadOnlyList<int> Tree(int root) => ProcStat.Tree(root);

    public bool IsNamespaceInit(int pid) => ProcStat.IsNamespaceInit(pid);

    public IReadOnlyList<int> HoldersOf(string directory) => Stages.InterruptedRestore.Holders(directory);

    public void KillTree(ProcessIdentity root) => TreeKill.Kill(root);
}
