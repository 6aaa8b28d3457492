using RebootlessUpdate.Kexec;
using RebootlessUpdate.Pipeline;

namespace RebootlessUpdate.Stages;

/// <summary>Records how the run ended in the journal: every target running again (with the longest downtime), or which ones need an operator.</summary>
internal abstract class ReportStage : IUpdateStage
{
    public string Name => "Report";

    public abstract ValueTask ExecuteAsync(UpdateContext context, CancellationToken cancellationToken);

    /// <summary>The targets not running again (refused, failed, or an interrupted restore still under way): they need an operator.</summary>
    protected static List<TargetRun> NotRunning(UpdateContext context) =>
        [.. context.Targets.Where(t => t.Phase is not (TargetPhase.Restored or TargetPhase.Resumed))];

    /// <summary>Journals the run as resumed, or fails it naming the targets not running (the journal stays unfinished so a later resume retries them).</summary>
    protected static void Finish(UpdateContext context, UpdateJournal journal, List<TargetRun> notRunning)
    {
        if (notRunning.Count > 0)
        {
            throw new InvalidOperationException($"{notRunning.Count} of {context.Targets.Count} target(s) not restored: "
                + string.Join("; ", notRunning.Select(t => $"{t.Target.Id}: {t.Error}")));
        }

        var downtimes = context.Targets.Where(t => t.Downtime is not null).Select(t => t.Downtime!.Value).ToList();
        journal.Transition(JournalState.Resumed, downtimes.Count == 0 ? null : $"longest downtime {downtimes.Max().TotalMilliseconds:0} ms");
    }
}

/// <summary>A rehearsal's Report: every workload was restored from the checked images, or the run fails naming those that were not.</summary>
internal sealed class RehearsalReportStage : ReportStage
{
    public override ValueTask ExecuteAsync(UpdateContext context, CancellationToken cancellationToken)
    {
        var journal = context.RequireJournal();
        journal.UpdateTargets(context);
        Finish(context, journal, NotRunning(context));
        return ValueTask.CompletedTask;
    }
}

/// <summary>
/// A resume's Report. After the jump: resumed. After a crash before the jump (same boot):
/// the kernel loaded for the jump is unloaded, and the run is journaled as rolled back.
/// </summary>
internal sealed class ResumeReportStage(KexecLoader? loader = null) : ReportStage
{
    public override async ValueTask ExecuteAsync(UpdateContext context, CancellationToken cancellationToken)
    {
        if (context.NothingToDo)
        {
            context.SkipStage("nothing to resume");
            return;
        }

        var journal = context.RequireJournal();
        journal.UpdateTargets(context);
        var notRunning = NotRunning(context);
        if (context.SameBoot)
        {
            // The jump never happened: a kernel it loaded must not be jumped into by a later `systemctl kexec`.
            var kexec = loader ?? new KexecLoader();
            if (kexec.IsLoaded)
            {
                await kexec.UnloadAsync(cancellationToken: cancellationToken).ConfigureAwait(false);
            }

            if (notRunning.Count == 0)
            {
                journal.Transition(JournalState.RolledBack, "a crash before the jump was recovered on the same kernel");
                return;
            }
        }

        Finish(context, journal, notRunning);
    }
}
