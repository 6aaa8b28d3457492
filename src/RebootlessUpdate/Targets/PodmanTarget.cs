using RebootlessUpdate.Criu.Interop;

namespace RebootlessUpdate.Targets;

/// <summary>Options of a podman target. Immutable.</summary>
public sealed record PodmanOptions
{
    /// <summary>The podman binary. Default <c>podman</c> on PATH.</summary>
    public string Binary { get; init; } = "podman";

    /// <summary>Checkpoint established TCP connections. Default false.</summary>
    public bool TcpEstablished { get; init; }

    /// <summary>Checkpoint file locks. Default false.</summary>
    public bool FileLocks { get; init; }

    /// <summary>How long one podman checkpoint or restore may take. Default 5 minutes.</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromMinutes(5);
}

/// <summary>
/// A running podman container by name or id. Podman checkpoints and restores it (see <see cref="PodmanContainer"/>):
/// our CRIU dump would give back the processes but not podman's record of them.
/// </summary>
internal sealed class PodmanTarget(string nameOrId, PodmanOptions options) : UpdateTarget
{
    public override string Id => "podman:" + nameOrId;

    internal override ResolvedTarget Resolve()
    {
        PodmanState? state;
        try
        {
            state = new PodmanCli(options.Binary, options.Timeout).Inspect(nameOrId);
        }
        catch (Exception e) when (e is InvalidOperationException or InvalidDataException)
        {
            throw new TargetNotFoundException(Id, e.Message + "; `podman ps` lists the containers.", TargetProblem.ManagerUnavailable);
        }

        if (state is null)
        {
            throw new TargetNotFoundException(Id, $"podman knows no container {nameOrId}; `podman ps` lists the running ones.");
        }

        if (!PodmanContainer.IsFullId(state.Id))
        {
            throw new TargetNotFoundException(Id, $"podman gave '{state.Id}' as its id, which is not a full container id (64 hex digits).");
        }

        if (!state.Running || state.Pid <= 0)
        {
            throw new TargetNotFoundException(Id, $"podman shows it {state.Status}, not running; only a running container can be checkpointed.", TargetProblem.Inactive);
        }

        var settings = new TargetCriuSettings
        {
            TcpEstablished = options.TcpEstablished,
            FileLocks = options.FileLocks,
            // The OCI runtime has CRIU freeze the container's cgroup: one a killed checkpoint left frozen is thawed
            // by the rollback, as for a cgroup target.
            FreezeCgroup = Stages.ScopeHandback.CgroupOf(state.Pid) is { Length: > 1 } cgroup ? "/sys/fs/cgroup" + cgroup : null,
            Podman = new PodmanContainer { Id = state.Id, Name = state.Name, Binary = options.Binary, Timeout = options.Timeout },
        };
        return new ResolvedTarget(state.Pid, ProcStat.Tree(state.Pid).Count, settings);
    }
}
