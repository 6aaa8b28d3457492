using RebootlessUpdate.Criu;
using RebootlessUpdate.Images;
using RebootlessUpdate.Pipeline;

namespace RebootlessUpdate.Stages;

/// <summary>
/// Restores every target that needs it, in parallel; skips those already running. Safe to repeat.
/// A rehearsal and a resume differ in whether the original may still hold the target's pids
/// and in what a restore that cannot succeed leaves behind: see the two kinds below.
/// </summary>
internal abstract class RestoreStage(RestoreStageOptions options) : IUpdateStage
{
    public string Name => "Restore";

    protected RestoreStageOptions Options => options;

    /// <summary>Whether the original tree may still be ending (same kernel): its pids must be free before CRIU restores them.</summary>
    protected abstract bool WaitForRelease { get; }

    public async ValueTask ExecuteAsync(UpdateContext context, CancellationToken cancellationToken)
    {
        var journal = context.RequireJournal();
        var todo = context.Targets.Where(t => t.Phase == TargetPhase.Dumped).ToList();
        if (journal.State != JournalState.Resuming)
        {
            journal.Transition(JournalState.Resuming, $"{todo.Count} target(s) to restore");
        }

        var root = context.Restorable?.ImagesDirectory;
        TimeSpan? releaseWait = WaitForRelease ? options.PidReleaseWait : null;
        using var gate = new SemaphoreSlim(options.MaxParallelism);
        var errors = new List<Exception>();
        await Task.WhenAll(todo.Select(async t =>
        {
            await gate.WaitAsync(cancellationToken).ConfigureAwait(false);
            try
            {
                var dir = root is null ? t.ImagesDirectory! : Path.Combine(root, t.Folder!);
                var fromStore = options.ServePagesFromStore || t.Settings!.PagesFromStore;
                await TargetRestore.RestoreAsync(context, t, dir, releaseWait, lazy: fromStore || options.LazyPages || t.Settings!.LazyPages, cancellationToken,
                    fromStore).ConfigureAwait(false);
                // Durable at once: a run that crashes after this restore must not restore the target a second time.
                journal.UpdateTargets(context);
                ContainerHandback.AfterRestore(context, t, dir);
                if (ServiceHandback.HandBack(context, t))
                {
                    journal.UpdateTargets(context);
                }
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                if (t.PagesRefused is { } damaged && TargetTransitions.IsAllowed(t.Phase, TargetPhase.Failed))
                {
                    // Its pages failed their chunk check while it was held at post-restore: CRIU killed the tree before it ran.
                    var why = $"not restored: its pages failed their check ({damaged}); nothing of it ran; its images are kept for inspection";
                    t.Fail(why);
                    PipelineLog.TargetWarning(context.Logger, t.Target.Id, why);
                    context.ReportProgress(Name, why, t.Target.Id);
                    journal.UpdateTargets(context);
                    return;
                }

                if (await RefusedAsync(t).ConfigureAwait(false) is { } refused && TargetTransitions.IsAllowed(t.Phase, TargetPhase.Failed))
                {
                    // Its pages failed their check while CRIU loaded them: CRIU aborted at post-restore and killed the tree.
                    var why = SetFiles.RefusalMessage(refused.Issues);
                    t.PagesFailedCheck(why);
                    t.Fail(why);
                    PipelineLog.TargetWarning(context.Logger, t.Target.Id, why);
                    context.ReportProgress(Name, why, t.Target.Id);
                    journal.UpdateTargets(context);
                    return;
                }

                t.RestoreFailed("restore failed: " + e.Message);
                lock (errors)
                {
                    errors.Add(e);
                }
            }
            finally
            {
                if (t.Phase != TargetPhase.Restored)
                {
                    // Not restored (failed, refused, or left restoring): its unit gets its own configuration back now,
                    // not only when a later run settles it; the unit stays failed until an operator or a resume acts.
                    _ = ServiceHandback.HandBack(context, t);
                }

                gate.Release();
            }
        })).ConfigureAwait(false);
        journal.UpdateTargets(context);
        // Every tree is back or given up: the boot may go on (the services' queued starts run), before any wait below.
        if (await ServiceHandback.ReleaseBootAsync(context, cancellationToken).ConfigureAwait(false))
        {
            journal.UpdateTargets(context);
        }

        await WaitAllMemoryBackAsync(context, cancellationToken).ConfigureAwait(false);
        if (errors.Count == 1)
        {
            throw errors[0];
        }

        if (errors.Count > 1)
        {
            throw new AggregateException($"{errors.Count} targets could not be restored", errors);
        }
    }

    public abstract ValueTask CompensateAsync(UpdateContext context, CancellationToken cancellationToken);

    /// <summary>
    /// Waits until every target whose memory is served from the store holds all of it: the page servers live in this
    /// process, so the run must not end before. A target whose pages could not be served was ended by then (its
    /// tree stopped and killed before it got a bad or missing page): it ran after its checkpoint, so it is never
    /// restored again, and its images are kept.
    /// </summary>
    private async Task WaitAllMemoryBackAsync(UpdateContext context, CancellationToken cancellationToken)
    {
        var served = context.Targets.Where(t => t.OnDemand is not null).ToList();
        if (served.Count == 0)
        {
            return;
        }

        context.ReportProgress(Name, $"waiting for {served.Count} target(s) to hold all of their memory, served from the store");
        try
        {
            await Task.WhenAll(served.Select(t => WaitMemoryBackAsync(context, t, cancellationToken))).ConfigureAwait(false);
        }
        finally
        {
            // Cancelled too: a tree ended for want of its pages must be on record as ended before the run goes on.
            context.RequireJournal().UpdateTargets(context);
        }
    }

    /// <summary>One target of <see cref="WaitAllMemoryBackAsync"/>: it holds all of its memory, or it is ended.</summary>
    private async Task WaitMemoryBackAsync(UpdateContext context, TargetRun t, CancellationToken cancellationToken)
    {
        var memory = t.OnDemand!;
        try
        {
            var (pages, after) = await memory.WaitAllBackAsync(options.PageStreamStallLimit, cancellationToken).ConfigureAwait(false);
            t.OnDemandEnded(pages, after);
            context.ReportProgress(Name, $"all of its memory is back after {after.TotalSeconds:0.###} s ({pages} pages served from the store)", t.Target.Id);
        }
        catch (Exception e) when (e is LazyPageServerException or TimeoutException)
        {
            var why = $"ended: its memory could not be served ({e.Message}); its tree was stopped and killed before it got that page, "
                + "and it is not restored again (it ran after its checkpoint); its images are kept for inspection";
            t.End(why);
            PipelineLog.TargetWarning(context.Logger, t.Target.Id, why);
            context.ReportProgress(Name, why, t.Target.Id);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // Stopping the server ends a tree that still needs pages (the daemon would let it fault in zeros).
            await memory.DisposeAsync().ConfigureAwait(false);
            if (!memory.Completion.IsCompletedSuccessfully)
            {
                var why = "ended: the run was cancelled while it still needed pages served from the store; its tree was stopped and killed "
                    + "rather than left to run on zero pages, and it is not restored again (it ran after its checkpoint); its images are kept for inspection";
                t.End(why);
                PipelineLog.TargetWarning(context.Logger, t.Target.Id, why);
            }

            throw;
        }
        finally
        {
            await memory.DisposeAsync().ConfigureAwait(false);
            if (t.OnDemand is not null)
            {
                t.OnDemandEnded(memory.PagesServed); // every way but "all back" (which recorded its time too)
            }
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
}

/// <summary>
/// A rehearsal's Restore, on the kernel the workloads ran on: CRIU ended them at Commit,
/// so each restore waits until the original's pids are free. A restore that cannot succeed
/// is tried once more per target when the retries are spent, so no workload stays down.
/// </summary>
internal sealed class RehearsalRestoreStage(RestoreStageOptions options) : RestoreStage(options)
{
    protected override bool WaitForRelease => true;

    public override async ValueTask CompensateAsync(UpdateContext context, CancellationToken cancellationToken)
    {
        foreach (var t in context.Targets.Where(t => t.Phase == TargetPhase.Dumped))
        {
            await TargetRollback.RecoverAsync(context, t, Options.PidReleaseWait).ConfigureAwait(false);
        }
    }
}

/// <summary>
/// A resume's Restore, after the jump: nothing of the old kernel holds a pid. A target that cannot be
/// restored keeps its images and its unfinished journal for the next resume.
/// </summary>
internal sealed class ResumeRestoreStage(RestoreStageOptions options) : RestoreStage(options)
{
    protected override bool WaitForRelease => false;

    public override ValueTask CompensateAsync(UpdateContext context, CancellationToken cancellationToken) => ValueTask.CompletedTask;
}

/// <summary>
/// A rollback's Restore, after a crash before the jump (same boot): the original may still be ending, so its pids
/// are waited for. Like a resume's, a target that cannot be restored keeps its images and its unfinished journal.
/// </summary>
internal sealed class RollbackRestoreStage(RestoreStageOptions options) : RestoreStage(options)
{
    protected override bool WaitForRelease => true;

    public override ValueTask CompensateAsync(UpdateContext context, CancellationToken cancellationToken) => ValueTask.CompletedTask;
}
