using System.Globalization;
using System.Text.RegularExpressions;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Processes;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.Stages;

/// <summary>
/// A tree that ran in a systemd scope (runc's systemd cgroup driver puts each container in <c>runc-ID.scope</c>; logind
/// puts each login in <c>session-N.scope</c>, where a job the user left running stays), across its checkpoint. CRIU restores the processes into the cgroup they were dumped in, creating the folder, but after a jump
/// (or once the emptied scope was collected) systemd has no unit for that cgroup: <c>systemctl status</c> does not know
/// it, and <c>systemctl stop</c> does not reach it. Once the tree is restored, a transient scope of the same name, slice
/// and delegation is started over that cgroup (through <c>systemd-run --scope</c>, whose own short-lived command is the
/// scope's first process; the scope then holds whatever runs in its cgroup: the restored tree), with the limits and
/// device rules the scope had (<see cref="ScopeLimits"/>). A scope that still holds the cgroup (a rehearsal of a tree
/// whose scope has other processes) is left as it is. Targets in no scope are left alone. logind's own record of a
/// session does not cross a jump (it lives in /run): the scope does, and the user's slice with it.
/// </summary>
internal static partial class ScopeHandback
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(30);

    /// <summary>
    /// At plan: the scope systemd holds <paramref name="pid"/> in (its cgroup v2 folder is a loaded <c>.scope</c> unit),
    /// or null when it is in none, or systemd cannot be asked (no systemd, or not as PID 1's manager).
    /// </summary>
    internal static ScopeUnit? Of(int pid)
    {
        var cgroup = CgroupOf(pid);
        var name = cgroup is null ? null : Path.GetFileName(cgroup);
        if (name is null || !name.EndsWith(".scope", StringComparison.Ordinal))
        {
            return null;
        }

        var text = ShowText(name, ["LoadState", "ControlGroup", "Slice", "Description", "Delegate", .. ScopeLimits.Shown]);
        var show = text is null ? null : SystemdServiceTarget.ParseProperties(text);
        return show is not null && show.GetValueOrDefault("LoadState") == "loaded" && show.GetValueOrDefault("ControlGroup") == cgroup
            && show.GetValueOrDefault("Slice") is { Length: > 0 } slice
            ? new ScopeUnit
            {
                Name = name, ControlGroup = cgroup!, Slice = slice, Description = show.GetValueOrDefault("Description"),
                Delegate = show.GetValueOrDefault("Delegate") == "yes", Properties = ScopeLimits.From(text!),
            }
            : null;
    }

    /// <summary>
    /// After a restore: systemd holds the restored tree in its scope again. Never throws: a scope that cannot be started
    /// is reported, and the tree runs on in its cgroup without a unit. Safe to repeat.
    /// </summary>
    internal static void HandBack(UpdateContext context, TargetRun t)
    {
        if (t.Settings?.Scope is not { } scope || t.Phase != TargetPhase.Restored || t.RestoredPid is not { } pid
            || context.Processes.IdentityOf(pid) is not { } root || (t.RestoredStartTime is { } started && root.StartTime != started))
        {
            return;
        }

        try
        {
            HandBack(context, t, scope, root.Pid);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            Warn(context, t, $"systemd does not hold the restored tree in {scope.Name} ({e.Message}): it runs in its cgroup without a unit");
        }
    }

    private static void HandBack(UpdateContext context, TargetRun t, ScopeUnit dumped, int root)
    {
        var cgroup = CgroupOf(root);
        var scope = context.Mode == UpdateMode.Resume && IsLoginSession(dumped) ? Renamed(dumped) : dumped;
        if (cgroup == scope.ControlGroup && Holds(scope, cgroup))
        {
            return; // handed back already (a run's Report repeats it)
        }

        if (cgroup != dumped.ControlGroup)
        {
            Warn(context, t, $"the restored tree (root {root}) is in cgroup {cgroup ?? "(unknown)"}, not in {dumped.Name}'s {dumped.ControlGroup}: systemd does not hold it in that scope");
            return;
        }

        // A login session's scope is moved to a name logind never gives: after a jump logind numbers its sessions
        // afresh, and the next login's session-c1.scope must not find the restored tree's.
        var moveFrom = scope == dumped ? null : cgroup;
        if (moveFrom is not null)
        {
            PipelineLog.TargetEvent(context.Logger, t.Target.Id, $"{dumped.Name} was logind's, which numbers its sessions afresh after the jump: "
                + $"the restored tree moves to {scope.Name}, so that the next login can have {dumped.Name}");
        }

        cgroup = scope.ControlGroup;
        var failed = Start(scope, scope.Properties, moveFrom);
        if (failed is null && Holds(scope, cgroup))
        {
            PipelineLog.TargetEvent(context.Logger, t.Target.Id, $"handed back to systemd: {scope.Name} holds the restored tree again");
            context.ReportProgress("Restore", $"systemd holds the restored tree in {scope.Name} again"
                + (scope.Properties.Count > 0 ? $", with the {scope.Properties.Count} {(scope.Properties.Count == 1 ? "limit" : "limits and device rules")} it had: "
                    + string.Join(", ", scope.Properties.Take(4)) + (scope.Properties.Count > 4 ? ", ..." : "") : ""), t.Target.Id);
            return;
        }

        // systemd refused a limit (one this systemd does not know, say). The device rules come first: without them the
        // restored container may open any device (CRIU does not carry the cgroup's device filter). A scope with
        // neither still lets systemd stop the tree. A start that timed out may have made the scope all the same.
        if (failed is not null && scope.Properties.Count > 0 && !Holds(scope, cgroup))
        {
            var devices = scope.Properties.Where(ScopeLimits.IsDeviceRule).ToList();
            var left = devices.Count > 0 && Start(scope, devices, moveFrom) is null && Holds(scope, cgroup) ? scope.Properties.Except(devices).ToList()
                : Start(scope, [], moveFrom) is null && Holds(scope, cgroup) ? scope.Properties : null;
            if (left is not null)
            {
                Warn(context, t, $"systemd holds the restored tree in {scope.Name} again, but refused its limits ({failed}): it runs without "
                    + $"{string.Join(", ", left)}" + (left.Any(ScopeLimits.IsDeviceRule) ? "; without its device filter it may open any device of this host: stop it if that matters" : ""));
                return;
            }
        }

        Warn(context, t, $"systemd does not hold the restored tree in {scope.Name} ({failed ?? "the scope it started does not hold the tree's cgroup"}): "
            + $"it runs in {cgroup} without a unit, and systemctl stop {scope.Name} does not reach it");
    }

    /// <summary>logind's scope of a login session (<c>session-ID.scope</c> in <c>user-UID.slice</c>).</summary>
    internal static bool IsLoginSession(ScopeUnit scope) => LoginSession().IsMatch(scope.Name) && UserSlice().IsMatch(scope.Slice);

    /// <summary><paramref name="scope"/> under a name of ours, in the same slice (and parent cgroup).</summary>
    internal static ScopeUnit Renamed(ScopeUnit scope)
    {
        var name = "rebootless-" + scope.Name;
        var parent = scope.ControlGroup[..scope.ControlGroup.LastIndexOf('/')];
        return scope with { Name = name, ControlGroup = parent + "/" + name };
    }

    [GeneratedRegex(@"^session-[A-Za-z0-9]+\.scope$")]
    private static partial Regex LoginSession();

    [GeneratedRegex(@"^user-[0-9]+\.slice$")]
    private static partial Regex UserSlice();

    /// <summary>
    /// Starts the transient scope with <paramref name="properties"/>: over the restored cgroup, or, with
    /// <paramref name="moveFrom"/>, as a new cgroup that its first process fills by moving every process of
    /// <paramref name="moveFrom"/> into it (again while any is left, for one forked meanwhile), then removing that
    /// emptied cgroup. Returns why it failed, or null.
    /// </summary>
    private static string? Start(ScopeUnit scope, IEnumerable<string> properties, string? moveFrom = null)
    {
        var args = new List<string> { "--scope", "--quiet", "--unit=" + scope.Name, "--slice=" + scope.Slice };
        if (scope.Description is { Length: > 0 } description)
        {
            args.Add("--description=" + description);
        }

        if (scope.Delegate)
        {
            args.AddRange(["-p", "Delegate=yes"]);
        }

        foreach (var property in properties)
        {
            args.AddRange(["-p", property]);
        }

        if (moveFrom is null)
        {
            args.AddRange(["--", "/bin/true"]);
        }
        else
        {
            var mounts = File.ReadLines("/proc/self/mountinfo").ToList();
            if (SystemdServiceTarget.CgroupFolder(mounts, moveFrom, Directory.Exists) is not { } from
                || SystemdServiceTarget.CgroupFolder(mounts, scope.ControlGroup, _ => true) is not { } to)
            {
                return $"the cgroup {moveFrom} is not under a mounted cgroup2 hierarchy here";
            }

            args.AddRange(["--", "/bin/sh", "-c", MoveScript, "sh", from, to]);
        }
        try
        {
            var run = ProcessRunner.Run("systemd-run", args, Limit);
            return run.TimedOut ? $"systemd-run did not answer within {Limit.TotalSeconds:0} s" : run.ExitCode != 0 ? $"systemd-run: {run.FirstLine}" : null;
        }
        catch (ToolNotStartedException e)
        {
            return $"systemd-run cannot be run ({e.InnerException?.Message})";
        }
    }

    /// <summary>
    /// Moves every process of the cgroup folder $1 into $2 (this script's own), again while any is left (one forked
    /// meanwhile), then removes the emptied $1. A cgroup file's size reads 0 whatever it holds, so the loop reads it.
    /// </summary>
    private const string MoveScript = """
        i=0
        while left=$(cat "$1/cgroup.procs") && [ -n "$left" ] && [ $i -lt 100 ]; do
          for p in $left; do echo "$p" >"$2/cgroup.procs"; done 2>/dev/null
          i=$((i + 1))
        done
        rmdir "$1" || { echo "processes left in $1: $(cat "$1/cgroup.procs" | tr '\n' ' ')" >&2; exit 1; }
        """;

    /// <summary>systemd has the scope active over <paramref name="cgroup"/>.</summary>
    private static bool Holds(ScopeUnit scope, string cgroup) =>
        Show(scope.Name, "ActiveState", "ControlGroup") is { } s && s.GetValueOrDefault("ActiveState") == "active" && s.GetValueOrDefault("ControlGroup") == cgroup;

    /// <summary>Whether systemd has <paramref name="unit"/> active or activating (false when it cannot be asked).</summary>
    internal static bool IsActive(string unit) =>
        Show(unit, "ActiveState")?.GetValueOrDefault("ActiveState") is "active" or "activating";

    /// <summary>The process's cgroup v2 folder (the <c>0::</c> line of <c>/proc/PID/cgroup</c>), or null.</summary>
    internal static string? CgroupOf(int pid)
    {
        try
        {
            return File.ReadLines($"/proc/{pid.ToString(CultureInfo.InvariantCulture)}/cgroup").FirstOrDefault(l => l.StartsWith("0::", StringComparison.Ordinal))?[3..];
        }
        catch (IOException)
        {
            return null;
        }
    }

    /// <summary><c>systemctl show</c>'s properties of a unit, or null when systemd cannot be asked.</summary>
    private static Dictionary<string, string>? Show(string unit, params string[] properties) =>
        ShowText(unit, properties) is { } text ? SystemdServiceTarget.ParseProperties(text) : null;

    /// <summary><c>systemctl show</c>'s output for a unit's <paramref name="properties"/>, or null when systemd cannot be asked.</summary>
    private static string? ShowText(string unit, IEnumerable<string> properties)
    {
        var args = new List<string> { "show", "--no-pager" };
        foreach (var p in properties)
        {
            args.AddRange(["-p", p]);
        }

        args.AddRange(["--", unit]);
        try
        {
            var run = ProcessRunner.Run("systemctl", args, Limit);
            return run.ExitCode != 0 || run.TimedOut ? null : run.Stdout;
        }
        catch (ToolNotStartedException)
        {
            return null;
        }
    }

    private static void Warn(UpdateContext context, TargetRun t, string why)
    {
        PipelineLog.TargetWarning(context.Logger, t.Target.Id, why);
        context.ReportProgress("Restore", why, t.Target.Id);
    }
}
