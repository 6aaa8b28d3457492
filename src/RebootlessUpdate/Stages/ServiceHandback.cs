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
    /// Before the jump, while every tree is still held: on the next boot the checkpointed services start only after
    /// the resume unit, so none starts afresh next to the tree the resume restores. Throws when that cannot be
    /// written (nothing has ended yet: the run rolls back).
    /// </summary>
    internal static void OrderResumeFirst(UpdateContext context)
    {
        var units = context.Targets.Select(t => t.Settings?.Service).OfType<ServiceUnit>().ToList();
        if (units.Count == 0)
        {
            return;
        }

        try
        {
            context.Services.OrderResumeBefore(units);
        }
        catch (ServiceManagerException e)
        {
            throw new InvalidOperationException($"the checkpointed services cannot be ordered after {SystemctlServiceManager.ResumeUnit} on the next boot "
                + $"({e.Message}); a service started by the boot would run next to its restored tree, so nothing jumps");
        }
    }

    /// <summary>The jump did not happen: the next boot needs no order after the resume.</summary>
    internal static void ClearResumeOrder(UpdateContext context)
    {
        try
        {
            context.Services.ClearResumeOrder();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            PipelineLog.RunWarning(context.Logger, $"could not remove the order of the checkpointed services after {SystemctlServiceManager.ResumeUnit} ({e.Message}); it only orders them");
        }
    }

    /// <summary>
    /// Before every restore (on the kernel the tree was dumped on, or after a jump): waits until systemd has settled the end of the unit's
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
        if (t.Settings?.Service is not { } unit || context.AdoptionsLeftQueued.Contains(t.Target.Id))
        {
            // (Left to a start still queued: its drop-ins must stay until it runs.)
            return false;
        }

        if (t.Phase != TargetPhase.Restored || t.RestoredPid is not { } pid || context.Processes.IdentityOf(pid) is not { } root
            || (t.RestoredStartTime is { } started && root.StartTime != started))
        {
            ReturnOrWarn(context, t, unit);
            return false;
        }

        // Only the system manager's boot waits for the resume unit; a user's manager starts its units on its own.
        var bootWaits = context.BootGate.Holding && !unit.UserManager;
        try
        {
            ServiceStatus status;
            try
            {
                status = context.Services.Status(unit);
            }
            catch (ServiceManagerException e) when (bootWaits)
            {
                // While the boot waits, the unit's start may be queued; not knowing, the tree must not run next to it.
                throw new ServiceManagerException($"systemd did not say how {unit.Name} stands ({e.Message})") { StartQueued = true };
            }

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

            if (context.Services.Adopt(unit, pid, bootWaits))
            {
                lock (context.QueuedAdoptions)
                {
                    context.QueuedAdoptions.Add((t, pid));
                }

                PipelineLog.TargetEvent(context.Logger, t.Target.Id, $"{unit.Name}'s start, queued by the boot, will take the restored main pid {pid}");
                return false;
            }

            HandedBack(context, t, unit, pid);
            return false;
        }
        catch (ServiceManagerException e) when (e.StartQueued)
        {
            // A start of the unit is queued and will run the unit's own command: the restored tree must not run next to it.
            return EndForFreshStart(context, t, unit, root, e.Message);
        }
        catch (Exception e) when (e is ServiceManagerException or IOException or UnauthorizedAccessException)
        {
            return NotHandedBack(context, t, unit, root, e.Message);
        }
    }

    private static bool EndForFreshStart(UpdateContext context, TargetRun t, ServiceUnit unit, ProcessIdentity root, string why)
    {
        context.Processes.KillTree(root);
        var ended = $"ended: {unit.Name} could not take the restored tree ({why}), and the start systemd has queued runs the unit's own "
            + "command: so that two copies never run, the restored tree was ended and the unit starts afresh";
        t.End(ended);
        Warn(context, t, ended);
        return true;
    }

    /// <summary>How long a unit's queued boot start may take to run once the boot goes on.</summary>
    internal static readonly TimeSpan QueuedStartLimit = TimeSpan.FromMinutes(3);

    /// <summary>
    /// After the restores of a resume run by the resume unit: the next boot's order after the resume is removed, the
    /// boot goes on, and each unit whose queued start was made an adoption is checked (active, with the restored main
    /// pid) and gets its own configuration back. Returns true when a target's phase changed (journal it).
    /// </summary>
    internal static async Task<bool> ReleaseBootAsync(UpdateContext context, CancellationToken cancellationToken)
    {
        if (context.Mode == UpdateMode.Resume && context.Targets.Any(t => t.Settings?.Service is not null))
        {
            ClearResumeOrder(context);
        }

        var changed = false;
        if (context.BootGate.Holding)
        {
            // Once the boot goes on it starts the units whose trees are not back, afresh: none of those trees may be
            // restored later in this run (a retry), or by a later run that reads the journal, next to that fresh start.
            foreach (var t in context.Targets.Where(t => t.Phase == TargetPhase.Dumped && t.Settings?.Service is { UserManager: false }))
            {
                var unit = t.Settings!.Service!;
                var why = $"not restored before the boot went on ({t.Error ?? "no restore finished"}): systemd starts {unit.Name} afresh, as the boot "
                    + $"asks, so its checkpoint is not restored next to it; its images are kept (to run the checkpoint instead: "
                    + $"{SystemctlServiceManager.Command(unit)} stop {unit.Name}, then rebootless resume)";
                t.Fail(why);
                Warn(context, t, why);
                changed = true;
            }

            if (changed)
            {
                context.Journal?.UpdateTargets(context);
            }

            if (context.BootGate.TryRelease() is { } notReleased)
            {
                PipelineLog.RunWarning(context.Logger, notReleased);
            }
        }

        List<(TargetRun Target, int Pid)> queued;
        lock (context.QueuedAdoptions)
        {
            queued = [.. context.QueuedAdoptions];
            context.QueuedAdoptions.Clear();
        }

        foreach (var (t, pid) in queued)
        {
            changed |= await AwaitQueuedStartAsync(context, t, t.Settings!.Service!, pid, cancellationToken).ConfigureAwait(false);
        }

        return changed;
    }

    private static async Task<bool> AwaitQueuedStartAsync(UpdateContext context, TargetRun t, ServiceUnit unit, int pid, CancellationToken cancellationToken)
    {
        var started = context.TimeProvider.GetTimestamp();
        string seen;
        try
        {
            while (true)
            {
                var status = context.Services.Status(unit);
                if (status.ActiveState == "active" && status.MainPid == pid)
                {
                    HandedBack(context, t, unit, pid);
                    ReturnOrWarn(context, t, unit);
                    return false;
                }

                seen = $"{status.ActiveState} ({status.SubState}) with main pid {status.MainPid}";
                if (status.ActiveState is "failed" || (status.ActiveState == "active" && status.MainPid != pid))
                {
                    break;
                }

                if (context.TimeProvider.GetElapsedTime(started) >= QueuedStartLimit)
                {
                    if (context.Services.StartQueued(unit))
                    {
                        // Taking the drop-ins away now would let the waiting start run the unit's own command next to the tree.
                        Warn(context, t, $"{unit.Name}'s queued start has not run after {QueuedStartLimit.TotalMinutes:0} minutes (it waits for other units); "
                            + $"rebootless's runtime drop-ins stay, so that it takes the restored main pid {pid} when it runs. Once the unit is active, remove "
                            + $"its zz-rebootless-*.conf drop-ins and run {SystemctlServiceManager.Command(unit)} daemon-reload");
                        context.AdoptionsLeftQueued.Add(t.Target.Id);
                        return false;
                    }

                    break;
                }

                await Task.Delay(TimeSpan.FromMilliseconds(200), context.TimeProvider, cancellationToken).ConfigureAwait(false);
            }

            context.Services.Return(unit);
        }
        catch (Exception e) when (e is ServiceManagerException or IOException or UnauthorizedAccessException)
        {
            seen = e.Message;
        }

        var root = context.Processes.IdentityOf(pid);
        return NotHandedBack(context, t, unit, root, $"its queued start left it {seen}");
    }

    private static void ReturnOrWarn(UpdateContext context, TargetRun t, ServiceUnit unit)
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
    }

    private static void HandedBack(UpdateContext context, TargetRun t, ServiceUnit unit, int pid)
    {
        PipelineLog.TargetEvent(context.Logger, t.Target.Id, $"handed back to systemd: {unit.Name} is active with main pid {pid}");
        context.ReportProgress("Restore", $"{unit.Name} is active again with the restored main pid {pid}", t.Target.Id);
    }

    /// <summary>The unit did not take the restored tree: ended with it (returns true: journal it), or left unsupervised.</summary>
    private static bool NotHandedBack(UpdateContext context, TargetRun t, ServiceUnit unit, ProcessIdentity? root, string why)
    {
        if (root is not { } alive || !context.Processes.IsAlive(alive))
        {
            // A start that fails makes systemd clean up the unit's cgroup: the restored tree with it.
            var ended = $"ended: systemd did not take the restored tree as {unit.Name}'s main process ({why}) and ended it; "
                + $"it ran after its checkpoint, so it is not restored again; start the unit afresh ({SystemctlServiceManager.Command(unit)} start {unit.Name})";
            t.End(ended);
            Warn(context, t, ended);
            return true;
        }

        Warn(context, t, $"its tree runs (pid {alive.Pid}) but {unit.Name} could not be given it back ({why}); "
            + $"systemd does not supervise it: stop it by pid, then {SystemctlServiceManager.Command(unit)} start {unit.Name}");
        return false;
    }

    private static void Warn(UpdateContext context, TargetRun t, string why)
    {
        PipelineLog.TargetWarning(context.Logger, t.Target.Id, why);
        context.ReportProgress("Restore", why, t.Target.Id);
    }
}
