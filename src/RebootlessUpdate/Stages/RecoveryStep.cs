using RebootlessUpdate.Pipeline;

namespace RebootlessUpdate.Stages;

/// <summary>
/// One step of a run after boot (Verify, Restore, Report, Cleanup), done by the stage of the kind of run its Locate
/// stage decided on: a resume, a rollback, or nothing to do. Each kind's step is its own stage class, so no stage
/// branches on the kind; a kind that has no such step skips it.
/// </summary>
internal sealed class RecoveryStep(string name, IUpdateStage resume, IUpdateStage? rollback, IUpdateStage? nothingToDo = null) : IUpdateStage
{
    public string Name => name;

    /// <summary>The stage that does this step for <paramref name="kind"/> (null: the step has nothing to do there).</summary>
    internal IUpdateStage? For(RecoveryKind kind) => kind switch
    {
        RecoveryKind.Resume => resume,
        RecoveryKind.Rollback => rollback,
        _ => nothingToDo,
    };

    public async ValueTask ExecuteAsync(UpdateContext context, CancellationToken cancellationToken)
    {
        if (For(context.Recovery) is not { } stage)
        {
            context.SkipStage(context.Recovery == RecoveryKind.NothingToDo ? "nothing to resume" : $"a {Describe(context.Recovery)} has no {name} step");
            return;
        }

        await stage.ExecuteAsync(context, cancellationToken).ConfigureAwait(false);
    }

    public ValueTask CompensateAsync(UpdateContext context, CancellationToken cancellationToken) =>
        For(context.Recovery)?.CompensateAsync(context, cancellationToken) ?? ValueTask.CompletedTask;

    private static string Describe(RecoveryKind kind) => kind == RecoveryKind.Rollback ? "rollback" : "resume";
}
