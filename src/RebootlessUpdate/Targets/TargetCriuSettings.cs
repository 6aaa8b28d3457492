using RebootlessUpdate.Criu;

namespace RebootlessUpdate.Targets;

/// <summary>
/// The CRIU settings a target is dumped and restored with. Recorded in the
/// journal, so the restore after the jump uses exactly what the dump used.
/// </summary>
public sealed record TargetCriuSettings
{
    /// <summary>The tree's session or terminal belongs to a process outside it (<c>--shell-job</c>).</summary>
    public bool ShellJob { get; init; }

    /// <summary>Checkpoint established TCP connections.</summary>
    public bool TcpEstablished { get; init; }

    /// <summary>Checkpoint file locks.</summary>
    public bool FileLocks { get; init; }

    /// <summary>Allow unix sockets connected outside the tree.</summary>
    public bool ExternalUnixSockets { get; init; }

    /// <summary>Relink deleted-but-open files.</summary>
    public bool LinkRemap { get; init; }

    /// <summary>External resources (<c>--external</c>).</summary>
    public IReadOnlyList<string> External { get; init; } = [];

    /// <summary>How CRIU locks the network around TCP connections (default: CRIU's, iptables).</summary>
    public CriuNetworkLock? NetworkLock { get; init; }

    /// <summary>Freeze through this cgroup (a cgroup target's own).</summary>
    public string? FreezeCgroup { get; init; }

    /// <summary>External resources given at restore only (e.g. <c>mnt[KEY]:HOST_PATH</c> for a container's bind mounts). Default none.</summary>
    public IReadOnlyList<string> RestoreExternal { get; init; } = [];

    /// <summary>The root folder of the tree's mount namespace at restore (a container's rootfs, <c>--root</c>). Default none.</summary>
    public string? Root { get; init; }

    /// <summary>
    /// Restore its memory lazily: a <c>criu lazy-pages</c> daemon serves the pages on demand
    /// (userfaultfd) once the tree runs, instead of the restore copying them all while it is down.
    /// Chosen for the whole run (<see cref="Pipeline.UpdateContext.LazyRestore"/>) and kept here so
    /// the restore after the jump does what the update asked. Default false.
    /// </summary>
    public bool LazyPages { get; init; }

    /// <summary>
    /// With <see cref="LazyPages"/>: the daemon gets every page from the store through our page server, each chunk
    /// checked as it is first needed (see <see cref="Stages.RestoreStageOptions.ServePagesFromStore"/>). Chosen for the
    /// whole run (<see cref="Pipeline.UpdateContext.PagesFromStore"/>) and kept here for the restore after the jump.
    /// Default false.
    /// </summary>
    public bool PagesFromStore { get; init; }

    /// <summary>
    /// The systemd service the tree is (a service target's): before CRIU may end the tree systemd is told to take the
    /// end of its main process as nothing to act on, and once the tree is restored it becomes the unit's main process
    /// again (see <see cref="Stages.ServiceHandback"/>). Default none.
    /// </summary>
    public ServiceUnit? Service { get; init; }

    /// <summary>
    /// The runc container the tree is (a container target's, when runc runs it): runc's state of it is kept with the
    /// images and, once the tree is restored, written back naming the restored init (see
    /// <see cref="Stages.ContainerHandback"/>). Default none.
    /// </summary>
    public ContainerRuntime? Container { get; init; }

    /// <summary>
    /// The systemd scope the tree runs in (a container's, when runc's systemd cgroup driver made it; a login session's,
    /// <c>session-N.scope</c>, for a tree a user left running; any other transient scope): once the tree
    /// is restored into the scope's cgroup, systemd holds it in that scope again (see <see cref="Stages.ScopeHandback"/>).
    /// Default none.
    /// </summary>
    public ScopeUnit? Scope { get; init; }

    /// <summary>
    /// The podman container the target is: podman dumps it (into the set) and restores it, not our CRIU requests (see
    /// <see cref="Stages.PodmanHandover"/>). Default none.
    /// </summary>
    public PodmanContainer? Podman { get; init; }

    internal CriuDumpOptions ToDump(int pid, string imagesDirectory, string workDirectory) => new()
    {
        ImagesDirectory = imagesDirectory,
        WorkDirectory = workDirectory,
        Pid = pid,
        ShellJob = ShellJob,
        TcpEstablished = TcpEstablished,
        FileLocks = FileLocks,
        ExternalUnixSockets = ExternalUnixSockets,
        LinkRemap = LinkRemap,
        External = External,
        NetworkLock = NetworkLock,
        FreezeCgroup = FreezeCgroup,
    };

    internal CriuRestoreOptions ToRestore(string imagesDirectory, string workDirectory) => new()
    {
        ImagesDirectory = imagesDirectory,
        WorkDirectory = workDirectory,
        ShellJob = ShellJob,
        TcpEstablished = TcpEstablished,
        FileLocks = FileLocks,
        ExternalUnixSockets = ExternalUnixSockets,
        LinkRemap = LinkRemap,
        External = RestoreExternal.Count > 0 ? RestoreExternal : External,
        Root = Root,
        NetworkLock = NetworkLock,
    };
}
