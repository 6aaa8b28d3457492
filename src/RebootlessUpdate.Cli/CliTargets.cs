using System.CommandLine;
using System.Globalization;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.Cli;

/// <summary>The target options of plan, rehearse and update, and the targets they name (each checked before anything changes).</summary>
internal sealed class CliTargets
{
    // Strings, not ints: `--pid 0` and `--pid -5` get a message with the number given, not the parser's.
    private readonly Option<string[]> _pid = new("--pid") { Description = "Root pid of a process tree to checkpoint (repeatable).", AllowMultipleArgumentsPerToken = true };
    private readonly Option<string[]> _cgroup = new("--cgroup") { Description = "A cgroup whose processes to checkpoint (repeatable).", AllowMultipleArgumentsPerToken = true };
    private readonly Option<string[]> _container = new("--container") { Description = "A running runc container id (repeatable).", AllowMultipleArgumentsPerToken = true };

    private readonly Option<string[]> _podman = new("--podman")
    {
        Description = "A running podman container by name or id, checkpointed and restored by podman itself (repeatable).",
        AllowMultipleArgumentsPerToken = true,
    };

    private readonly Option<string[]> _service = new("--service")
    {
        Description = "A running systemd service by unit name: its main process's tree, in its cgroup (repeatable).",
        AllowMultipleArgumentsPerToken = true,
    };

    /// <summary>Adds the target options (and --tcp-established, --systemd-user) to <paramref name="command"/>.</summary>
    public CliTargets(Command command)
    {
        CliOptions.Add(command, _pid, _cgroup, _container, _podman, _service, CliOptions.TcpEstablished, CliOptions.SystemdUser);
        // A pid that is not a number is a usage error at parse time, like any other malformed option value.
        _pid.Validators.Add(r =>
        {
            foreach (var token in r.Tokens.Where(t => !long.TryParse(t.Value, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out _)))
            {
                r.AddError($"--pid '{token.Value}' is not a process id (a number)");
            }
        });
    }

    /// <summary>The targets named, each found on this host, or a <see cref="CliFailure"/> naming the first that is not.</summary>
    public List<UpdateTarget> Resolve(CliInvocation c)
    {
        var treeOptions = TreeOptions(c);
        var targets = new List<UpdateTarget>();
        foreach (var text in c.Value(_pid) ?? [])
        {
            var pid = long.Parse(text, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture);
            if (pid is <= 0 or > int.MaxValue)
            {
                throw CliFailure.Of(ExitCodes.UnknownTarget, $"--pid {pid}: not a process id (process ids are 1 to {int.MaxValue}); nothing was changed",
                    "name a running process tree's root; ps -e lists them");
            }

            targets.Add(UpdateTarget.ProcessTree((int)pid, treeOptions));
        }

        targets.AddRange((c.Value(_cgroup) ?? []).Select(g => UpdateTarget.Cgroup(g, treeOptions)));
        targets.AddRange((c.Value(_container) ?? []).Select(id => UpdateTarget.Container(id)));
        var podman = new PodmanOptions { TcpEstablished = treeOptions.TcpEstablished };
        targets.AddRange((c.Value(_podman) ?? []).Select(name => UpdateTarget.Podman(name, podman)));
        var systemd = new SystemdServiceOptions { UserManager = c.Value(CliOptions.SystemdUser) };
        foreach (var unit in c.Value(_service) ?? [])
        {
            try
            {
                targets.Add(UpdateTarget.Service(unit, treeOptions, systemd));
            }
            catch (ArgumentException e)
            {
                throw CliFailure.Of(ExitCodes.Usage, "--service: " + e.Message.Replace($" (Parameter '{e.ParamName}')", "", StringComparison.Ordinal));
            }
        }

        if (targets.Count == 0)
        {
            throw CliFailure.Of(ExitCodes.Usage, "no target named", "name at least one: --pid PID, --cgroup PATH, --container ID, --podman NAME, --service UNIT");
        }

        if (targets.GroupBy(t => t.Id).FirstOrDefault(g => g.Count() > 1) is { } twice)
        {
            throw CliFailure.Of(ExitCodes.Usage, $"target {twice.Key} is named twice");
        }

        foreach (var t in targets)
        {
            try
            {
                _ = t.Resolve();
            }
            catch (TargetNotFoundException e)
            {
                throw CliFailure.Of(Code(e.Problem), e.Message);
            }
        }

        return targets;
    }

    /// <summary>The exit code of a target that cannot be checkpointed.</summary>
    public static int Code(TargetProblem problem) => problem switch
    {
        TargetProblem.Inactive => ExitCodes.TargetInactive,
        TargetProblem.ManagerUnavailable => ExitCodes.SystemdUnavailable,
        _ => ExitCodes.UnknownTarget,
    };

    private static ProcessTreeOptions TreeOptions(CliInvocation c)
    {
        if (!c.Value(CliOptions.TcpEstablished))
        {
            return new ProcessTreeOptions();
        }

        // CRIU locks the network while it dumps TCP; its default is iptables. A host that
        // only has nftables (Debian 13's minimal install) needs the nftables method.
        return new ProcessTreeOptions { TcpEstablished = true, NetworkLock = OnPath("iptables") || !OnPath("nft") ? null : CriuNetworkLock.Nftables };
    }

    private static bool OnPath(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "/usr/sbin:/usr/bin:/sbin:/bin").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Any(d => File.Exists(Path.Combine(d, name)));
}
