using System.Globalization;
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
internal static class ScopeHandback
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

    private static void HandBack(UpdateContext context, TargetRun t, ScopeUnit scope, int root)
    {
        var cgroup = CgroupOf(root);
        if (cgroup != scope.ControlGroup)
        {
            Warn(context, t, $"the restored tree (root {root}) is in cgroup {cgroup ?? "(unknown)"}, not in {scope.Name}'s {scope.ControlGroup}: systemd does not hold it in that scope");
            return;
        }

        if (Holds(scope, cgroup))
        {
            return; // handed back already (a run's Report repeats it)
        }

        var failed = Start(scope, scope.Properties);
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
            var left = devices.Count > 0 && Start(scope, devices) is null && Holds(scope, cgroup) ? scope.Properties.Except(devices).ToList()
                : Start(scope, []) is null && Holds(scope, cgroup) ? scope.Properties : null;
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

    /// <summary>Starts the transient scope over the restored cgroup with <paramref name="properties"/>; returns why it failed, or null.</summary>
    private static string? Start(ScopeUnit scope, IEnumerable<string> properties)
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

        args.AddRange(["--", "/bin/true"]);
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

    /// <summary>systemd has the scope active over <paramref name="cgroup"/>.</summary>
    private static bool Holds(ScopeUnit scope, string cgroup) =>
        Show(scope.Name, "ActiveState", "ControlGroup") is { } s && s.GetValueOrDefault("ActiveState") == "active" && s.GetValueOrDefault("ControlGroup") == cgroup;

    /// <summary>The process's cgroup v2 folder (the <c>0::</c> line of <c>/proc/PID/cgroup</c>), or null.</summary>
    private static string? CgroupOf(int pid)
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
