namespace RebootlessUpdate.Pipeline;

/// <summary>
/// One step of an update, rehearsal or resume. Stages are composed with
/// <see cref="UpdatePipelineBuilder"/>; hosting platforms add their own (for
/// example "tell the load balancer before freezing" or "health-check after restore").
/// </summary>
public interface IUpdateStage
{
    /// <summary>The stage's name, unique within a pipeline; shown in progress, logs and the report.</summary>
    string Name { get; }

    /// <summary>Does the stage's work. Throwing fails the pipeline, which then compensates.</summary>
    /// <param name="context">The run's shared state (targets, store, journal, results).</param>
    /// <param name="cancellationToken">Cancels the stage (the caller's token, plus the stage's timeout when one is set).</param>
    ValueTask ExecuteAsync(UpdateContext context, CancellationToken cancellationToken);

    /// <summary>
    /// Undoes what <see cref="ExecuteAsync"/> did, when this stage or a later one failed
    /// before the point of no return. Called in reverse order of execution, for the
    /// failing stage too (it may have done part of its work), never for a stage that did not start.
    /// Default: nothing to undo.
    /// </summary>
    /// <param name="context">The run's shared state.</param>
    /// <param name="cancellationToken">Not cancelled by the caller's token: a rollback must finish.</param>
    ValueTask CompensateAsync(UpdateContext context, CancellationToken cancellationToken) => ValueTask.CompletedTask;
}
