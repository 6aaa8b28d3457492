using System.Globalization;
using System.Text.Json;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Criu.Interop;
using RebootlessUpdate.Images;
using RebootlessUpdate.Processes;

namespace RebootlessUpdate.Targets;

/// <summary>Options of a container target. Immutable.</summary>
public sealed record ContainerOptions
{
    /// <summary>The OCI runtime binary (runc, or crun which answers <c>state</c> the same way). Default <c>runc</c> on PATH.</summary>
    public string Runtime { get; init; } = "runc";

    /// <summary>The runtime's state folder (<c>--root</c>); default: the runtime's own (<c>/run/runc</c>).</summary>
    public string? RuntimeRoot { get; init; }

    /// <summary>Checkpoint established TCP connections. Default false.</summary>
    public bool TcpEstablished { get; init; }

    /// <summary>Checkpoint file locks. Default false.</summary>
    public bool FileLocks { get; init; }

    /// <summary>How long <c>runtime state</c> may take. Default 10 s.</summary>
    public TimeSpan StateTimeout { get; init; } = TimeSpan.FromSeconds(10);
}

/// <summary>
/// A runc/crun container by id. <c>runtime state ID</c> gives its init pid and rootfs; every
/// mount of its mount namespace that comes from the host (bind mounts, cgroup v1 mounts)
/// becomes a CRIU external mount, mapped back to the same host path at restore, with the
/// rootfs as the restore root. CRIU restores it with those options; runc's own state of it is
/// kept with the images and written back naming the restored init, so runc knows the container
/// again (see <see cref="Stages.ContainerHandback"/>). crun's state is not carried.
/// </summary>
internal sealed class ContainerTarget(string id, ContainerOptions options) : UpdateTarget
{
    public override string Id => "container:" + id;

    internal override ResolvedTarget Resolve()
    {
        var (pid, rootfs) = State();
        var stat = ProcStat.Read(pid) ?? throw new TargetNotFoundException(Id, $"its init process {pid} exited while it was inspected; try again.");
        var (dump, restore) = ExternalMounts(pid);
        var settings = new TargetCriuSettings
        {
            ShellJob = ProcessTreeTarget.DetectShellJob(stat),
            TcpEstablished = options.TcpEstablished,
            FileLocks = options.FileLocks,
            External = dump,
            RestoreExternal = restore,
            Root = rootfs,
            // A container has its own network namespace; this host has no iptables, nftables works.
            NetworkLock = CriuNetworkLock.Nftables,
            Container = RuncState(),
            Scope = Stages.ScopeHandback.Of(pid),
        };
        return new ResolvedTarget(pid, ProcStat.Tree(pid).Count, settings);
    }

    /// <summary>runc's state is carried across the checkpoint; crun keeps its own, in another form, which is not.</summary>
    private ContainerRuntime? RuncState() => Path.GetFileName(options.Runtime) == "runc"
        ? new ContainerRuntime { Id = id, StateRoot = options.RuntimeRoot ?? "/run/runc" }
        : null;

    private (int Pid, string Rootfs) State()
    {
        var args = new List<string>();
        if (options.RuntimeRoot is { } root)
        {
            args.AddRange(["--root", root]);
        }

        args.AddRange(["state", id]);
        ToolRun run;
        try
        {
            run = ProcessRunner.Run(options.Runtime, args, options.StateTimeout);
        }
        catch (ToolNotStartedException e)
        {
            throw new TargetNotFoundException(Id, $"the container runtime {options.Runtime} cannot be run ({e.InnerException!.Message}); install runc (or crun) or give its path.");
        }

        if (run.TimedOut)
        {
            throw new TargetNotFoundException(Id, $"{options.Runtime} state {id} did not answer within {options.StateTimeout.TotalSeconds:0} s.");
        }

        if (run.ExitCode != 0)
        {
            throw new TargetNotFoundException(Id, $"{options.Runtime} does not know it ({run.Stderr.Trim()}); `{options.Runtime} list` shows the containers.");
        }

        using var json = JsonDocument.Parse(run.Stdout);
        var status = json.RootElement.GetProperty("status").GetString();
        if (status != "running")
        {
            throw new TargetNotFoundException(Id, $"it is {status}, not running; only a running container can be checkpointed.");
        }

        return (json.RootElement.GetProperty("pid").GetInt32(), json.RootElement.GetProperty("rootfs").GetString()
            ?? throw new TargetNotFoundException(Id, $"{options.Runtime} state names no rootfs."));
    }

    /// <summary>
    /// The container's mounts whose filesystem is also mounted on the host (its own proc,
    /// sysfs, tmpfs and devpts are not): CRIU cannot dump those, so they are named
    /// external at dump (key = mount point) and mapped to the same host folder at restore.
    /// The first mount (the rootfs) is CRIU's restore root instead.
    /// </summary>
    private static (IReadOnlyList<string> Dump, IReadOnlyList<string> Restore) ExternalMounts(int pid)
    {
        var host = MountInfo.Read("/proc/self/mountinfo");
        var container = MountInfo.Read($"/proc/{pid.ToString(CultureInfo.InvariantCulture)}/mountinfo");
        var dump = new List<string>();
        var restore = new List<string>();
        foreach (var m in container.Skip(1))
        {
            var source = host.Where(h => h.Device == m.Device && IsUnder(m.Root, h.Root)).MaxBy(h => h.Root.Length);
            if (source is null)
            {
                continue;
            }

            var hostPath = source.MountPoint.TrimEnd('/') + m.Root[source.Root.TrimEnd('/').Length..];
            hostPath = hostPath.Length == 0 ? "/" : hostPath;
            dump.Add($"mnt[{m.MountPoint}]:{m.MountPoint}");
            restore.Add($"mnt[{m.MountPoint}]:{hostPath}");
        }

        return (dump, restore);

        static bool IsUnder(string path, string root) =>
            root == "/" || path == root || path.StartsWith(root.TrimEnd('/') + "/", StringComparison.Ordinal);
    }
}
