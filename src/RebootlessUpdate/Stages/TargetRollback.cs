using RebootlessUpdate.Criu;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.Stages;

/// <summary>Puts targets back running on the kernel they ran on, after a failure or a crash before the jump.</summary>
internal static class TargetRollback
{
    /// <summary>
    /// Puts every target back running on this kernel: vetoes held dumps (CRIU resumes
    /// them in place), thaws frozen cgroups, and restores from the images whatever CRIU
    /// already ended. Never throws for a target; each target's phase and error say what happened.
    /// </summary>
    internal static async Task RollBackAsync(UpdateContext context)
    {
        foreach (var t in context.Targets.Where(t => t.PendingDump is not null))
        {
            t.PendingDump!.Decision.TrySetResult(false);
        }

        foreach (var t in context.Targets.Where(t => t.PendingDump is not null))
        {
            var request = t.PendingDump!.Request;
            try
            {
                await request.WaitAsync(TimeSpan.FromMinutes(2)).ConfigureAwait(false);
            }
            catch (TimeoutException)
            {
                // criu did not act on the veto (stopped, hung): kill it rather than wait for its
                // watchdog, so the tree it holds is released before it is judged below.
                PipelineLog.TargetWarning(context.Logger, t.Target.Id, "criu did not resume the target within 2 minutes of the veto; killing it");
                await t.PendingDump.Abandon.CancelAsync().ConfigureAwait(false);
                await Task.WhenAny(request).ConfigureAwait(false); // ends once the worker is reaped; its outcome does not matter
            }
            catch (Exception e)
            {
                // Expected: the veto fails the request. Anything else is judged by what runs below.
                _ = e;
            }
        }

        foreach (var t in context.Targets)
        {
            await RecoverAsync(context, t, StageDefaults.PidReleaseWait).ConfigureAwait(false);
            _ = ServiceHandback.HandBack(context, t); // journaled below
        }

        TryUpdateJournal(context);
    }

    /// <summary>Best effort during a rollback: a full store must not stop the workloads from coming back.</summary>
    internal static void TryUpdateJournal(UpdateContext context)
    {
        try
        {
            context.Journal?.UpdateTargets(context);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            PipelineLog.TargetWarning(context.Logger, context.SetId ?? "?", "could not update the journal during the rollback: " + e.Message);
        }
    }

    /// <summary>
    /// Brings one target back after a failure or crash before the jump; a restore first waits up to
    /// <paramref name="releaseWait"/> for the original's pids to be free (null: nothing of it can hold them).
    /// </summary>
    internal static async Task RecoverAsync(UpdateContext context, TargetRun t, TimeSpan? releaseWait)
    {
        if (t.Phase is TargetPhase.Restored or TargetPhase.Resumed or TargetPhase.Ended)
        {
            return;
        }

        if (t.Phase == TargetPhase.Failed && t.PagesRefused is not null)
        {
            // Its pages failed their check at this run's restore: restoring it again from the same images would give a
            // process damaged memory. It stays down, its images kept, as the restore that refused it said.
            return;
        }

        if (t.Phase == TargetPhase.Restoring)
        {
            // An earlier restore's outcome is unknown (the watchdog, a broken connection): its CRIU may still bring the
            // tree up. Asking again could make a second copy; the recorded root lets a later resume find the first.
            t.LeftRestoring(StillRestoring(context), afterEarlier: true);
            return;
        }

        if (t.Settings?.FreezeCgroup is { } cgroup)
        {
            // A CRIU that died while freezing through the cgroup leaves it frozen.
            try
            {
                context.Freezer.Thaw(cgroup);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                PipelineLog.TargetWarning(context.Logger, t.Target.Id, $"could not thaw {cgroup}: {e.Message}");
            }
        }

        if (t.Original is { } original && context.Processes.IsAlive(original))
        {
            t.MoveTo(TargetPhase.Resumed);
            PipelineLog.TargetEvent(context.Logger, t.Target.Id, "running in place (never ended): nothing to restore");
            return;
        }

        if (t.Original is null)
        {
            // Never reached the dump.
            t.MoveTo(TargetPhase.Resumed);
            return;
        }

        if (!HasImages(t))
        {
            t.Fail($"{t.Error}{(t.Error is null ? "" : "; ")}its processes are gone and there are no complete images to restore from");
            return;
        }

        Exception? last = null;
        for (var attempt = 1; attempt <= 3; attempt++)
        {
            try
            {
                await TargetRestore.RestoreAsync(context, t, t.ImagesDirectory!, releaseWait, lazy: false, CancellationToken.None).ConfigureAwait(false);
                ContainerHandback.AfterRestore(context, t, t.ImagesDirectory!);
                PipelineLog.TargetEvent(context.Logger, t.Target.Id, $"rolled back: restored from the images as pid {t.RestoredPid}");
                return;
            }
            catch (Exception e) when (e is CriuException or IOException or InvalidOperationException)
            {
                last = e;
                if (t.Phase is TargetPhase.Restored or TargetPhase.Ended)
                {
                    // The request failed after CRIU let the tree run: that is the one copy (running, or run and exited).
                    if (t.Phase == TargetPhase.Ended)
                    {
                        t.End(e.Message);
                    }

                    return;
                }

                if (t.Phase == TargetPhase.Restoring)
                {
                    break; // CRIU may still be restoring it: a second request could make a second copy
                }

                if (e is PidsInUseException)
                {
                    break; // its bounded wait was the retry: another attempt would only wait as long again
                }

                await Task.Delay(300).ConfigureAwait(false);
            }
        }

        var error = $"rollback restore failed: {last!.Message}; ";
        if (t.Phase == TargetPhase.Restoring)
        {
            t.LeftRestoring(error + StillRestoring(context));
        }
        else
        {
            t.Fail(error + $"the images are kept in {t.ImagesDirectory}");
        }
    }

    private static string StillRestoring(UpdateContext context) =>
        $"a CRIU may still be restoring it from its images, so it was not asked again; run `rebootless resume --set {context.SetId}` once that CRIU has ended";

    private static bool HasImages(TargetRun t) =>
        t.ImagesDirectory is { } dir && t.Phase is TargetPhase.Frozen or TargetPhase.Sealed or TargetPhase.Dumped or TargetPhase.Failed
        && (PodmanHandover.IsPodman(t)
            ? PodmanHandover.HasExport(dir)
            : File.Exists(Path.Combine(dir, "pstree.img")) && File.Exists(Path.Combine(dir, "inventory.img")));
}
