using RebootlessUpdate.Images;
using RebootlessUpdate.Kexec;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.Stages;

/// <summary>
/// After boot: finds the set (the command line's resume marker, else the newest
/// unfinished journal), reads its journal, and decides per target what to do.
/// A journal written in this very boot means a crash before the jump: the run rolls back.
/// </summary>
internal sealed class LocateStage(LocateStageOptions options) : IUpdateStage
{
    public string Name => "Locate";

    public async ValueTask ExecuteAsync(UpdateContext context, CancellationToken cancellationToken)
    {
        var store = context.RequireStore();
        var given = options.SetId;
        var setId = given ?? Marker(options.CommandLinePath);
        if (setId is not null && !UpdateJournal.IsSetId(setId))
        {
            // Checked before any path is made of it: `--set ../x` must read nothing outside the store.
            throw new JournalException(JournalProblem.BadSetId, null,
                $"{(given is null ? $"the resume marker {RebootlessInfo.ResumeParameter}= on the kernel command line" : "--set")} '{setId}' is not a checkpoint set id "
                + "(expected e.g. 20261126T063200Z-1a2b3c4d; `rebootless status` lists the store's sets); nothing was read or changed");
        }

        // The lock before the journal is read: what it says only holds while no other run can change it,
        // and a run refused here has opened no journal, so it changes nothing.
        context.StoreLock ??= store.AcquireLock();
        if (setId is null)
        {
            // An update not yet resumed, or a rehearsal this boot's crash interrupted (its workloads may need restoring).
            var all = UpdateJournal.Unfinished(store.RootDirectory);
            var unfinished = all.Count == 0 ? null : all[^1];
            if (unfinished is null)
            {
                context.NothingToDo = true;
                context.SkipStage($"no resume marker ({RebootlessInfo.ResumeParameter}=) on the command line and no unfinished journal in {store.RootDirectory}");
                return;
            }

            if (unfinished.Record is null or { State: JournalState.Failed })
            {
                // Not resumed blindly: an operator decides (`resume --set ID` retries, `images rm --force ID` gives up).
                throw new JournalException(JournalProblem.NeedsAttention, unfinished.SetId, unfinished.Describe() + ".");
            }

            setId = unfinished.SetId;
        }

        UpdateJournal journal;
        try
        {
            journal = UpdateJournal.Open(store.RootDirectory, setId, context.StoreLock, context.TimeProvider)
                ?? throw (given is null
                    ? new CheckpointSetNotFoundException(setId, store.RootDirectory)
                    : new JournalException(JournalProblem.UnknownSet, setId,
                        $"--set {setId}: there is no run of that set in {store.RootDirectory}; `rebootless status` lists the store's runs; nothing was changed"));
        }
        catch (InvalidDataException e)
        {
            throw new JournalException(JournalProblem.NeedsAttention, setId,
                new JournalListing(setId, Path.Combine(UpdateJournal.DirectoryOf(store.RootDirectory), setId + ".json"), null, e.Message).Describe() + ".", e);
        }

        if (journal.State is JournalState.Resumed or JournalState.RolledBack or JournalState.Abandoned)
        {
            context.Journal = journal;
            context.SetId = setId;
            context.NothingToDo = true;
            context.SkipStage($"set {setId} is already {journal.State.ToString().ToLowerInvariant()}; nothing to do");
            return;
        }

        if (journal.State == JournalState.Failed && given is null)
        {
            // Named by the command line's marker: a failed run is retried only when an operator names it (--set).
            throw new JournalException(JournalProblem.NeedsAttention, setId,
                new JournalListing(setId, journal.FilePath, journal.Record, null).Describe() + ".");
        }

        // Retrying a failed run (--set): the targets that run (restored earlier, or never ended) are left alone below.
        context.Journal = journal;
        context.SetId = setId;
        context.SameBoot = journal.Record.BootId == SystemInfo.BootId();
        var images = Path.Combine(store.RootDirectory, "sets", setId, "images");
        var runs = new List<TargetRun>();
        if (context.SameBoot)
        {
            // A crash before the jump: a CRIU worker of the dead run may still hold a tree
            // (frozen at post-dump until it notices its client is gone, then it resumes it).
            // Judge each target only once CRIU let go of it.
            await ReleasedByCriuAsync(context, journal.Record.Targets, cancellationToken).ConfigureAwait(false);
        }

        foreach (var jt in journal.Record.Targets)
        {
            var run = Load(jt, images, context.SameBoot);
            await DecideAsync(context, run, jt, cancellationToken).ConfigureAwait(false);
            runs.Add(run);
        }

        context.Targets = runs;
        context.ReportProgress(Name, $"set {setId}: journal state {journal.State}, {(context.SameBoot ? "same boot (rolling back)" : "new boot")}");
    }

    /// <summary>A target as its journal left it (before deciding what it needs).</summary>
    internal static TargetRun Load(JournalTarget jt, string images, bool sameBoot)
    {
        var run = new TargetRun(new JournaledTarget(jt.Id, jt.Settings), jt.Phase)
        {
            Settings = jt.Settings,
            Folder = jt.Folder,
            ImagesDirectory = Path.Combine(images, jt.Folder),
            DumpStartedAt = jt.DumpStartedAt,
            RestoredPid = jt.RestoredPid,
            RestoredStartTime = jt.RestoredStartTime,
            Original = jt.RootStartTime == 0 ? null : new ProcessIdentity(jt.RootPid, jt.RootStartTime),
        };
        if (sameBoot)
        {
            // The original may still hold its pid: wait for it before restoring.
            run.TreeProcesses = run.Original is { } o ? [o] : [];
        }

        return run;
    }

    /// <summary>
    /// What a journaled target needs: nothing (its tree runs: never ended, or restored by an earlier run),
    /// one restore (nothing of it runs and its dump completed), or an operator.
    /// </summary>
    internal async Task DecideAsync(UpdateContext context, TargetRun run, JournalTarget jt, CancellationToken cancellationToken)
    {
        switch (jt.Phase)
        {
            case TargetPhase.Restoring:
                // A run died while CRIU restored it: find the tree CRIU may have restored, never restore a second.
                // Its work folder holds the attempt's restore log and, if one was started, its lazy-pages daemon's pid file.
                var work = context.Store is { } store && context.SetId is { } setId
                    ? Path.Combine(UpdateJournal.LogDirectoryOf(store.RootDirectory, setId), jt.Folder)
                    : null;
                var (outcome, holders) = await InterruptedRestore.SettleAsync(run, run.ImagesDirectory!, options.InterruptedRestoreWait,
                    context.TimeProvider, cancellationToken, work).ConfigureAwait(false);
                TargetPhase next;
                (next, run.Error) = outcome switch
                {
                    InterruptedRestore.Outcome.Running => (TargetPhase.Restored, null),
                    InterruptedRestore.Outcome.NotRunning => (TargetPhase.Dumped, null),
                    InterruptedRestore.Outcome.RanAndExited => (TargetPhase.Ended,
                        $"CRIU restored it as pid {jt.RestoredPid} and let it run (its restore log says so), and it has exited since; "
                        + $"not restored a second time (its images are kept in {run.ImagesDirectory})"),
                    _ => (TargetPhase.Restoring, $"an interrupted restore is still under way after {options.InterruptedRestoreWait.TotalSeconds:0} s "
                        + $"(process(es) {string.Join(", ", holders)} hold its images {run.ImagesDirectory}); not restored a second time: "
                        + $"run `rebootless resume --set {context.SetId}` once they have ended"),
                };
                if (next != TargetPhase.Restoring)
                {
                    run.MoveTo(next); // still restoring: it stays so, and is not asked for again
                }

                if (outcome is InterruptedRestore.Outcome.NotRunning or InterruptedRestore.Outcome.RanAndExited)
                {
                    if (outcome == InterruptedRestore.Outcome.NotRunning)
                    {
                        run.RestoredPid = null;
                        run.RestoredStartTime = null;
                    }

                    if (work is not null && await LazyPagesDaemons.StopForAsync(work).ConfigureAwait(false) is { } daemon)
                    {
                        // Started for the interrupted restore; nothing of that tree runs, so it serves nobody.
                        PipelineLog.TargetEvent(context.Logger, jt.Id, $"stopped lazy-pages daemon {daemon} of the interrupted restore");
                        context.ReportProgress(Name, $"stopped criu lazy-pages (pid {daemon}): the interrupted restore it served left nothing running", jt.Id);
                    }
                }

                if (outcome == InterruptedRestore.Outcome.Running && work is not null)
                {
                    // A lazily restored tree still gets pages from the daemon started for it: it is this tree's, not an orphan.
                    run.LazyPagesDaemon = Criu.CriuLazyPagesDaemon.Find(work);
                    run.LazyPages = run.LazyPagesDaemon is not null;
                }

                PipelineLog.TargetEvent(context.Logger, jt.Id, outcome == InterruptedRestore.Outcome.Running
                    ? $"an interrupted restore had let the tree run: adopted as pid {run.RestoredPid}"
                    : $"interrupted restore: {outcome}");
                return;
            case TargetPhase.Restored when run.RestoredRoot is { IsAlive: true }
                || (run.RestoredStartTime is null && jt.RestoredPid is { } pid && ProcessIdentity.Of(pid) is not null):
                run.MoveTo(TargetPhase.Restored); // restored by an earlier, interrupted run (an older journal has no start time)
                return;
            case TargetPhase.Restored:
            case TargetPhase.Failed when jt.RestoredPid is not null:
                // It ran after its restore and has ended since: its images are older than what it did, so restoring them
                // again would be a second life, not a recovery.
                run.MoveTo(TargetPhase.Ended);
                run.Error = $"it was restored as pid {jt.RestoredPid} and has exited since; not restored a second time (its images are kept in {run.ImagesDirectory})";
                return;
            case TargetPhase.Ended:
                run.Error = jt.Error;
                return;
        }

        if (context.SameBoot && run.Original is { IsAlive: true })
        {
            run.MoveTo(TargetPhase.Resumed); // never ended: a crash before the jump let it run on
        }
        else if (jt.Phase == TargetPhase.Resumed)
        {
            // It ran on in place after a rollback and has ended since: its checkpoint is older than what it did.
            run.MoveTo(TargetPhase.Ended);
            run.Error = $"it ran on in place (pid {jt.RootPid}) after the rollback and has exited since; not restored from the older checkpoint";
        }
        else if (jt.Phase is TargetPhase.Frozen or TargetPhase.Dumped or TargetPhase.Failed)
        {
            run.MoveTo(TargetPhase.Dumped);
        }
        else
        {
            run.MoveTo(TargetPhase.Failed);
            run.Error = $"its processes are gone and the journal shows no completed dump (phase {jt.Phase})";
        }
    }

    private async Task ReleasedByCriuAsync(UpdateContext context, IReadOnlyList<JournalTarget> targets, CancellationToken cancellationToken)
    {
        var start = context.TimeProvider.GetTimestamp();
        foreach (var jt in targets)
        {
            while (jt.RootStartTime != 0 && new ProcessIdentity(jt.RootPid, jt.RootStartTime).IsTraced
                && context.TimeProvider.GetElapsedTime(start) < options.CriuReleaseWait)
            {
                await Task.Delay(20, cancellationToken).ConfigureAwait(false);
            }

            if (jt.Settings.FreezeCgroup is { } cgroup)
            {
                // A CRIU that died while freezing through the cgroup leaves it frozen; nobody else will thaw it.
                try
                {
                    CgroupTarget.Thaw(cgroup);
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    PipelineLog.TargetWarning(context.Logger, jt.Id, $"could not thaw {cgroup}: {e.Message}");
                }
            }
        }
    }

    private static string? Marker(string path)
    {
        try
        {
            return KexecCommandLine.ReadCurrent(path).GetValue(RebootlessInfo.ResumeParameter);
        }
        catch (IOException)
        {
            return null;
        }
    }
}

/// <summary>
/// Verifies every hash of the set before anything restored from it runs. After boot the
/// page images of each target are, by default, hashed while CRIU restores them (the
/// Restore stage holds each target at post-restore until its check passed).
/// </summary>
internal sealed class VerifyStage(VerifyStageOptions options) : IUpdateStage
{
    public string Name => "Verify";

    public async ValueTask ExecuteAsync(UpdateContext context, CancellationToken cancellationToken)
    {
        if (context.NothingToDo)
        {
            context.SkipStage("nothing to resume");
            return;
        }

        var store = context.RequireStore();
        if (context.Mode == UpdateMode.Resume && !context.Targets.Any(t => t.Phase == TargetPhase.Dumped))
        {
            context.SkipStage("no target needs restoring");
            return;
        }

        if (context.Mode == UpdateMode.Resume && context.SameBoot && store.ListSets().Any(s => s.SetId == context.SetId && s.IsNeverSealed)
            && !context.RequireJournal().Record.History.Any(h => h.State == JournalState.Sealed))
        {
            // A crash before sealing, on this very boot: the images are this boot's own; CRIU checks them as it reads.
            // Only a set that positively never began sealing: one whose manifest was deleted (it keeps its seal mark),
            // or whose folder cannot be trusted, is verified and refused.
            context.SkipStage("the set was never sealed (a crash before sealing); restoring this boot's own images");
            return;
        }

        if (context.Mode != UpdateMode.Resume)
        {
            context.Restorable = await store.OpenForRestoreAsync(context.SetId!, null, cancellationToken).ConfigureAwait(false);
            context.ReportProgress(Name, $"{context.Restorable.Verification.BytesHashed} bytes verified", bytes: context.Restorable.Verification.BytesHashed);
            return;
        }

        // Page images owned by a target may wait: CRIU reads them into memory that does not run before post-restore.
        bool Deferred(string path) => options.HashPagesDuringRestore && IsPageImage(path) && OwnerOf(context, path) is not null;
        var verification = await store.VerifyAsync(context.SetId!, new VerifyOptions { Include = p => !Deferred(p) }, cancellationToken).ConfigureAwait(false);
        if (verification.IsValid)
        {
            context.Restorable = new RestorableSet(verification);
            StartPageVerification(context, store, verification.Manifest!, Deferred);
            context.ReportProgress(Name, $"{verification.BytesHashed} bytes verified" + (options.HashPagesDuringRestore ? "; page images are hashed while they are restored" : string.Empty), bytes: verification.BytesHashed);
            return;
        }

        // Damage inside one target's folder condemns that target only: the others are
        // restored from their intact images. Damage anywhere else (manifest, another host,
        // unknown files) condemns the whole set.
        var owners = verification.Issues.Select(i => (Issue: i, Owner: OwnerOf(context, i))).ToList();
        if (verification.Manifest is null || owners.Any(o => o.Owner is null))
        {
            throw new CheckpointSetVerificationException(verification);
        }

        foreach (var group in owners.GroupBy(o => o.Owner!))
        {
            var t = group.Key;
            if (t.Phase is TargetPhase.Restored or TargetPhase.Resumed or TargetPhase.Ended or TargetPhase.Restoring)
            {
                // It runs, ran and ended, or an interrupted restore may still bring it up: it is not restored from these
                // images now, and marking it failed would lose what the journal knows of that restore.
                context.ReportProgress(Name, $"its images failed verification ({string.Join("; ", group.Select(o => o.Issue.ToString()))}); "
                    + $"they are not used: it is {t.Phase.ToString().ToLowerInvariant()}", t.Target.Id);
                continue;
            }

            t.MoveTo(TargetPhase.Failed);
            t.Error = RefusalMessage(group.Select(o => o.Issue));
            PipelineLog.TargetWarning(context.Logger, t.Target.Id, t.Error);
            context.ReportProgress(Name, t.Error, t.Target.Id);
        }

        context.RequireJournal().UpdateTargets(context);
        StartPageVerification(context, store, verification.Manifest!, Deferred);
        context.ReportProgress(Name, $"{verification.BytesHashed} bytes verified; {owners.Select(o => o.Owner).Distinct().Count()} target(s) refused", bytes: verification.BytesHashed);
    }

    /// <summary>
    /// Starts, in the background, the check of each remaining target's deferred page images:
    /// one file at a time (the other processors restore), smallest target first (a small target
    /// waits at post-restore only for its own few pages, not behind a large one).
    /// </summary>
    private static void StartPageVerification(UpdateContext context, IImageStore store, CheckpointManifest manifest, Func<string, bool> deferred)
    {
        var order = context.Targets.Where(t => t.Phase == TargetPhase.Dumped)
            .Select(t => (Target: t, Bytes: manifest.Files.Where(f => deferred(f.Path) && OwnerOf(context, f.Path) == t).Sum(f => f.Size)))
            .OrderBy(x => x.Bytes)
            .Select(x => (x.Target, Done: new TaskCompletionSource<VerificationResult>(TaskCreationOptions.RunContinuationsAsynchronously)))
            .ToList();
        foreach (var (t, done) in order)
        {
            t.PendingPageVerification = done.Task;
        }

        _ = Task.Run(async () =>
        {
            foreach (var (t, done) in order)
            {
                try
                {
                    var only = new VerifyOptions { Include = p => deferred(p) && OwnerOf(context, p) == t, ReportUnlisted = false, MaxParallelism = 1 };
                    done.SetResult(await store.VerifyAsync(context.SetId!, only, CancellationToken.None).ConfigureAwait(false));
                }
                catch (Exception e)
                {
                    done.SetException(e);
                }
            }
        });
    }

    /// <summary>CRIU's page data files (<c>pages-N.img</c>): the memory contents, nearly all of a set's bytes.</summary>
    internal static bool IsPageImage(string path)
    {
        var name = path[(path.LastIndexOf('/') + 1)..];
        return name.StartsWith("pages-", StringComparison.Ordinal) && name.EndsWith(".img", StringComparison.Ordinal);
    }

    /// <summary>The target whose images folder (or pre-dump folder) holds the file an issue names.</summary>
    private static TargetRun? OwnerOf(UpdateContext context, VerificationIssue issue) =>
        issue.Kind is VerificationIssueKind.NotSealed or VerificationIssueKind.ManifestCorrupt or VerificationIssueKind.ForeignHost
            ? null
            : OwnerOf(context, issue.Path);

    /// <summary>The target whose images folder (or pre-dump folder) holds <paramref name="path"/>.</summary>
    private static TargetRun? OwnerOf(UpdateContext context, string path) =>
        context.Targets.FirstOrDefault(t => t.Folder is { } f
            && (path.StartsWith(f + "/", StringComparison.Ordinal) || path.StartsWith(f + "-pre/", StringComparison.Ordinal)));

    /// <summary>What a target whose images failed verification is told (the same before and during its restore).</summary>
    internal static string RefusalMessage(IEnumerable<VerificationIssue> issues) =>
        "not restored: its images failed verification (" + string.Join("; ", issues.Select(i => i.ToString())) + "); nothing of it was restored, the images are kept for inspection";
}

/// <summary>Restores every target that needs it, in parallel; skips those already running. Safe to repeat.</summary>
internal sealed class RestoreStage(RestoreStageOptions options) : IUpdateStage
{
    public string Name => "Restore";

    public async ValueTask ExecuteAsync(UpdateContext context, CancellationToken cancellationToken)
    {
        if (context.NothingToDo)
        {
            context.SkipStage("nothing to resume");
            return;
        }

        var journal = context.RequireJournal();
        var todo = context.Targets.Where(t => t.Phase == TargetPhase.Dumped).ToList();
        if (journal.State != JournalState.Resuming)
        {
            journal.Transition(JournalState.Resuming, $"{todo.Count} target(s) to restore");
        }

        var root = context.Restorable?.ImagesDirectory;
        using var gate = new SemaphoreSlim(options.MaxParallelism);
        var errors = new List<Exception>();
        await Task.WhenAll(todo.Select(async t =>
        {
            await gate.WaitAsync(cancellationToken).ConfigureAwait(false);
            try
            {
                var dir = root is null ? t.ImagesDirectory! : Path.Combine(root, t.Folder!);
                await TargetOperations.RestoreAsync(context, t, dir, waitForRelease: context.Mode == UpdateMode.Rehearse || context.SameBoot,
                    lazy: options.LazyPages || t.Settings!.LazyPages, cancellationToken).ConfigureAwait(false);
                t.Error = null;
                // Durable at once: a run that crashes after this restore must not restore the target a second time.
                journal.UpdateTargets(context);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                if (await RefusedAsync(t).ConfigureAwait(false) is { } refused && TargetTransitions.IsAllowed(t.Phase, TargetPhase.Failed))
                {
                    // Its pages failed their check while CRIU loaded them: CRIU aborted at post-restore and killed the tree.
                    t.MoveTo(TargetPhase.Failed);
                    t.Error = VerifyStage.RefusalMessage(refused.Issues);
                    PipelineLog.TargetWarning(context.Logger, t.Target.Id, t.Error);
                    context.ReportProgress(Name, t.Error, t.Target.Id);
                    journal.UpdateTargets(context);
                    return;
                }

                t.Error = "restore failed: " + e.Message;
                lock (errors)
                {
                    errors.Add(e);
                }
            }
            finally
            {
                gate.Release();
            }
        })).ConfigureAwait(false);
        journal.UpdateTargets(context);
        if (errors.Count == 1)
        {
            throw errors[0];
        }

        if (errors.Count > 1)
        {
            throw new AggregateException($"{errors.Count} targets could not be restored", errors);
        }
    }

    /// <summary>The failed page check of a target whose restore failed, if that is why (never waits for a check still running).</summary>
    private static async Task<VerificationResult?> RefusedAsync(TargetRun t)
    {
        // A veto at post-restore (it only comes after the check finished), or CRIU failing on pages whose
        // check has already failed; anything else is the restore's own error and must not wait behind the hashing.
        if (t.PendingPageVerification is not { } pending || !pending.IsCompleted)
        {
            return null;
        }

        try
        {
            var result = await pending.ConfigureAwait(false);
            return result.IsValid ? null : result;
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            return null; // the check itself failed: the restore's own error says more
        }
    }

    public async ValueTask CompensateAsync(UpdateContext context, CancellationToken cancellationToken)
    {
        // A rehearsal that cannot restore must not leave the workload down: the
        // retry budget is spent, so try once more per target, then report.
        if (context.Mode == UpdateMode.Rehearse)
        {
            foreach (var t in context.Targets.Where(t => t.Phase == TargetPhase.Dumped))
            {
                await TargetOperations.RecoverAsync(context, t, sameBoot: true).ConfigureAwait(false);
            }
        }
    }
}

/// <summary>Records the end state in the journal (resumed, or rolled back after a crash on this boot) and the downtime.</summary>
internal sealed class ReportStage : IUpdateStage
{
    public string Name => "Report";

    public async ValueTask ExecuteAsync(UpdateContext context, CancellationToken cancellationToken)
    {
        if (context.NothingToDo)
        {
            context.SkipStage("nothing to resume");
            return;
        }

        var journal = context.RequireJournal();
        journal.UpdateTargets(context);
        // Anything not running again (refused, failed, or an interrupted restore still under way) needs an operator.
        var refused = context.Targets.Where(t => t.Phase is not (TargetPhase.Restored or TargetPhase.Resumed)).ToList();
        var sameBoot = context.Mode == UpdateMode.Resume && context.SameBoot;
        if (sameBoot)
        {
            var loader = new KexecLoader();
            if (loader.IsLoaded)
            {
                await loader.UnloadAsync(cancellationToken: cancellationToken).ConfigureAwait(false);
            }

            if (refused.Count == 0)
            {
                journal.Transition(JournalState.RolledBack, "a crash before the jump was recovered on the same kernel");
                return;
            }
        }

        if (refused.Count > 0)
        {
            // The others run again; these need an operator (the journal stays unfinished so a later resume retries them).
            throw new InvalidOperationException($"{refused.Count} of {context.Targets.Count} target(s) not restored: "
                + string.Join("; ", refused.Select(t => $"{t.Target.Id}: {t.Error}")));
        }

        var downtimes = context.Targets.Where(t => t.Downtime is not null).Select(t => t.Downtime!.Value).ToList();
        journal.Transition(JournalState.Resumed, downtimes.Count == 0 ? null : $"longest downtime {downtimes.Max().TotalMilliseconds:0} ms");
    }
}

/// <summary>Deletes a rehearsal's set, or applies retention after a resume (the pipeline releases the store's lock when the run ends).</summary>
internal sealed class CleanupStage(CleanupStageOptions options) : IUpdateStage
{
    public string Name => "Cleanup";

    /// <summary>
    /// Never fails the run: it comes after the journal recorded how the run ended, and a failure here (a set that will
    /// not delete, a stray file in the store) must not turn a resume that put every workload back into a failed one.
    /// What it could not do, the next run's Cleanup does.
    /// </summary>
    public async ValueTask ExecuteAsync(UpdateContext context, CancellationToken cancellationToken)
    {
        try
        {
            await CleanAsync(context, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            PipelineLog.TargetWarning(context.Logger, context.SetId ?? "?", "cleanup did not finish: " + e.Message);
            context.SkipStage($"cleanup did not finish (the next run tries again): {e.Message}");
        }
    }

    private async Task CleanAsync(UpdateContext context, CancellationToken cancellationToken)
    {
        var store = context.RequireStore();
        if (context.Mode == UpdateMode.Resume)
        {
            // A killed lazy restore leaves its daemon waiting forever for a tree that is gone: recovery stops it through its pid file.
            try
            {
                foreach (var stopped in await LazyPagesDaemons.StopOrphansAsync(store.RootDirectory).ConfigureAwait(false))
                {
                    context.ReportProgress(Name, $"stopped {stopped.Describe()}");
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                context.ReportProgress(Name, $"could not stop orphaned lazy-pages daemons (the next resume tries again): {e.Message}");
            }
        }

        if (context.Mode == UpdateMode.Rehearse && options.DeleteRehearsalSet && context.SetId is { } id)
        {
            if (await LazyPagesDeliveredAsync(context, cancellationToken).ConfigureAwait(false))
            {
                store.DeleteSet(id);
            }
            else
            {
                context.SkipStage($"set {id} kept: its lazy-pages daemons still serve pages from it after {options.LazyPagesWait.TotalSeconds:0} s");
            }
        }
        else if (context.Mode == UpdateMode.Resume && context.SameBoot && !context.NothingToDo && context.SetId is { } rolledBack
            && context.Targets.All(t => t.Phase is TargetPhase.Resumed or TargetPhase.Restored))
        {
            // A crash before the jump, recovered: every workload runs again, the images have no further use.
            store.DeleteSet(rolledBack);
        }

        if (context.StoreLock is not null && !context.NothingToDo)
        {
            // Under the lock: no other run can be between creating its set and its journal, or restoring.
            // Sealed sets are pruned after a resume only (a rehearsal kept with --keep is the operator's).
            var policy = new RetentionPolicy(context.Mode == UpdateMode.Resume ? options.KeepSealedSets : null, options.KeepJournals, options.OrphanGracePeriod);
            try
            {
                var pruned = await StoreRetention.ApplyAsync(store, policy, context.TimeProvider).ConfigureAwait(false);
                if (!pruned.IsEmpty)
                {
                    context.ReportProgress(Name, pruned.Describe());
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or ImageStoreException)
            {
                // Pruning is housekeeping: it never turns a run whose workloads run again into a failure.
                context.ReportProgress(Name, $"retention stopped early (the next run tries again): {e.Message}");
            }
        }

        // The lock is released by the pipeline once the run's last journal record is durable.
    }

    /// <summary>Waits (bounded) until every lazy-pages daemon of the run delivered its pages and exited.</summary>
    private async Task<bool> LazyPagesDeliveredAsync(UpdateContext context, CancellationToken cancellationToken)
    {
        var daemons = context.Targets.Select(t => t.LazyPagesDaemon).OfType<Criu.CriuLazyPagesDaemon>().ToList();
        if (daemons.Count == 0)
        {
            return true;
        }

        context.ReportProgress(Name, $"waiting for {daemons.Count} lazy-pages daemon(s) to deliver every page before deleting the rehearsal's set");
        try
        {
            await Task.WhenAll(daemons.Select(d => d.WaitForExitAsync(cancellationToken))).WaitAsync(options.LazyPagesWait, cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (TimeoutException)
        {
            return false;
        }
    }

    // The lock stays held until the pipeline journaled the failure; it releases it then.
    public ValueTask CompensateAsync(UpdateContext context, CancellationToken cancellationToken) => ValueTask.CompletedTask;
}
