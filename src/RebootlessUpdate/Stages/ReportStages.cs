using RebootlessUpdate.Kexec;
using RebootlessUpdate.Pipeline;

namespace RebootlessUpdate.Stages;

/// <summary>
/// The Report of a rehearsal and of a resume: journals the run as resumed, with the longest downtime, once every
/// target runs again; otherwise fails naming the targets that need an operator (the journal stays unfinished, so a
/// later resume retries them).
/// </summary>
internal class ReportStage : IUpdateStage
{
    public string Name => "Report";

    public virtual ValueTask ExecuteAsync(UpdateContext context, CancellationToken cancellationToken)
    {
        var journal = context.RequireJournal();
        HandBackServices(context);
        journal.UpdateTargets(context);
        Finish(context, journal, NotRunning(context));
        return ValueTask.CompletedTask;
    }

    /// <summary>
    /// Every service target's unit gets its tree or its own configuration back, whichever path the run took, systemd
    /// holds every restored tree of a scope in it again, and runc knows every restored container again (a run that died between a restore and its hand-back is mended here).
    /// Safe to repeat; journaled after.
    /// </summary>
    protected static void HandBackServices(UpdateContext context)
    {
        foreach (var t in context.Targets)
        {
            _ = ServiceHandback.HandBack(context, t);
            ContainerHandback.AfterRestore(context, t, ContainerHandback.ImagesOf(context, t));
        }
    }

    /// <summary>The targets not running again (refused, failed, or an interrupted restore still under way): they need an operator.</summary>
    protected static List<TargetRun> NotRunning(UpdateContext context) =>
        [.. context.Targets.Where(t => t.Phase is not (TargetPhase.Restored or TargetPhase.Resumed))];

    /// <summary>Journals the run as resumed, or fails it naming the targets not running.</summary>
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

/// <summary>
/// A rollback's Report, after a crash before the jump (same boot): the kernel loaded for the jump is unloaded, and
/// the run is journaled as rolled back once every target runs again (else it fails naming those that do not).
/// </summary>
internal sealed class RollbackReportStage(KexecLoader? loader = null) : ReportStage
{
    public override async ValueTask ExecuteAsync(UpdateContext context, CancellationToken cancellationToken)
    {
        var journal = context.RequireJournal();
        HandBackServices(context);
        journal.UpdateTargets(context);

        // The jump never happened: a kernel it loaded must not be jumped into by a later `systemctl kexec`.
        var kexec = loader ?? new KexecLoader();
        if (kexec.IsLoaded)
        {
            await kexec.UnloadAsync(cancellationToken: cancellationToken).ConfigureAwait(false);
        }

        var notRunning = NotRunning(context);
        if (notRunning.Count == 0)
        {
            journal.Transition(JournalState.RolledBack, "a crash before the jump was recovered on the same kernel");
            return;
        }

        Finish(context, journal, notRunning);
    }
}
