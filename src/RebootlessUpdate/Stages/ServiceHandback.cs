using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.Stages;

/// <summary>
/// A service target's unit across its checkpoint: released before CRIU may end its processes, and given the restored
/// tree back as its main process (or, when the tree resumed in place, simply its own configuration again). Targets
/// that are no service are left alone. See <see cref="SystemdServiceTarget"/> for what systemd sees.
/// </summary>
internal static class ServiceHandback
{
    /// <summary>How long systemd may take to settle the end of a unit's main process before a restore into its cgroup.</summary>
    internal static readonly TimeSpan SettleLimit = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Before the dump: from now on the end of the unit's main process starts nothing (no restart, no stop commands).
    /// Throws, naming the unit, when systemd cannot be told: then nothing was frozen.
    /// </summary>
    internal static void Release(UpdateContext context, TargetRun t)
    {
        if (t.Settings?.Service is not { } unit)
        {
            return;
        }

        try
        {
            context.Services.Release(unit);
        }
        catch (Exception e) when (e is ServiceManagerException or IOException or UnauthorizedAccessException)
        {
            throw new TargetNotFoundException(t.Target.Id,
                $"systemd could not be told to leave {unit.Name} alone while it is checkpointed ({e.Message}); nothing was frozen.", TargetProblem.ManagerUnavailable);
        }
    }

    /// <summary>
    /// Before a restore on the kernel the tree was dumped on: waits until systemd has settled the end of the unit's
    /// main process, so that nothing it still does for that end (killing what is left in the cgroup) meets the
    /// restored processes. A unit that runs again (someone or something started it while the tree was away) is not
    /// restored into: that would make two copies.
    /// </summary>
    /// <exception cref="InvalidOperationException">systemd runs the unit again, or is still ending it after <see cref="SettleLimit"/>.</exception>
    internal static async Task WaitSettledAsync(UpdateContext context, TargetRun t, CancellationToken cancellationToken)
    {
        if (t.Settings?.Service is not { } unit)
        {
            return;
        }

        var started = context.TimeProvider.GetTimestamp();
        while (true)
        {
            ServiceStatus status;
            try
            {
                status = context.Services.Status(unit);
            }
            catch (ServiceManagerException e)
            {
                PipelineLog.TargetWarning(context.Logger, t.Target.Id, $"could not ask systemd about {unit.Name} before the restore: {e.Message}");
                return;
            }

            if (!status.Busy)
            {
                return;
            }

            if (status.ActiveState != "deactivating" || context.TimeProvider.GetElapsedTime(started) >= SettleLimit)
            {
                throw new InvalidOperationException($"systemd runs {unit.Name} again ({status.ActiveState}, main pid {status.MainPid}) while its checkpointed tree "
                    + $"is down: restoring the tree next to it would make two copies, so it is not restored; its images are kept. "
                    + $"Stop the unit ({SystemctlServiceManager.Command(unit)} stop {unit.Name}) and run rebootless resume to restore the checkpoint instead");
            }

            await Task.Delay(TimeSpan.FromMilliseconds(50), context.TimeProvider, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// After the target settled (restored, resumed in place, or failed): a restored tree that runs becomes the unit's
    /// main process; otherwise the unit just gets its own configuration back. Never throws: a unit that cannot be
    /// given its tree is reported, and the tree runs on unsupervised in the unit's cgroup, unless systemd ended it when
    /// it refused it: then the target is ended. Safe to repeat. Returns true when it changed the target (the caller
    /// journals it).
    /// </summary>
    internal static bool HandBack(UpdateContext context, TargetRun t)
    {
        if (t.Settings?.Service is not { } unit)
        {
            return false;
        }

        if (t.Phase != TargetPhase.Restored || t.RestoredPid is not { } pid || context.Processes.IdentityOf(pid) is not { } root
            || (t.RestoredStartTime is { } started && root.StartTime != started))
        {
            try
            {
                context.Services.Return(unit);
            }
            catch (Exception e) when (e is ServiceManagerException or IOException or UnauthorizedAccessException)
            {
                Warn(context, t, $"{unit.Name} keeps rebootless's runtime drop-ins ({e.Message}): remove its zz-rebootless-*.conf drop-ins "
                    + $"and run {SystemctlServiceManager.Command(unit)} daemon-reload");
            }

            return false;
        }

        try
        {
            var status = context.Services.Status(unit);
            if (status.MainPid == pid && status.ActiveState == "active")
            {
                context.Services.Return(unit); // handed back by an earlier run
                return false;
            }

            if (status.Busy)
            {
                // Something started the unit while its tree was away: two copies now run, and only systemd's is supervised.
                context.Services.Return(unit);
                Warn(context, t, $"systemd runs {unit.Name} again (main pid {status.MainPid}, {status.ActiveState}) next to its restored tree (pid {pid}): "
                    + $"stop one of them (kill {pid}, or {SystemctlServiceManager.Command(unit)} stop {unit.Name})");
                return false;
            }

            context.Services.Adopt(unit, pid);
            PipelineLog.TargetEvent(context.Logger, t.Target.Id, $"handed back to systemd: {unit.Name} is active with main pid {pid}");
            context.ReportProgress("Restore", $"{unit.Name} is active again with the restored main pid {pid}", t.Target.Id);
            return false;
        }
        catch (Exception e) when (e is ServiceManagerException or IOException or UnauthorizedAccessException)
        {
            if (!context.Processes.IsAlive(root))
            {
                // A start that fails makes systemd clean up the unit's cgroup: the restored tree with it.
                var why = $"ended: systemd did not take the restored tree as {unit.Name}'s main process ({e.Message}) and ended it; "
                    + $"it ran after its checkpoint, so it is not restored again; start the unit afresh ({SystemctlServiceManager.Command(unit)} start {unit.Name})";
                t.End(why);
                Warn(context, t, why);
                return true;
            }

            Warn(context, t, $"its tree runs (pid {pid}) but {unit.Name} could not be given it back ({e.Message}); "
                + $"systemd does not supervise it: stop it by pid, then {SystemctlServiceManager.Command(unit)} start {unit.Name}");
            return false;
        }
    }

    private static void Warn(UpdateContext context, TargetRun t, string why)
    {
        PipelineLog.TargetWarning(context.Logger, t.Target.Id, why);
        context.ReportProgress("Restore", why, t.Target.Id);
    }
}
