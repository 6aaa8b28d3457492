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
    /// restored processes. Gives up quietly after <see cref="SettleLimit"/>; the hand-back then says what it finds.
    /// </summary>
    internal static async Task WaitSettledAsync(UpdateContext context, TargetRun t, CancellationToken cancellationToken)
    {
        if (t.Settings?.Service is not { } unit)
        {
            return;
        }

        var started = context.TimeProvider.GetTimestamp();
        while (context.TimeProvider.GetElapsedTime(started) < SettleLimit)
        {
            try
            {
                if (!context.Services.Status(unit).Busy)
                {
                    return;
                }
            }
            catch (ServiceManagerException e)
            {
                PipelineLog.TargetWarning(context.Logger, t.Target.Id, $"could not ask systemd about {unit.Name}: {e.Message}");
                return;
            }

            await Task.Delay(TimeSpan.FromMilliseconds(50), context.TimeProvider, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// After the target settled (restored, resumed in place, or failed): a restored tree that runs becomes the unit's
    /// main process; otherwise the unit just gets its own configuration back. Never throws: a unit that cannot be
    /// given its tree is reported, and the tree runs on unsupervised in the unit's cgroup. Safe to repeat.
    /// </summary>
    internal static void HandBack(UpdateContext context, TargetRun t)
    {
        if (t.Settings?.Service is not { } unit)
        {
            return;
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
                Warn(context, t, $"{unit.Name} keeps rebootless's runtime drop-ins ({e.Message}): remove its *-rebootless-*.conf drop-ins "
                    + "and run systemctl daemon-reload");
            }

            return;
        }

        try
        {

            var status = context.Services.Status(unit);
            if (status.MainPid == pid && status.ActiveState == "active")
            {
                context.Services.Return(unit); // handed back by an earlier run
                return;
            }

            if (status.Busy)
            {
                // Something started the unit while its tree was away: two copies now run, and only systemd's is supervised.
                context.Services.Return(unit);
                Warn(context, t, $"systemd runs {unit.Name} again (main pid {status.MainPid}, {status.ActiveState}) next to its restored tree (pid {pid}): "
                    + $"stop one of them (kill {pid}, or systemctl stop {unit.Name})");
                return;
            }

            context.Services.Adopt(unit, pid, Path.Combine(TargetFolders.WorkDirectory(context, t), "main.pid"));
            PipelineLog.TargetEvent(context.Logger, t.Target.Id, $"handed back to systemd: {unit.Name} is active with main pid {pid}");
            context.ReportProgress("Restore", $"{unit.Name} is active again with the restored main pid {pid}", t.Target.Id);
        }
        catch (Exception e) when (e is ServiceManagerException or IOException or UnauthorizedAccessException)
        {
            Warn(context, t, $"its tree runs (pid {pid}) but {unit.Name} could not be given it back ({e.Message}); "
                + $"systemd does not supervise it: stop it by pid, then systemctl start {unit.Name}");
        }
    }

    private static void Warn(UpdateContext context, TargetRun t, string why)
    {
        PipelineLog.TargetWarning(context.Logger, t.Target.Id, why);
        context.ReportProgress("Restore", why, t.Target.Id);
    }
}
