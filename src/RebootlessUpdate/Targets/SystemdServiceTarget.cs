using System.Globalization;
using System.Text.RegularExpressions;
using RebootlessUpdate.Images;
using RebootlessUpdate.Processes;

namespace RebootlessUpdate.Targets;

/// <summary>How a systemd service target talks to systemd. Immutable.</summary>
public sealed record SystemdServiceOptions
{
    /// <summary>The systemctl binary. Default <c>systemctl</c> on PATH.</summary>
    public string Systemctl { get; init; } = "systemctl";

    /// <summary>Ask the calling user's service manager (<c>systemctl --user</c>) instead of the system's. Default false.</summary>
    public bool UserManager { get; init; }

    /// <summary>How long <c>systemctl show</c> may take. Default 10 s.</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(10);
}

/// <summary>
/// A systemd service by unit name. <c>systemctl show</c> gives its state, main pid and control
/// group (no D-Bus library needed); the unit's processes are then checkpointed like a cgroup
/// target: one tree, rooted at the main pid, every process of it inside the unit's cgroup,
/// frozen through that cgroup when it has a freezer (cgroup v2's <c>cgroup.freeze</c>; on a
/// v1-only host CRIU freezes the tree itself).
/// </summary>
/// <remarks>
/// <para>Restore: CRIU puts every process back with its pid into the cgroups it was dumped in,
/// so the processes are again in the unit's cgroup (CRIU creates the folder when it is missing,
/// as after a jump before systemd started anything).</para>
/// <para>What systemd sees (<see cref="Stages.ServiceHandback"/>). Before the dump the unit gets a
/// runtime drop-in that makes the end of its main process nothing to act on (no <c>Restart=</c>,
/// no <c>ExecStop=</c> or <c>ExecStopPost=</c>, no watchdog). Held at post-dump and resumed in
/// place, the tree never ended and the drop-in is removed. When CRIU ended the tree (a rehearsal,
/// an update) systemd marks the unit failed and does nothing else; once the tree is restored into
/// its cgroup the unit is started through a second drop-in (<c>Type=forking</c>, a no-op
/// <c>ExecStart=</c>, <c>PIDFile=</c> naming the restored root), so systemd takes the restored root
/// as its main process; then both drop-ins go and the unit has its own configuration again,
/// active with the restored main pid: <c>systemctl stop</c> stops it, a <c>Restart=</c> policy
/// applies from then on.</para>
/// </remarks>
internal sealed partial class SystemdServiceTarget(string unit, ProcessTreeOptions options, SystemdServiceOptions systemd) : UpdateTarget
{
    public string Unit { get; } = NormalizeUnitName(unit);

    public override string Id => (systemd.UserManager ? "user-service:" : "service:") + Unit;

    internal override ResolvedTarget Resolve()
    {
        var state = Show();
        if (state.GetValueOrDefault("LoadState") is "not-found" or null or "")
        {
            throw new TargetNotFoundException(Id, $"systemd knows no unit {Unit} ({Systemctl} status {Unit}); name a running service.");
        }

        if (state["LoadState"] != "loaded")
        {
            throw new TargetNotFoundException(Id, $"unit {Unit} is {state["LoadState"]}, not loaded; fix it or leave it out.");
        }

        var active = state.GetValueOrDefault("ActiveState") ?? "";
        var sub = state.GetValueOrDefault("SubState") ?? "";
        if (active is not ("active" or "reloading"))
        {
            throw new TargetNotFoundException(Id, $"service {Unit} is {active} ({sub}), not running; start it ({Systemctl} start {Unit}) or leave it out.", TargetProblem.Inactive);
        }

        if (!int.TryParse(state.GetValueOrDefault("MainPID"), NumberStyles.None, CultureInfo.InvariantCulture, out var mainPid) || mainPid <= 0)
        {
            throw new TargetNotFoundException(Id, $"service {Unit} is {active} ({sub}) but has no main process (a oneshot or a service whose main process exited); rebootless checkpoints a service through its main process: name its processes with --pid or --cgroup.", TargetProblem.Inactive);
        }

        var controlGroup = state.GetValueOrDefault("ControlGroup");
        if (string.IsNullOrEmpty(controlGroup))
        {
            throw new TargetNotFoundException(Id, $"service {Unit} has no control group; systemd reports none while it runs only when it does not manage cgroups here.", TargetProblem.Inactive);
        }

        var folder = CgroupFolder(File.ReadLines("/proc/self/mountinfo"), controlGroup, p => File.Exists(Path.Combine(p, "cgroup.procs")))
            ?? throw new TargetNotFoundException(Id, $"the control group {controlGroup} of {Unit} is not under any mounted cgroup2 or name=systemd hierarchy of this mount namespace; run rebootless where systemd runs.");
        var freeze = File.Exists(Path.Combine(folder, "cgroup.freeze")) || File.Exists(Path.Combine(folder, "freezer.state")) ? folder : null;
        var resolved = CgroupTarget.ResolveTree(Id, folder, options, freeze);
        if (resolved.RootPid != mainPid)
        {
            throw new TargetNotFoundException(Id, $"the processes of {Unit} form a tree rooted at {resolved.RootPid}, not at its main process {mainPid}; rebootless restores a service as one tree under its main process.");
        }

        return resolved with { Settings = resolved.Settings with { Service = new ServiceUnit { Name = Unit, UserManager = systemd.UserManager } } };
    }

    private string Systemctl => systemd.UserManager ? "systemctl --user" : "systemctl";

    /// <summary>Runs <c>systemctl show</c> and returns its properties.</summary>
    private Dictionary<string, string> Show()
    {
        var args = new List<string>();
        if (systemd.UserManager)
        {
            args.Add("--user");
        }

        args.AddRange(["show", "--no-pager", "-p", "Id", "-p", "LoadState", "-p", "ActiveState", "-p", "SubState", "-p", "MainPID", "-p", "ControlGroup", "--", Unit]);
        ToolRun run;
        try
        {
            run = ProcessRunner.Run(systemd.Systemctl, args, systemd.Timeout);
        }
        catch (ToolNotStartedException e)
        {
            throw new TargetNotFoundException(Id, $"{systemd.Systemctl} cannot be run ({e.InnerException!.Message}): systemd is not installed here; name the service's processes with --pid or --cgroup.", TargetProblem.ManagerUnavailable);
        }

        if (run.TimedOut)
        {
            throw new TargetNotFoundException(Id, $"{Systemctl} show {Unit} did not answer within {systemd.Timeout.TotalSeconds:0} s; is systemd hung?", TargetProblem.ManagerUnavailable);
        }

        if (run.ExitCode != 0)
        {
            throw new TargetNotFoundException(Id, $"systemd cannot be asked about {Unit} ({Systemctl}: {run.FirstLine}); systemd must be running{(systemd.UserManager ? " as this user's manager" : " as init")}.", TargetProblem.ManagerUnavailable);
        }

        return ParseProperties(run.Stdout);
    }

    /// <summary>Parses <c>systemctl show</c>'s <c>Key=Value</c> lines.</summary>
    internal static Dictionary<string, string> ParseProperties(string text) =>
        text.Split('\n').Select(l => l.TrimEnd('\r')).Where(l => l.Contains('=', StringComparison.Ordinal))
            .Select(l => l.Split('=', 2)).GroupBy(kv => kv[0]).ToDictionary(g => g.Key, g => g.Last()[1], StringComparer.Ordinal);

    /// <summary>
    /// The folder of a unit's control group (a path from the root of systemd's hierarchy): under a
    /// cgroup2 mount first, else under the v1 <c>name=systemd</c> hierarchy; the first candidate
    /// that <paramref name="exists"/> accepts.
    /// </summary>
    internal static string? CgroupFolder(IEnumerable<string> mountInfo, string controlGroup, Func<string, bool> exists)
    {
        var candidates = new List<(int Rank, string Path)>();
        foreach (var m in MountInfo.Parse(mountInfo))
        {
            var rank = m.FileSystem == "cgroup2" ? 0 : m.FileSystem == "cgroup" && m.SuperOptions.Split(',').Contains("name=systemd") ? 1 : -1;
            var root = m.Root.TrimEnd('/');
            if (rank < 0 || !(controlGroup == m.Root || controlGroup.StartsWith(root + "/", StringComparison.Ordinal)))
            {
                continue;
            }

            candidates.Add((rank, m.MountPoint.TrimEnd('/') + controlGroup[root.Length..]));
        }

        return candidates.OrderBy(c => c.Rank).Select(c => c.Path).FirstOrDefault(exists);
    }

    /// <summary>A unit name as systemd spells it: <c>foo</c> is <c>foo.service</c>; only services are targets.</summary>
    internal static string NormalizeUnitName(string unit)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(unit);
        var name = unit.Trim();
        if (!UnitName().IsMatch(name))
        {
            throw new ArgumentException($"'{unit}' is not a systemd unit name (letters, digits and :-_.@\\ only).", nameof(unit));
        }

        if (name.EndsWith(".service", StringComparison.Ordinal))
        {
            return name;
        }

        return OtherUnitTypes.Any(t => name.EndsWith(t, StringComparison.Ordinal))
            ? throw new ArgumentException($"'{unit}' is not a service: only a .service unit has a main process to checkpoint (for a scope or slice, use --cgroup with its folder).", nameof(unit))
            : name + ".service";
    }

    private static readonly string[] OtherUnitTypes = [".socket", ".target", ".scope", ".slice", ".mount", ".automount", ".timer", ".path", ".device", ".swap"];

    [GeneratedRegex(@"^[A-Za-z0-9:_.@\\-]{1,255}$")]
    private static partial Regex UnitName();
}
