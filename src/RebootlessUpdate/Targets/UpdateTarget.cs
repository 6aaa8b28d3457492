using System.Globalization;
using RebootlessUpdate.Criu.Interop;

namespace RebootlessUpdate.Targets;

/// <summary>
/// Something to checkpoint and restore: a process tree, a cgroup's processes, a container, a systemd service.
/// Each target knows how to find its processes and which CRIU settings it needs.
/// Create targets with <see cref="ProcessTree"/>, <see cref="Cgroup"/>, <see cref="Container"/>, <see cref="Service"/> or <see cref="Parse"/>.
/// </summary>
public abstract class UpdateTarget
{
    private protected UpdateTarget()
    {
    }

    /// <summary>The target's id, e.g. <c>pid:1234</c> or <c>cgroup:/sys/fs/cgroup/freezer/app</c>.</summary>
    public abstract string Id { get; }

    /// <summary>The process tree rooted at <paramref name="pid"/>.</summary>
    /// <param name="pid">The tree's root.</param>
    /// <param name="options">CRIU settings; default: detected (shell job when the session or terminal comes from outside).</param>
    public static UpdateTarget ProcessTree(int pid, ProcessTreeOptions? options = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(pid);
        return new ProcessTreeTarget(pid, options ?? new ProcessTreeOptions());
    }

    /// <summary>
    /// Every process of a cgroup (a v1 freezer cgroup folder, e.g. <c>/sys/fs/cgroup/freezer/app</c>,
    /// or a v2 cgroup folder). CRIU freezes through the cgroup; its processes must form one tree.
    /// </summary>
    public static UpdateTarget Cgroup(string path, ProcessTreeOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        return new CgroupTarget(Path.GetFullPath(path), options ?? new ProcessTreeOptions());
    }

    /// <summary>
    /// A running runc (or crun) container by id: its init's tree, with the container's host
    /// mounts as CRIU externals and its rootfs as the restore root.
    /// </summary>
    /// <param name="id">The container id (<c>runc list</c>).</param>
    /// <param name="options">Runtime binary and state folder; default <c>runc</c>.</param>
    public static UpdateTarget Container(string id, ContainerOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(id);
        return new ContainerTarget(id, options ?? new ContainerOptions());
    }

    /// <summary>
    /// A running systemd service by unit name (<c>nginx</c> or <c>nginx.service</c>): its main
    /// process's tree, every process of which must be in the unit's control group, frozen
    /// through that cgroup when it has a freezer. Found with <c>systemctl show</c>. Restored
    /// into the same cgroup; systemd does not supervise the restored processes (see the
    /// README).
    /// </summary>
    /// <param name="unit">The unit name; <c>.service</c> is added when it has no type.</param>
    /// <param name="options">CRIU settings; default: detected.</param>
    /// <param name="systemd">How to ask systemd; default: the system manager through <c>systemctl</c>.</param>
    /// <exception cref="ArgumentException">Not a service unit name.</exception>
    public static UpdateTarget Service(string unit, ProcessTreeOptions? options = null, SystemdServiceOptions? systemd = null) =>
        new SystemdServiceTarget(unit, options ?? new ProcessTreeOptions(), systemd ?? new SystemdServiceOptions());

    /// <summary>
    /// A running podman container by name or id. Podman itself checkpoints it into the set and restores it after the
    /// jump (see <see cref="PodmanContainer"/>), so podman knows the same container id running again.
    /// </summary>
    /// <param name="nameOrId">The container's name or id (<c>podman ps</c>).</param>
    /// <param name="options">The podman binary and its checkpoint options; default <c>podman</c>.</param>
    public static UpdateTarget Podman(string nameOrId, PodmanOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(nameOrId);
        return new PodmanTarget(nameOrId, options ?? new PodmanOptions());
    }

    /// <summary>Parses <c>pid:N</c>, a bare pid, <c>cgroup:PATH</c>, <c>container:ID</c>, <c>podman:NAME</c> or <c>service:UNIT</c>.</summary>
    /// <exception cref="FormatException">Not a target specification.</exception>
    public static UpdateTarget Parse(string specification)
    {
        ArgumentNullException.ThrowIfNull(specification);
        var s = specification.Trim();
        var pidText = s.StartsWith("pid:", StringComparison.Ordinal) ? s[4..] : s;
        if (int.TryParse(pidText, NumberStyles.None, CultureInfo.InvariantCulture, out var pid) && pid > 0)
        {
            return ProcessTree(pid);
        }

        if (s.StartsWith("cgroup:", StringComparison.Ordinal) && s.Length > 7)
        {
            return Cgroup(s[7..]);
        }

        if (s.StartsWith("container:", StringComparison.Ordinal) && s.Length > 10)
        {
            return Container(s[10..]);
        }

        if (s.StartsWith("podman:", StringComparison.Ordinal) && s.Length > 7)
        {
            return Podman(s[7..]);
        }

        if (s.StartsWith("service:", StringComparison.Ordinal) && s.Length > 8)
        {
            try
            {
                return Service(s[8..]);
            }
            catch (ArgumentException e)
            {
                throw new FormatException(e.Message, e);
            }
        }

        throw new FormatException($"'{specification}' is not a target: use pid:N (or N), cgroup:PATH, container:ID, podman:NAME or service:UNIT.");
    }

    /// <summary>Finds the target's root pid now and the CRIU settings for it.</summary>
    /// <exception cref="TargetNotFoundException">The target does not exist or cannot be checkpointed as asked.</exception>
    internal abstract ResolvedTarget Resolve();

    /// <inheritdoc />
    public override string ToString() => Id;
}

/// <summary>A target as found on the running system.</summary>
/// <param name="RootPid">The root of the tree CRIU dumps.</param>
/// <param name="Processes">Processes in the tree.</param>
/// <param name="Settings">CRIU settings.</param>
internal sealed record ResolvedTarget(int RootPid, int Processes, TargetCriuSettings Settings);

/// <summary>CRIU settings of a process-tree or cgroup target. Immutable.</summary>
public sealed record ProcessTreeOptions
{
    /// <summary>Shell job: null (default) detects it (the root's session or controlling terminal is outside the tree).</summary>
    public bool? ShellJob { get; init; }

    /// <summary>Checkpoint established TCP connections. Default false.</summary>
    public bool TcpEstablished { get; init; }

    /// <summary>Checkpoint file locks. Default false.</summary>
    public bool FileLocks { get; init; }

    /// <summary>Allow unix sockets connected outside the tree. Default false.</summary>
    public bool ExternalUnixSockets { get; init; }

    /// <summary>Relink deleted-but-open files. Default false.</summary>
    public bool LinkRemap { get; init; }

    /// <summary>External resources (<c>--external</c>). Default none.</summary>
    public IReadOnlyList<string> External { get; init; } = [];

    /// <summary>How CRIU locks the network while it dumps TCP connections. Default: CRIU's own default (iptables).</summary>
    public RebootlessUpdate.Criu.CriuNetworkLock? NetworkLock { get; init; }

    /// <summary>The settings of the tree rooted at <paramref name="root"/>, with the systemd scope it runs in (a login session's, say), if any.</summary>
    internal TargetCriuSettings ToSettings(int root, bool detectedShellJob, string? freezeCgroup) => new()
    {
        Scope = Stages.ScopeHandback.Of(root),
        ShellJob = ShellJob ?? detectedShellJob,
        TcpEstablished = TcpEstablished,
        FileLocks = FileLocks,
        ExternalUnixSockets = ExternalUnixSockets,
        LinkRemap = LinkRemap,
        External = External,
        NetworkLock = NetworkLock,
        FreezeCgroup = freezeCgroup,
    };
}

/// <summary>The process tree rooted at a pid.</summary>
internal sealed class ProcessTreeTarget(int pid, ProcessTreeOptions options) : UpdateTarget
{
    public int Pid => pid;

    public override string Id => "pid:" + pid.ToString(CultureInfo.InvariantCulture);

    internal override ResolvedTarget Resolve()
    {
        var stat = ProcStat.Read(pid);
        if (stat is null || stat.State is 'Z' or 'X')
        {
            throw new TargetNotFoundException(Id, $"there is no running process {pid} (ps -p {pid} shows nothing); name a running process tree's root.");
        }

        if (stat.IsKernelThread)
        {
            throw new TargetNotFoundException(Id, $"{pid} is a kernel thread: it has no user memory and CRIU cannot checkpoint it; name the root of a workload's process tree.");
        }

        if (ProcStat.ThreadGroupOf(pid) is { } process && process != pid)
        {
            throw new TargetNotFoundException(Id, $"{pid} is a thread of process {process}, not a process; name the process ({process}) or the root of its tree.");
        }

        if (pid == Environment.ProcessId)
        {
            throw new TargetNotFoundException(Id, "that is this process: it cannot checkpoint itself.");
        }

        if (pid == 1)
        {
            throw new TargetNotFoundException(Id, "pid 1 (init) cannot be checkpointed; name the root of a workload's tree.");
        }

        var tree = ProcStat.Tree(pid);
        if (tree.Contains(Environment.ProcessId))
        {
            throw new TargetNotFoundException(Id, $"this process runs inside the tree of {pid}: it cannot checkpoint its own ancestors.");
        }

        return new ResolvedTarget(pid, tree.Count, options.ToSettings(pid, DetectShellJob(stat), null));
    }

    /// <summary>CRIU needs --shell-job when the tree's session or controlling terminal belongs to a process outside it.</summary>
    internal static bool DetectShellJob(ProcStat root) => root.Session != root.Pid || root.TtyNumber != 0;
}

/// <summary>Every process of a cgroup, dumped as one tree and frozen through the cgroup.</summary>
internal sealed class CgroupTarget(string path, ProcessTreeOptions options) : UpdateTarget
{
    public override string Id => "cgroup:" + path;

    internal override ResolvedTarget Resolve()
    {
        if (!File.Exists(Path.Combine(path, "cgroup.procs")))
        {
            throw new TargetNotFoundException(Id, $"{path} is not a cgroup (no cgroup.procs); give the cgroup's folder, e.g. /sys/fs/cgroup/freezer/NAME.");
        }

        var v1 = File.Exists(Path.Combine(path, "freezer.state"));
        var v2 = File.Exists(Path.Combine(path, "cgroup.freeze"));
        if (!v1 && !v2)
        {
            throw new TargetNotFoundException(Id, $"{path} has no freezer (neither freezer.state nor cgroup.freeze); CRIU freezes a cgroup target through it: use the freezer hierarchy (v1) or a cgroup2 folder.");
        }

        return ResolveTree(Id, path, options, freezeCgroup: path);
    }

    /// <summary>
    /// The one process tree of the cgroup at <paramref name="path"/>: refused when the cgroup is
    /// empty, holds this process or several trees, or when the tree reaches outside it.
    /// </summary>
    internal static ResolvedTarget ResolveTree(string id, string path, ProcessTreeOptions options, string? freezeCgroup)
    {
        var procsFile = Path.Combine(path, "cgroup.procs");
        var pids = ReadProcs(procsFile);
        if (pids.Count == 0)
        {
            throw new TargetNotFoundException(id, $"cgroup {path} has no processes; nothing to checkpoint.");
        }

        if (pids.Contains(Environment.ProcessId))
        {
            throw new TargetNotFoundException(id, $"this process is in cgroup {path}: it cannot checkpoint itself.");
        }

        var roots = pids.Where(p => ProcStat.Read(p) is { } s && !pids.Contains(s.ParentPid)).Order().ToList();
        if (roots.Count != 1)
        {
            throw new TargetNotFoundException(id,
                $"cgroup {path} holds {roots.Count} process trees (roots {string.Join(", ", roots)}); CRIU dumps one tree per request: "
                + "start the cgroup's processes under one parent, or name each tree as its own pid target.");
        }

        var root = roots[0];
        var stat = ProcStat.Read(root) ?? throw new TargetNotFoundException(id, $"process {root} of cgroup {path} exited while it was inspected; try again.");
        var tree = ProcStat.Tree(root);
        // A live workload forks all the time: a child born after cgroup.procs was read is in the
        // tree but not in that list. Read the list again after the tree, and count only processes
        // that still exist, so only a real outsider is refused.
        pids.UnionWith(ReadProcs(procsFile));
        var outside = tree.Where(p => !pids.Contains(p) && ProcessIdentity.Of(p) is not null).ToList();
        if (outside.Count > 0)
        {
            throw new TargetNotFoundException(id, $"the tree of {root} in cgroup {path} has processes outside the cgroup ({string.Join(", ", outside.Take(5))}); move them in or checkpoint the tree as a pid target.");
        }

        return new ResolvedTarget(root, tree.Count, options.ToSettings(root, ProcessTreeTarget.DetectShellJob(stat), freezeCgroup));
    }

    private static HashSet<int> ReadProcs(string procsFile) =>
        File.ReadAllLines(procsFile).Where(l => l.Length > 0).Select(l => int.Parse(l, CultureInfo.InvariantCulture)).ToHashSet();

    /// <summary>Thaws the cgroup when a killed CRIU left it frozen.</summary>
    internal static void Thaw(string cgroup)
    {
        var v1 = Path.Combine(cgroup, "freezer.state");
        var v2 = Path.Combine(cgroup, "cgroup.freeze");
        if (File.Exists(v1) && File.ReadAllText(v1).Trim() != "THAWED")
        {
            File.WriteAllText(v1, "THAWED");
        }
        else if (File.Exists(v2) && File.ReadAllText(v2).Trim() == "1")
        {
            File.WriteAllText(v2, "0");
        }
    }
}

/// <summary>A target read back from a journal (after the jump): it only knows how to be restored.</summary>
internal sealed class JournaledTarget(string id, TargetCriuSettings settings) : UpdateTarget
{
    public override string Id => id;

    public TargetCriuSettings Settings => settings;

    internal override ResolvedTarget Resolve() =>
        throw new InvalidOperationException($"target {id} comes from a journal: it is restored, not dumped.");
}

/// <summary>A target does not exist or cannot be checkpointed as asked.</summary>
public sealed class TargetNotFoundException : Exception
{
    /// <summary>Creates the exception for <paramref name="target"/>.</summary>
    public TargetNotFoundException(string target, string reason)
        : this(target, reason, TargetProblem.NotFound)
    {
    }

    /// <summary>Creates the exception for <paramref name="target"/>, saying what kind of problem it is.</summary>
    public TargetNotFoundException(string target, string reason, TargetProblem problem)
        : base($"target {target}: {reason}")
    {
        Target = target;
        Problem = problem;
    }

    /// <summary>Creates the exception.</summary>
    public TargetNotFoundException()
        : this("?", "not found")
    {
    }

    /// <summary>Creates the exception.</summary>
    public TargetNotFoundException(string message, Exception innerException)
        : base(message, innerException)
    {
        Target = "?";
    }

    /// <summary>The target.</summary>
    public string Target { get; }

    /// <summary>What kind of problem: the tool gives each its own exit code.</summary>
    public TargetProblem Problem { get; }
}

/// <summary>Why a target cannot be checkpointed.</summary>
public enum TargetProblem
{
    /// <summary>It does not exist, or cannot be checkpointed as asked.</summary>
    NotFound,

    /// <summary>It exists but is not running (e.g. an inactive systemd service).</summary>
    Inactive,

    /// <summary>The manager to ask about it cannot be reached (e.g. systemd is not running).</summary>
    ManagerUnavailable,
}
