using RebootlessUpdate.Images;
using RebootlessUpdate.Pipeline;

namespace RebootlessUpdate.Stages;

/// <summary>
/// The run's housekeeping after its end is journaled: what the finished run no longer needs, then
/// retention (the pipeline releases the store's lock when the run ends).
/// </summary>
internal abstract class CleanupStage(CleanupStageOptions options) : IUpdateStage
{
    public string Name => "Cleanup";

    protected CleanupStageOptions Options => options;

    /// <summary>
    /// Never fails the run: it comes after the journal recorded how the run ended, and a failure here (a set that will
    /// not delete, a stray file in the store) must not turn a resume that put every workload back into a failed one.
    /// What it could not do, the next run's Cleanup does.
    /// </summary>
    public async ValueTask ExecuteAsync(UpdateContext context, CancellationToken cancellationToken)
    {
        try
        {
            var store = context.RequireStore();
            await CleanRunAsync(context, store, cancellationToken).ConfigureAwait(false);
            if (context.StoreLock is not null && Prunes)
            {
                await ApplyRetentionAsync(context, store).ConfigureAwait(false);
            }
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            PipelineLog.TargetWarning(context.Logger, context.SetId ?? "?", "cleanup did not finish: " + e.Message);
            context.SkipStage($"cleanup did not finish (the next run tries again): {e.Message}");
        }
    }

    /// <summary>Removes what this kind of run leaves that nothing needs any more.</summary>
    protected abstract Task CleanRunAsync(UpdateContext context, IImageStore store, CancellationToken cancellationToken);

    /// <summary>Whether this kind of run applies retention once it cleaned up after itself.</summary>
    protected virtual bool Prunes => true;

    /// <summary>How many sealed sets retention keeps (null: it prunes none).</summary>
    protected abstract int? KeepSealedSets { get; }

    private async Task ApplyRetentionAsync(UpdateContext context, IImageStore store)
    {
        // Under the lock: no other run can be between creating its set and its journal, or restoring.
        var policy = new RetentionPolicy(KeepSealedSets, options.KeepJournals, options.OrphanGracePeriod);
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

    // The lock stays held until the pipeline journaled the failure; it releases it then.
    public ValueTask CompensateAsync(UpdateContext context, CancellationToken cancellationToken) => ValueTask.CompletedTask;
}

/// <summary>
/// A rehearsal's Cleanup: deletes its set (unless kept) once every lazy-pages daemon delivered its
/// pages; sealed sets are not pruned (a rehearsal kept with --keep is the operator's).
/// </summary>
internal sealed class RehearsalCleanupStage(CleanupStageOptions options) : CleanupStage(options)
{
    protected override int? KeepSealedSets => null;

    protected override async Task CleanRunAsync(UpdateContext context, IImageStore store, CancellationToken cancellationToken)
    {
        if (!Options.DeleteRehearsalSet || context.SetId is not { } id)
        {
            return;
        }

        if (await LazyPagesDeliveredAsync(context, cancellationToken).ConfigureAwait(false))
        {
            store.DeleteSet(id);
        }
        else
        {
            context.SkipStage($"set {id} kept: its lazy-pages daemons still serve pages from it after {Options.LazyPagesWait.TotalSeconds:0} s");
        }
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
            await Task.WhenAll(daemons.Select(d => d.WaitForExitAsync(cancellationToken))).WaitAsync(Options.LazyPagesWait, cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (TimeoutException)
        {
            return false;
        }
    }
}

/// <summary>
/// A resume's Cleanup: stops lazy-pages daemons orphaned by killed restores, and prunes sealed sets beyond the kept
/// number (the set just resumed from is the newest, so it is kept).
/// </summary>
internal class ResumeCleanupStage(CleanupStageOptions options) : CleanupStage(options)
{
    protected override int? KeepSealedSets => Options.KeepSealedSets;

    protected override async Task CleanRunAsync(UpdateContext context, IImageStore store, CancellationToken cancellationToken)
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
}

/// <summary>
/// A rollback's Cleanup, after a crash before the jump: a resume's, and the set is deleted once every workload runs
/// again (its images have no further use).
/// </summary>
internal sealed class RollbackCleanupStage(CleanupStageOptions options) : ResumeCleanupStage(options)
{
    protected override async Task CleanRunAsync(UpdateContext context, IImageStore store, CancellationToken cancellationToken)
    {
        await base.CleanRunAsync(context, store, cancellationToken).ConfigureAwait(false);
        if (context.SetId is { } rolledBack && context.Targets.All(t => t.Phase is TargetPhase.Resumed or TargetPhase.Restored))
        {
            store.DeleteSet(rolledBack);
        }
    }
}

/// <summary>
/// The Cleanup of a resume that found nothing to do (every boot's resume unit, mostly): orphaned lazy-pages daemons
/// are still stopped, but nothing is pruned.
/// </summary>
internal sealed class NothingToResumeCleanupStage(CleanupStageOptions options) : ResumeCleanupStage(options)
{
    protected override bool Prunes => false;
}
