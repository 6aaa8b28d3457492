using System.Globalization;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Images;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.Stages;

/// <summary>Dump, commit, veto, restore and roll back of targets; shared by the standard stages.</summary>
internal static class TargetOperations
{
    private const long NearlyFullBytes = 256 * 1024;

    /// <summary>
    /// Raised when CRIU has answered a restore (the tree runs), before this run records it: the one instant a
    /// journal write cannot mark. The tool's crash injection (<c>REBOOTLESS_CRASH_AT=restore-answered</c>) kills itself here.
    /// </summary>
    internal static Action<TargetRun>? RestoreAnswered { get; set; }

    internal static string FolderName(int index, UpdateTarget target)
    {
        var chars = target.Id.Select(c => char.IsAsciiLetterOrDigit(c) ? c : '-').ToArray();
        var name = new string(chars).Trim('-');
        return index.ToString("00", CultureInfo.InvariantCulture) + "-" + (name.Length > 60 ? name[..60] : name);
    }

    internal static string WorkDirectory(UpdateContext context, TargetRun t)
    {
        var dir = Path.Combine(UpdateJournal.LogDirectoryOf(context.RequireStore().RootDirectory, context.SetId!), t.Folder!);
        Directory.CreateDirectory(dir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        return dir;
    }

    /// <summary>
    /// Starts the dump of <paramref name="t"/>. CRIU freezes it, writes its images and
    /// then waits in its post-dump notification until the pipeline commits (CRIU ends
    /// the processes) or vetoes (CRIU lets them run on, nothing to restore).
    /// </summary>
    internal static void StartDump(UpdateContext context, TargetRun t, CriuClient criu, CheckpointSet set,
        Func<TargetNotification, CancellationToken, ValueTask>? hook, CancellationToken cancellationToken)
    {
        var resolved = t.Resolved ?? throw new InvalidOperationException("the Plan stage must resolve the targets first.");
        t.ImagesDirectory = Path.Combine(set.ImagesDirectory, t.Folder!);
        Directory.CreateDirectory(t.ImagesDirectory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        var work = WorkDirectory(context, t);
        t.Original = ProcessIdentity.Of(resolved.RootPid)
            ?? throw new TargetNotFoundException(t.Target.Id, $"process {resolved.RootPid} exited after the plan; nothing was frozen.");
        t.TreeProcesses = [.. ProcStat.Tree(resolved.RootPid).Select(ProcessIdentity.Of).OfType<ProcessIdentity>()];
        t.OwnsPidNamespace = ProcStat.IsNamespaceInit(resolved.RootPid);
        var pending = new TargetRun.Pending();
        var options = t.Settings!.ToDump(resolved.RootPid, t.ImagesDirectory, work) with
        {
            LogFile = "dump.log",
            ParentImages = t.PreDumpFolder is null ? null : "../" + t.PreDumpFolder,
            // Without memory tracking CRIU ignores the parent and copies every page again while frozen.
            TrackMemory = t.PreDumpFolder is not null,
            OnNotification = async (n, ct) =>
            {
                if (hook is not null)
                {
                    await hook(new TargetNotification(t.Target.Id, n.Script, n.Pid), ct).ConfigureAwait(false);
                }

                if (n.Script == "post-dump")
                {
                    pending.HeldAtPostDump.TrySetResult();
                    var commit = await pending.Decision.Task.WaitAsync(ct).ConfigureAwait(false);
                    if (!commit)
                    {
                        // Failing post-dump makes CRIU resume the frozen tasks instead of killing them.
                        throw new OperationCanceledException("the update was rolled back before the jump; the workload resumes in place");
                    }
                }
            },
        };
        t.DumpStartedTimestamp = context.TimeProvider.GetTimestamp();
        t.DumpStartedAt = context.TimeProvider.GetUtcNow();
        pending.Abandon = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var abandon = pending.Abandon.Token;
        pending.Request = Task.Run(() => criu.DumpAsync(options, abandon), CancellationToken.None);
        t.PendingDump = pending;
        PipelineLog.TargetEvent(context.Logger, t.Target.Id, $"dumping root {resolved.RootPid} ({t.TreeProcesses.Count} processes) into {t.ImagesDirectory}");
    }

    /// <summary>Waits until CRIU holds the target at post-dump, or its dump failed.</summary>
    internal static async Task WaitHeldAsync(UpdateContext context, TargetRun t, CheckpointSet set)
    {
        var pending = t.PendingDump!;
        var first = await Task.WhenAny(pending.HeldAtPostDump.Task, pending.Request).ConfigureAwait(false);
        var took = context.TimeProvider.GetElapsedTime(t.DumpStartedTimestamp!.Value);
        if (first == pending.HeldAtPostDump.Task)
        {
            t.Froze(took, FolderBytes(t.ImagesDirectory!));
            context.ReportProgress("Dump", $"frozen, {t.Bytes} bytes of images in {took.TotalMilliseconds:0} ms", t.Target.Id, t.Bytes);
            return;
        }

        try
        {
            var result = await pending.Request.ConfigureAwait(false);
            // No post-dump notification arrived (should not happen): CRIU ended the tree.
            t.DumpFinished(result.Statistics, took, FolderBytes(t.ImagesDirectory!));
        }
        catch (Exception e)
        {
            var error = Classify(e, set);
            t.DumpFailed(error, took);
            PipelineLog.TargetWarning(context.Logger, t.Target.Id, "dump failed: " + error.Message);
        }
    }

    /// <summary>Lets CRIU finish every held dump: the frozen processes end; from here a rollback restores from the images.</summary>
    internal static async Task CommitAsync(UpdateContext context)
    {
        var held = context.Targets.Where(t => t.PendingDump is not null && t.Phase == TargetPhase.Frozen).ToList();
        foreach (var t in held)
        {
            t.PendingDump!.Decision.TrySetResult(true);
        }

        List<string> errors = [];
        List<Exception> causes = [];
        foreach (var t in held)
        {
            try
            {
                var result = await t.PendingDump!.Request.ConfigureAwait(false);
                t.DumpFinished(result.Statistics);
            }
            catch (Exception e)
            {
                t.Fail("finishing the dump failed: " + e.Message);
                errors.Add($"{t.Target.Id}: {t.Error}");
                causes.Add(e);
            }
        }

        context.Journal?.UpdateTargets(context);
        if (errors.Count > 0)
        {
            // The causes stay attached: a caller tells a CRIU timeout (or a full store) from other failures by them.
            throw new InvalidOperationException("CRIU could not finish every dump: " + string.Join("; ", errors),
                causes.Count == 1 ? causes[0] : new AggregateException(causes));
        }
    }

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
            await RecoverAsync(context, t, sameBoot: true).ConfigureAwait(false);
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

    /// <summary>Brings one target back after a failure or crash before the jump.</summary>
    internal static async Task RecoverAsync(UpdateContext context, TargetRun t, bool sameBoot)
    {
        if (t.Phase is TargetPhase.Restored or TargetPhase.Resumed or TargetPhase.Ended)
        {
            return;
        }

        if (t.Phase == TargetPhase.Restoring)
        {
            // An earlier restore's outcome is unknown (the watchdog, a broken connection): its CRIU may still bring the
            // tree up. Asking again could make a second copy; the recorded root lets a later resume find the first.
            t.Error = $"{t.Error}{(t.Error is null ? "" : "; ")}{StillRestoring(context)}";
            return;
        }

        if (t.Settings?.FreezeCgroup is { } cgroup)
        {
            // A CRIU that died while freezing through the cgroup leaves it frozen.
            try
            {
                CgroupTarget.Thaw(cgroup);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                PipelineLog.TargetWarning(context.Logger, t.Target.Id, $"could not thaw {cgroup}: {e.Message}");
            }
        }

        if (t.Original is { } original && original.IsAlive)
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
                await RestoreAsync(context, t, t.ImagesDirectory!, sameBoot, lazy: false, CancellationToken.None).ConfigureAwait(false);
                PipelineLog.TargetEvent(context.Logger, t.Target.Id, $"rolled back: restored from the images as pid {t.RestoredPid}");
                return;
            }
            catch (Exception e) when (e is CriuException or IOException or InvalidOperationException)
            {
                last = e;
                if (t.Phase is TargetPhase.Restored or TargetPhase.Ended)
                {
                    // The request failed after CRIU let the tree run: that is the one copy (running, or run and exited).
                    t.Error = t.Phase == TargetPhase.Ended ? e.Message : null;
                    return;
                }

                if (t.Phase == TargetPhase.Restoring)
                {
                    break; // CRIU may still be restoring it: a second request could make a second copy
                }

                await Task.Delay(300).ConfigureAwait(false);
            }
        }

        var error = $"rollback restore failed: {last!.Message}; ";
        if (t.Phase == TargetPhase.Restoring)
        {
            t.Error = error + StillRestoring(context);
        }
        else
        {
            t.Fail(error + $"the images are kept in {t.ImagesDirectory}");
        }
    }

    private static string StillRestoring(UpdateContext context) =>
        $"a CRIU may still be restoring it from its images, so it was not asked again; run `rebootless resume --set {context.SetId}` once that CRIU has ended";

    private static bool HasImages(TargetRun t) =>
        t.ImagesDirectory is { } dir && t.Phase is TargetPhase.Frozen or TargetPhase.Dumped or TargetPhase.Failed
        && File.Exists(Path.Combine(dir, "pstree.img")) && File.Exists(Path.Combine(dir, "inventory.img"));

    /// <summary>
    /// Restores one target from <paramref name="imagesDirectory"/>; with <paramref name="lazy"/>, through a
    /// lazy-pages daemon that then serves its memory on demand (see <see cref="RestoreStageOptions.LazyPages"/>).
    /// </summary>
    internal static async Task RestoreAsync(UpdateContext context, TargetRun t, string imagesDirectory, bool waitForRelease, bool lazy, CancellationToken cancellationToken)
    {
        // Before anything of the target is touched (its recorded root above all): a refused move leaves it as it was.
        TargetTransitions.Check(t.Target.Id, t.Phase, TargetPhase.Restoring);
        if (waitForRelease)
        {
            await WaitForReleaseAsync(context, t, cancellationToken).ConfigureAwait(false);
        }

        var criu = context.RequireCriu();
        var work = WorkDirectory(context, t);
        var options = t.Settings!.ToRestore(imagesDirectory, work) with { LogFile = InterruptedRestore.LogFile };
        // One log per attempt: a later run reads it to tell "CRIU resumed the tree" (see InterruptedRestore).
        File.Delete(Path.Combine(work, InterruptedRestore.LogFile));
        // Exactly once: the journal says "restoring" before CRIU gets the request (or its lazy-pages daemon starts),
        // and names the restored root (pid and start time) before CRIU lets it run. A run that dies anywhere in
        // between leaves enough for the next one to find the tree (InterruptedRestore) instead of restoring a second
        // copy. A journal that cannot be written stops the restore here, before anything exists.
        var journal = context.Journal;
        var before = t.BeginRestoring();
        try
        {
            journal?.UpdateTargets(context);
        }
        catch
        {
            t.RevertRestoring(before); // nothing was asked of CRIU
            throw;
        }

        t.LazyPages = false;
        t.LazyPagesDaemon = lazy ? await StartLazyPagesDaemonAsync(context, t, criu, imagesDirectory, work, cancellationToken).ConfigureAwait(false) : null;
        if (t.LazyPagesDaemon is not null)
        {
            // CRIU finds the daemon's socket in the work folder; the sealed images folder stays as sealed.
            options = options with { LazyPages = true };
            t.LazyPages = true;
        }

        var pages = t.PendingPageVerification;
        options = options with
        {
            OnNotification = async (n, ct) =>
            {
                if (n.Script != "post-restore")
                {
                    return;
                }

                if (pages is not null)
                {
                    // CRIU has loaded the memory but lets nothing run before post-restore: hold it there until the
                    // pages passed their check; failing the notification makes CRIU abort and kill the restored tree.
                    var check = await pages.WaitAsync(ct).ConfigureAwait(false);
                    if (!check.IsValid)
                    {
                        throw new CheckpointSetVerificationException(check);
                    }
                }

                var root = (n.Pid is { } restored ? ProcessIdentity.Of(restored) : null)
                    ?? throw new InvalidOperationException($"CRIU reported the restored root as pid {n.Pid}, which does not exist");
                t.RecordRestoredRoot(root);
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
                ? t.RestoredRoot is { IsAlive: true } ? InterruptedRestore.Outcome.Running : InterruptedRestore.Outcome.NotRunning
                : (await InterruptedRestore.SettleAsync(t, imagesDirectory, StageDefaults.InterruptedRestoreWait,
                    context.TimeProvider, CancellationToken.None, work).ConfigureAwait(false)).Outcome;
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

            if (t.LazyPagesDaemon is { } daemon)
            {
                await daemon.DisposeAsync().ConfigureAwait(false);
                t.LazyPagesDaemon = null;
                t.LazyPages = false;
            }

            if (outcome == InterruptedRestore.Outcome.RanAndExited)
            {
                // The answer was lost, but CRIU's log says it let the tree go, and that tree has exited since: it lived
                // after its checkpoint, so restoring the images again would be a second life, not a recovery.
                var ended = $"CRIU restored it as pid {t.RestoredPid} and let it run (its restore log says so), and it has "
                    + $"exited since; not restored a second time (its images are kept in {imagesDirectory}); the request itself failed: {e.Message}";
                t.End(ended);
                throw new InvalidOperationException(ended, e);
            }

            throw;
        }

        RestoreAnswered?.Invoke(t);
        var took = MarkRestored(context, t, result.Pid, result.Statistics, context.TimeProvider.GetTimestamp(), start);
        context.ReportProgress("Restore", $"restored as pid {result.Pid} in {took.TotalMilliseconds:0} ms"
            + (t.LazyPagesDaemon is { } served ? $"; its memory is served on demand by lazy-pages daemon {served.Pid}" : string.Empty), t.Target.Id);
    }

    /// <summary>Records a restored tree (the phase, pid, timings and downtime); returns how long the restore took.</summary>
    private static TimeSpan MarkRestored(UpdateContext context, TargetRun t, int pid, CriuRestoreStatistics? statistics, long end, long start)
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
    /// Starts the lazy-pages daemon of one target over its images, its socket, log and pid file in the
    /// target's work folder. Null (the target is then restored fully, and the progress says why) when
    /// the kernel or criu cannot: a lazy restore is an optimisation, never a reason to leave a workload down.
    /// </summary>
    private static async Task<CriuLazyPagesDaemon?> StartLazyPagesDaemonAsync(UpdateContext context, TargetRun t, CriuClient criu, string imagesDirectory, string work,
        CancellationToken cancellationToken)
    {
        try
        {
            return await criu.StartLazyPagesDaemonAsync(new CriuLazyPagesOptions { ImagesDirectory = imagesDirectory, WorkDirectory = work }, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is CriuTransportException or CriuUnavailableException or IOException)
        {
            var why = $"lazy restore unavailable, restoring every page now: {e.Message}";
            PipelineLog.TargetWarning(context.Logger, t.Target.Id, why);
            context.ReportProgress("Restore", why, t.Target.Id);
            return null;
        }
    }

    /// <summary>
    /// Waits (bounded) until no process of the dumped tree holds its pid: an orphan
    /// killed by CRIU can stay a zombie for a moment, and restoring the same pid then fails.
    /// </summary>
    private static async Task WaitForReleaseAsync(UpdateContext context, TargetRun t, CancellationToken cancellationToken)
    {
        if (t.OwnsPidNamespace)
        {
            // Restored into a fresh PID namespace: waiting for a slow reaper would only add downtime
            // (measured: ~2 s for a runc container whose killed init the host's PID 1 reaped late).
            return;
        }

        var start = context.TimeProvider.GetTimestamp();
        while (t.TreeProcesses.Any(p => p.HoldsPid) && context.TimeProvider.GetElapsedTime(start) < StageDefaults.PidReleaseWait)
        {
            await Task.Delay(10, cancellationToken).ConfigureAwait(false);
        }
    }

    internal static long FolderBytes(string dir)
    {
        try
        {
            return new DirectoryInfo(dir).EnumerateFiles("*", SearchOption.AllDirectories).Sum(f => f.Length);
        }
        catch (IOException)
        {
            return 0;
        }
    }

    private static Exception Classify(Exception e, CheckpointSet set)
    {
        if (e is CriuRequestFailedException failed)
        {
            var capacity = set.Store.GetCapacity();
            if (failed.Message.Contains("No space left on device", StringComparison.Ordinal) || capacity.FreeBytes < NearlyFullBytes)
            {
                return new StoreFullException(
                    $"the image store at {set.Store.RootDirectory} is full ({capacity.FreeBytes} of {capacity.TotalBytes} bytes free after the failed dump); "
                    + $"CRIU resumed the workload. Free space or use a larger store. CRIU said: {failed.Message}", capacity.FreeBytes, null, failed);
            }
        }

        return e;
    }
}

/// <summary>A CRIU notification during a target's dump, as passed to a dump hook.</summary>
/// <param name="Target">The target.</param>
/// <param name="Script">CRIU's hook name (pre-dump, network-lock, post-dump, ...).</param>
/// <param name="Pid">The pid CRIU names, if any.</param>
public readonly record struct TargetNotification(string Target, string Script, int? Pid);
