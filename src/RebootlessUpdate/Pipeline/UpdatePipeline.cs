using System.Diagnostics;
using System.Runtime.CompilerServices;
using Polly;
using Polly.Retry;
using Polly.Timeout;

namespace RebootlessUpdate.Pipeline;

/// <summary>
/// An immutable sequence of stages, built with <see cref="UpdatePipelineBuilder"/>.
/// Runs the stages in order; when one fails before the point of no return, it
/// compensates the failing stage and every stage before it in reverse order,
/// then reports what happened. Stages marked safe to repeat are retried (never on
/// cancellation); stages with a timeout are abandoned when it expires.
/// </summary>
public sealed class UpdatePipeline
{
    private readonly IReadOnlyList<Entry> _stages;
    private readonly IReadOnlyList<ResiliencePipeline?> _resilience;
    private readonly TimeProvider _time;

    internal UpdatePipeline(IReadOnlyList<Entry> stages, TimeProvider time, UpdateMode? mode = null)
    {
        _stages = stages;
        _time = time;
        Mode = mode;
        _resilience = [.. stages.Select(s => BuildResilience(s, time))];
    }

    /// <summary>The kind of run the pipeline was built for (its standard stages are that run's), or null when it takes any.</summary>
    public UpdateMode? Mode { get; }

    /// <summary>The stages' names, in order.</summary>
    public IReadOnlyList<string> StageNames => [.. _stages.Select(s => s.Stage.Name)];

    /// <summary>
    /// Runs every stage on <paramref name="context"/>. Never throws for a stage's
    /// failure: the result says what failed, what was rolled back and where every
    /// target is. A context serves one run.
    /// </summary>
    /// <exception cref="ArgumentException">The context is for another kind of run than the pipeline was built for.</exception>
    /// <exception cref="InvalidOperationException">The context was already used.</exception>
    public async Task<UpdateResult> ExecuteAsync(UpdateContext context, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(context);
        if (Mode is { } mode && context.Mode != mode)
        {
            // Its standard stages do that run's work: a resume's would wait for no commit, a rehearsal's would roll nothing back.
            throw new ArgumentException($"this pipeline was built for a {mode.ToString().ToLowerInvariant()} run; the context is for a "
                + $"{context.Mode.ToString().ToLowerInvariant()} run. Build one with new UpdatePipelineBuilder(UpdateMode.{context.Mode}).", nameof(context));
        }

        context.MarkStarted();
        var started = _time.GetTimestamp();
        using var run = RebootlessTelemetry.ActivitySource.StartActivity($"rebootless {context.Mode.ToString().ToLowerInvariant()}");
        var results = new List<StageResult>();
        var executed = new List<int>();
        Exception? failure = null;
        string? failedStage = null;
        for (var i = 0; i < _stages.Count; i++)
        {
            var entry = _stages[i];
            var name = entry.Stage.Name;
            executed.Add(i);
            context.Progress?.Report(new UpdateProgress(UpdateProgressKind.StageStarted, name));
            PipelineLog.StageStarted(context.Logger, context.Mode, name);
            using var activity = RebootlessTelemetry.ActivitySource.StartActivity($"stage {name}");
            var stageStart = _time.GetTimestamp();
            var startedAt = _time.GetUtcNow();
            var attempts = new StrongBox<int>();
            try
            {
                await RunStageAsync(i, context, attempts, cancellationToken).ConfigureAwait(false);
                var skip = context.TakeSkipReason();
                var status = skip is null ? StageStatus.Completed : StageStatus.Skipped;
                var elapsed = _time.GetElapsedTime(stageStart);
                results.Add(new StageResult(name, status, elapsed, attempts.Value, skip) { StartedAt = startedAt });
                Record(context, name, status, elapsed);
                if (skip is not null)
                {
                    PipelineLog.StageSkipped(context.Logger, name, skip);
                }

                context.Progress?.Report(new UpdateProgress(skip is null ? UpdateProgressKind.StageCompleted : UpdateProgressKind.StageSkipped, name, skip));
            }
            catch (Exception e)
            {
                failure = Unwrap(e);
                failedStage = name;
                var elapsed = _time.GetElapsedTime(stageStart);
                results.Add(new StageResult(name, StageStatus.Failed, elapsed, Math.Max(attempts.Value, 1), failure.Message) { StartedAt = startedAt });
                Record(context, name, StageStatus.Failed, elapsed);
                activity?.SetStatus(ActivityStatusCode.Error, failure.Message);
                PipelineLog.StageFailed(context.Logger, context.Mode, name, failure);
                context.Progress?.Report(new UpdateProgress(UpdateProgressKind.StageFailed, name, failure.Message));
                break;
            }
        }

        var cancelled = failure is OperationCanceledException && cancellationToken.IsCancellationRequested;
        var compensationFailed = false;
        if (failure is not null && !context.PointOfNoReturnPassed)
        {
            for (var k = executed.Count - 1; k >= 0; k--)
            {
                var entry = _stages[executed[k]];
                var name = entry.Stage.Name;
                context.Progress?.Report(new UpdateProgress(UpdateProgressKind.Compensating, name));
                PipelineLog.Compensating(context.Logger, name);
                var start = _time.GetTimestamp();
                try
                {
                    // Not the caller's token: a rollback must finish even when the run was cancelled.
                    await entry.Stage.CompensateAsync(context, CancellationToken.None).ConfigureAwait(false);
                    results.Add(new StageResult(name, StageStatus.Compensated, _time.GetElapsedTime(start), 1, null));
                }
                catch (Exception e)
                {
                    compensationFailed = true;
                    PipelineLog.CompensationFailed(context.Logger, name, e);
                    results.Add(new StageResult(name, StageStatus.CompensationFailed, _time.GetElapsedTime(start), 1, e.Message));
                }
            }
        }

        var outcome = failure is null
            ? context.NothingToDo ? UpdateOutcome.NothingToDo : UpdateOutcome.Succeeded
            : context.PointOfNoReturnPassed || compensationFailed || context.Targets.Any(t => t.Phase is TargetPhase.Failed or TargetPhase.Dumped or TargetPhase.Frozen or TargetPhase.Sealed or TargetPhase.Restoring or TargetPhase.Ended)
                ? UpdateOutcome.Failed
                : Refused(context) ? UpdateOutcome.Refused : UpdateOutcome.RolledBack;
        // Only a journal this run opened under the store's lock is written (a run refused by the lock has none):
        // the lock is released below, once this last record is durable.
        if (failure is not null && context.Journal is { } journal)
        {
            try
            {
                // A resume rolls nothing back: its failure leaves the journal unfinished (Failed) for the next attempt.
                var rolledBack = outcome is UpdateOutcome.RolledBack or UpdateOutcome.Refused && context.Mode != UpdateMode.Resume;
                journal.Fail(rolledBack ? JournalState.RolledBack : JournalState.Failed, failedStage, failure.Message, context);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidOperationException)
            {
                compensationFailed = true;
                results.Add(new StageResult("journal", StageStatus.CompensationFailed, TimeSpan.Zero, 1, e.Message));
            }
        }

        context.ReleaseLock();

        var targets = context.Targets.Select(TargetReport.From).ToList();
        TimeSpan? downtime = null;
        if (targets.Count > 0 && context.Targets.All(t => t.RestoredTimestamp is not null && t.DumpStartedTimestamp is not null))
        {
            // From the first freeze to the last resume.
            downtime = context.TimeProvider.GetElapsedTime(
                context.Targets.Min(t => t.DumpStartedTimestamp!.Value), context.Targets.Max(t => t.RestoredTimestamp!.Value));
        }

        var result = new UpdateResult
        {
            Outcome = outcome,
            Mode = context.Mode,
            SetId = context.SetId,
            FailedStage = failedStage,
            Error = failure?.Message,
            ErrorType = failure?.GetType().Name,
            Cancelled = cancelled,
            Stages = results,
            Targets = targets,
            Downtime = downtime,
            Duration = _time.GetElapsedTime(started),
            Exception = failure,
        };
        RebootlessTelemetry.Runs.Add(1, new("mode", context.Mode.ToString()), new("outcome", outcome.ToString()));
        run?.SetTag("rebootless.outcome", outcome.ToString());
        PipelineLog.RunFinished(context.Logger, context.Mode, outcome, context.SetId);
        return result;
    }

    /// <summary>
    /// True when the run failed before it touched any workload: no target was frozen, pre-dumped, dumped or restored
    /// (a resume that found nothing it could trust has no targets). A pipeline run without targets of its own
    /// (custom stages only) is rolled back, not refused: its stages may have changed anything.
    /// </summary>
    private static bool Refused(UpdateContext context) =>
        (context.Targets.Count > 0 || context.Mode == UpdateMode.Resume) && context.Targets.All(t => !t.Touched);

    /// <summary>Runs a stage with its retries; <paramref name="attempts"/> counts them as they start, so a stage that fails in the end still reports each.</summary>
    private async Task RunStageAsync(int index, UpdateContext context, StrongBox<int> attempts, CancellationToken cancellationToken)
    {
        var entry = _stages[index];
        var resilience = _resilience[index];
        if (resilience is null)
        {
            attempts.Value = 1;
            await entry.Stage.ExecuteAsync(context, cancellationToken).ConfigureAwait(false);
            return;
        }

        await resilience.ExecuteAsync(async (state, ct) =>
        {
            var attempt = ++attempts.Value;
            if (attempt > 1)
            {
                state.Progress?.Report(new UpdateProgress(UpdateProgressKind.StageRetrying, entry.Stage.Name, $"attempt {attempt}"));
            }

            await entry.Stage.ExecuteAsync(state, ct).ConfigureAwait(false);
        }, context, cancellationToken).ConfigureAwait(false);
    }

    private static ResiliencePipeline? BuildResilience(Entry entry, TimeProvider time)
    {
        var options = entry.Options;
        if (options.MaxRetryAttempts == 0 && options.Timeout is null)
        {
            return null;
        }

        var builder = new ResiliencePipelineBuilder { TimeProvider = time, Name = entry.Stage.Name };
        if (options.MaxRetryAttempts > 0)
        {
            var predicate = options.ShouldRetry;
            builder.AddRetry(new RetryStrategyOptions
            {
                MaxRetryAttempts = options.MaxRetryAttempts,
                Delay = options.RetryDelay,
                BackoffType = DelayBackoffType.Constant,
                UseJitter = false,
                // Cancellation is never a failure to retry.
                ShouldHandle = args => ValueTask.FromResult(args.Outcome.Exception is { } e
                    && e is not OperationCanceledException
                    && !args.Context.CancellationToken.IsCancellationRequested
                    && (predicate is null || predicate(e))),
            });
        }

        if (options.Timeout is { } timeout)
        {
            builder.AddTimeout(new TimeoutStrategyOptions { Timeout = timeout });
        }

        return builder.Build();
    }

    private static void Record(UpdateContext context, string stage, StageStatus status, TimeSpan elapsed) =>
        RebootlessTelemetry.StageDuration.Record(elapsed.TotalSeconds,
            new("stage", stage), new("mode", context.Mode.ToString()), new("status", status.ToString()));

    private static Exception Unwrap(Exception e) => e is AggregateException { InnerExceptions.Count: 1 } a ? a.InnerExceptions[0] : e;

    internal sealed record Entry(IUpdateStage Stage, StageOptions Options);
}
