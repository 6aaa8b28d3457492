using RebootlessUpdate.Criu;
using RebootlessUpdate.Images;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.Stages;

/// <summary>A target's restore: journaled before CRIU is asked, its root durable before it runs, judged when the answer is lost.</summary>
internal static class TargetRestore
{
    /// <summary>
    /// Raised when CRIU has answered a restore (the tree runs), before this run records it: the one instant a
    /// journal write cannot mark. The tool's crash injection (<c>REBOOTLESS_CRASH_AT=restore-answered</c>) kills itself here.
    /// </summary>
    internal static Action<TargetRun>? RestoreAnswered { get; set; }

    /// <summary>The restore view's folder in a target's work folder (see <see cref="CriuRestoreView"/>).</summary>
    internal const string RestoreViewFolder = "restore-view";

    /// <summary>
    /// Restores one target from <paramref name="imagesDirectory"/>; with <paramref name="lazy"/>, through a
    /// lazy-pages daemon that then serves its memory on demand (see <see cref="RestoreStageOptions.LazyPages"/>).
    /// <paramref name="releaseWait"/> is null after a kexec (nothing holds the tree's pids); else, on the kernel the
    /// tree was dumped on, how long to wait for its pids, process groups and sessions to be free before a <see cref="PidsInUseException"/>.
    /// With <paramref name="fromStore"/> (and <paramref name="lazy"/>), the daemon gets every page from our page
    /// server, checked chunk by chunk (see <see cref="RestoreStageOptions.ServePagesFromStore"/>).
    /// </summary>
    internal static async Task RestoreAsync(UpdateContext context, TargetRun t, string imagesDirectory, TimeSpan? releaseWait, bool lazy,
        CancellationToken cancellationToken, bool fromStore = false)
    {
        // Before anything of the target is touched (its recorded root above all): a refused move leaves it as it was.
        TargetTransitions.Check(t.Target.Id, t.Phase, TargetPhase.Restoring);
        if (PodmanHandover.IsPodman(t))
        {
            // Podman restores it whole, in a PID namespace of its own: no pids to wait for, no lazy pages.
            await PodmanHandover.RestoreAsync(context, t, imagesDirectory, cancellationToken).ConfigureAwait(false);
            return;
        }

        if (releaseWait is { } bound)
        {
            await WaitForReleaseAsync(context, t, imagesDirectory, bound, cancellationToken).ConfigureAwait(false);
        }

        // On the same kernel and after a jump alike: a unit that runs (started afresh by the boot, or by anyone) is
        // never restored into.
        await ServiceHandback.WaitSettledAsync(context, t, cancellationToken).ConfigureAwait(false);
        ContainerHandback.CheckFree(t, imagesDirectory);

        var criu = context.RequireCriu();
        await WaitForKernelProbeAsync(criu, cancellationToken).ConfigureAwait(false);
        var work = TargetFolders.WorkDirectory(context, t);
        var options = t.Settings!.ToRestore(imagesDirectory, work) with { LogFile = InterruptedRestore.LogFile };
        // One log per attempt: a later run reads it to tell "CRIU resumed the tree" (see InterruptedRestore).
        InterruptedRestore.ClearLog(work);
        // Exactly once: the journal says "restoring" before CRIU gets the request (or its lazy-pages daemon starts),
        // and names the restored root (pid and start time) before CRIU lets it run. A run that dies anywhere in
        // between leaves enough for the next one to find the tree (InterruptedRestore) instead of restoring a second
        // copy. A journal that cannot be written stops the restore here, before anything exists.
        JournalRestoring(context, t);
        var journal = context.Journal;
        var memory = lazy && fromStore ? StartOnDemandMemory(context, t, imagesDirectory) : null;
        var restoreFrom = memory is null ? imagesDirectory : RestoreFolderOf(context, t, memory, imagesDirectory, work);
        var daemon = lazy ? await StartLazyPagesDaemonAsync(context, t, criu, restoreFrom, work, memory?.Endpoint, cancellationToken).ConfigureAwait(false) : null;
        t.ServedBy(daemon, memory);
        if (daemon is not null)
        {
            // CRIU finds the daemon's socket in the work folder; the sealed images folder stays as sealed. A restore
            // view goes to this lazy restore only: never to a full one, which would read wrong bytes through it.
            options = options with { LazyPages = true, ImagesDirectory = restoreFrom };
        }
        else if (memory is not null)
        {
            await memory.DisposeAsync().ConfigureAwait(false);
            memory = null;
        }

        var pages = t.PendingPageVerification;
        var pids = memory is null ? [] : CriuProcessTree.Read(imagesDirectory).Select(p => p.Pid).ToList();
        options = options with
        {
            OnNotification = async (n, ct) =>
            {
                if (n.Script != "post-restore")
                {
                    return;
                }

                // Served from the store: only the chunks CRIU restored itself are checked before the tree runs (the
                // daemon's pages are checked as they are asked for), unless a pre-dump parent holds pages CRIU reads.
                bool whole;
                try
                {
                    whole = memory is null || !await memory.HoldAsync(pids, ct).ConfigureAwait(false);
                }
                catch (Exception e) when (e is PageChunkDamagedException or LazyPageServerException { Kind: LazyPageServerFailureKind.SourceFailed })
                {
                    // Its pages failed their check before it ran: failing the notification makes CRIU kill the tree.
                    t.PagesFailedCheck(e.Message);
                    throw;
                }


                if (pages is not null && whole)
                {
                    // CRIU has loaded the memory but lets nothing run before post-restore: hold it there until the
                    // pages passed their check; failing the notification makes CRIU abort and kill the restored tree.
                    var check = await pages.WaitAsync(ct).ConfigureAwait(false);
                    if (!check.IsValid)
                    {
                        throw new CheckpointSetVerificationException(check);
                    }
                }

                var root = (n.Pid is { } restored ? context.Processes.IdentityOf(restored) : null)
                    ?? throw new InvalidOperationException($"CRIU reported the restored root as pid {n.Pid}, which does not exist");
                t.RecordRestoredRoot(root);
                memory?.RootRestored(root);
                try
                {
                    journal?.UpdateTargets(context);
                }
                catch
                {
                    // Not durable, so the tree must not run: failing the notification makes CRIU kill it.
                    t.ForgetRestoredRoot();
                    throw;
                }
            },
        };

        var start = context.TimeProvider.GetTimestamp();
        CriuRestoreResult result;
        try
        {
            result = await criu.RestoreAsync(options, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            // Nothing of the tree runs (CRIU killed what it had restored) unless it passed post-restore and only the
            // answer was lost: then it runs, and it is the one copy. When CRIU answered with a failure it is done with
            // the tree, so the recorded root tells; otherwise (the connection broke, the watchdog or a cancellation
            // killed the worker) the outcome is unknown until no CRIU holds the images any more.
            var outcome = e is CriuRequestFailedException
                ? t.RestoredRoot is { } root && context.Processes.IsAlive(root) ? InterruptedRestore.Outcome.Running : InterruptedRestore.Outcome.NotRunning
                : (await InterruptedRestore.SettleAsync(t, imagesDirectory, StageDefaults.InterruptedRestoreWait,
                    context.TimeProvider, context.Processes, CancellationToken.None, work).ConfigureAwait(false)).Outcome;
            if (outcome == InterruptedRestore.Outcome.Running && t.RestoredRoot is { } adopted)
            {
                PipelineLog.TargetWarning(context.Logger, t.Target.Id,
                    $"the restore request failed ({e.Message}) after CRIU let the tree run: it runs as pid {adopted.Pid}, kept as the one copy");
                MarkRestored(context, t, adopted.Pid, null, context.TimeProvider.GetTimestamp(), start);
                return;
            }

            if (outcome == InterruptedRestore.Outcome.NotRunning)
            {
                t.NothingRestored(); // a definite "nothing runs": the next attempt may restore it
            }

            // Nothing of this attempt runs (a tree that runs was adopted above): its daemon, then our page server, go.
            var onDemand = t.OnDemand;
            if (t.LazyPagesDaemon is { } started)
            {
                await started.DisposeAsync().ConfigureAwait(false);
                t.ServedBy(null, null);
            }

            if (onDemand is not null)
            {
                await onDemand.DisposeAsync().ConfigureAwait(false);
            }

            if (outcome == InterruptedRestore.Outcome.RanAndExited)
            {
                // The answer was lost, but CRIU's log says it let the tree go, and that tree has exited since: it lived
                // after its checkpoint, so restoring the images again would be a second life, not a recovery.
                var ended = $"CRIU restored it as pid {t.RestoredPid} and let it run (its restore log says so), and it has "
                    + $"exited since; not restored a second time (its images are kept in {imagesDirectory}); the request itself failed: {e.Message}";
                t.End(ended);
                if (e is OperationCanceledException)
                {
                    throw; // the caller's cancellation stays one; the target's error says what is known
                }

                throw new InvalidOperationException(ended, e);
            }

            throw;
        }

        RestoreAnswered?.Invoke(t);
        var took = MarkRestored(context, t, result.Pid, result.Statistics, context.TimeProvider.GetTimestamp(), start);
        context.ReportProgress("Restore", $"restored as pid {result.Pid} in {took.TotalMilliseconds:0} ms"
            + (t.LazyPagesDaemon is { } served ? $"; its memory is served on demand by lazy-pages daemon {served.Pid}" : string.Empty)
            + (t.OnDemand is not null ? " from the store through our page server" : string.Empty), t.Target.Id);
    }

    /// <summary>
    /// Moves <paramref name="t"/> to restoring and journals the move, before its restore is asked of anyone; a journal
    /// that cannot be written takes the move back (nothing was asked) and throws.
    /// </summary>
    internal static void JournalRestoring(UpdateContext context, TargetRun t)
    {
        var before = t.BeginRestoring(context.TimeProvider.GetUtcNow());
        try
        {
            context.Journal?.UpdateTargets(context);
        }
        catch
        {
            t.RevertRestoring(before);
            throw;
        }
    }

    /// <summary>Records a restored tree (the phase, pid, timings and downtime); returns how long the restore took.</summary>
    internal static TimeSpan MarkRestored(UpdateContext context, TargetRun t, int pid, CriuRestoreStatistics? statistics, long end, long start)
    {
        var took = context.TimeProvider.GetElapsedTime(start, end);
        var now = context.TimeProvider.GetUtcNow();
        t.MarkRestored(pid, statistics, took, end, now, t.DumpStartedTimestamp is { } d
            ? context.TimeProvider.GetElapsedTime(d, end)
            : t.DumpStartedAt is { } at ? now - at : null);
        if (t.Downtime is { } down)
        {
            RebootlessTelemetry.Downtime.Record(down.TotalSeconds, new KeyValuePair<string, object?>("mode", context.Mode.ToString()));
        }

        return took;
    }

    /// <summary>
    /// criu's kernel probe (started by the readiness check, or here) is done before this target's criu processes start, so they
    /// load it instead of each probing the freshly booted kernel side by side; given up after <see cref="KernelProbeWait"/>.
    /// </summary>
    private static async Task WaitForKernelProbeAsync(CriuClient criu, CancellationToken cancellationToken)
    {
        try
        {
            await criu.PrimeKernelProbeAsync().WaitAsync(KernelProbeWait, cancellationToken).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            // Slower than a probe of its own: each criu probes for itself, as without it.
        }
    }

    private static readonly TimeSpan KernelProbeWait = TimeSpan.FromSeconds(20);

    /// <summary>
    /// Starts the lazy-pages daemon of one target over its images, its socket, log and pid file in the
    /// target's work folder. Null (the target is then restored fully, and the progress says why) when
    /// the kernel or criu cannot: a lazy restore is an optimisation, never a reason to leave a workload down.
    /// </summary>
    private static async Task<CriuLazyPagesDaemon?> StartLazyPagesDaemonAsync(UpdateContext context, TargetRun t, CriuClient criu, string imagesDirectory, string work,
        CriuPageServerEndpoint? pageServer, CancellationToken cancellationToken)
    {
        try
        {
            return await criu.StartLazyPagesDaemonAsync(new CriuLazyPagesOptions { ImagesDirectory = imagesDirectory, WorkDirectory = work, PageServer = pageServer },
                cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is CriuTransportException or CriuUnavailableException or IOException)
        {
            var why = $"lazy restore unavailable, restoring every page now: {e.Message}";
            PipelineLog.TargetWarning(context.Logger, t.Target.Id, why);
            context.ReportProgress("Restore", why, t.Target.Id);
            return null;
        }
    }

    /// <summary>Our page server for the target, or null (the daemon then reads the images itself, and the progress says why).</summary>
    private static OnDemandMemory? StartOnDemandMemory(UpdateContext context, TargetRun t, string imagesDirectory)
    {
        var (memory, whyNot) = OnDemandMemory.TryStart(context, imagesDirectory);
        if (memory is null)
        {
            var why = $"memory not served from the store: {whyNot}; CRIU's daemon reads the images after the whole check";
            PipelineLog.TargetWarning(context.Logger, t.Target.Id, why);
            context.ReportProgress("Restore", why, t.Target.Id);
        }

        return memory;
    }

    /// <summary>
    /// The folder the lazy restore of a dump on a pre-dump reads: a restore view in the work folder whose parent pages
    /// the daemon fetches from our server (see <see cref="CriuRestoreView"/>), so that CRIU restores and the hold checks
    /// only the pages outside lazy-capable VMAs. The dump's own folder when it has no parent, or (and the progress says
    /// why) when the view cannot be built: CRIU then restores every parent page itself, after the whole check.
    /// </summary>
    private static string RestoreFolderOf(UpdateContext context, TargetRun t, OnDemandMemory memory, string imagesDirectory, string work)
    {
        if (!Directory.Exists(Path.Combine(imagesDirectory, SetPaths.ParentLinkName)))
        {
            return imagesDirectory;
        }

        try
        {
            var view = CriuRestoreView.Build(imagesDirectory, Path.Combine(work, RestoreViewFolder));
            memory.View = view;
            context.ReportProgress("Restore", $"{view.PagesMadeLazy} pages of its pre-dump served on demand, "
                + $"{view.PagesLeftInParent} (outside lazy-capable memory) restored by CRIU from it", t.Target.Id);
            return view.Directory;
        }
        catch (Exception e) when (e is IOException or InvalidDataException or UnauthorizedAccessException or InvalidOperationException or OverflowException)
        {
            var why = $"its pre-dumped pages are restored by CRIU after the whole check: no restore view ({e.Message})";
            PipelineLog.TargetWarning(context.Logger, t.Target.Id, why);
            context.ReportProgress("Restore", why, t.Target.Id);
            return imagesDirectory;
        }
    }

    /// <summary>
    /// Waits (bounded) until every id the restore needs is free (see <see cref="PidRelease"/>): CRIU ended the original
    /// moments ago, and an orphan it killed stays a zombie until the host's init reaps it (measured: up to ~2 s here).
    /// </summary>
    private static async Task WaitForReleaseAsync(UpdateContext context, TargetRun t, string imagesDirectory, TimeSpan bound, CancellationToken cancellationToken)
    {
        if (t.OwnsPidNamespace)
        {
            // Restored into a fresh PID namespace: waiting for a slow reaper would only add downtime
            // (measured: ~2 s for a runc container whose killed init the host's PID 1 reaped late).
            return;
        }

        IReadOnlyList<CriuProcessTreeEntry> tree;
        try
        {
            tree = CriuProcessTree.Read(imagesDirectory);
        }
        catch (Exception e) when (e is IOException or InvalidDataException or UnauthorizedAccessException)
        {
            // CRIU reads the same file and will say what is wrong with it; nothing to wait for here.
            PipelineLog.TargetWarning(context.Logger, t.Target.Id, $"cannot tell which pids the restore needs: {e.Message}");
            return;
        }

        var start = context.TimeProvider.GetTimestamp();
        await PidRelease.WaitAsync(tree, t.Settings!.ShellJob, bound, context.TimeProvider, cancellationToken).ConfigureAwait(false);
        var waited = context.TimeProvider.GetElapsedTime(start);
        if (waited >= TimeSpan.FromMilliseconds(100))
        {
            context.ReportProgress("Restore", $"waited {waited.TotalMilliseconds:0} ms for the dumped tree's pids to be free", t.Target.Id);
        }
    }
}
