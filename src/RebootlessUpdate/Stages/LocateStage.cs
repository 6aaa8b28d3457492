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
                context.Recovery = RecoveryKind.NothingToDo;
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
            context.Recovery = RecoveryKind.NothingToDo;
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
        var rollback = journal.Record.BootId == SystemInfo.BootId();
        context.Recovery = rollback ? RecoveryKind.Rollback : RecoveryKind.Resume;
        var images = Path.Combine(store.RootDirectory, "sets", setId, "images");
        var runs = new List<TargetRun>();
        if (rollback)
        {
            // A crash before the jump: a CRIU worker of the dead run may still hold a tree
            // (frozen at post-dump until it notices its client is gone, then it resumes it).
            // Judge each target only once CRIU let go of it.
            await ReleasedByCriuAsync(context, journal.Record.Targets, images, cancellationToken).ConfigureAwait(false);
        }

        foreach (var jt in journal.Record.Targets)
        {
            var run = Load(jt, images);
            await DecideAsync(context, run, jt, cancellationToken).ConfigureAwait(false);
            runs.Add(run);
        }

        context.Targets = runs;
        context.ReportProgress(Name, $"set {setId}: journal state {journal.State}, {(rollback ? "same boot (rolling back)" : "new boot")}");
    }

    /// <summary>A target as its journal left it (before deciding what it needs).</summary>
    /// <remarks>On the same boot the original may still hold its pids: the Restore stage waits for them (see <see cref="PidRelease"/>).</remarks>
    internal static TargetRun Load(JournalTarget jt, string images) => TargetRun.FromJournal(jt, images);

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
                    context.TimeProvider, context.Processes, cancellationToken, work).ConfigureAwait(false);
                switch (outcome)
                {
                    case InterruptedRestore.Outcome.Running:
                        run.MoveTo(TargetPhase.Restored);
                        break;
                    case InterruptedRestore.Outcome.NotRunning:
                        run.NothingRestored();
                        break;
                    case InterruptedRestore.Outcome.RanAndExited:
                        run.End($"CRIU restored it as pid {jt.RestoredPid} and let it run (its restore log says so), and it has exited since; "
                            + $"not restored a second time (its images are kept in {run.ImagesDirectory})");
                        break;
                    default:
                        // Still restoring: it stays so, and is not asked for again.
                        run.LeftRestoring($"an interrupted restore is still under way after {options.InterruptedRestoreWait.TotalSeconds:0} s "
                            + $"(process(es) {string.Join(", ", holders)} hold its images {run.ImagesDirectory}); not restored a second time: "
                            + $"run `rebootless resume --set {context.SetId}` once they have ended");
                        break;
                }

                if (outcome is InterruptedRestore.Outcome.NotRunning or InterruptedRestore.Outcome.RanAndExited)
                {
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
                    run.ServedBy(Criu.CriuLazyPagesDaemon.Find(work), null);
                }

                PipelineLog.TargetEvent(context.Logger, jt.Id, outcome == InterruptedRestore.Outcome.Running
                    ? $"an interrupted restore had let the tree run: adopted as pid {run.RestoredPid}"
                    : $"interrupted restore: {outcome}");
                return;
            case TargetPhase.Restored when (run.RestoredRoot is { } restored && context.Processes.IsAlive(restored))
                || (run.RestoredStartTime is null && jt.RestoredPid is { } pid && context.Processes.IdentityOf(pid) is not null):
                run.MoveTo(TargetPhase.Restored); // restored by an earlier, interrupted run (an older journal has no start time)
                return;
            case TargetPhase.Restored:
            case TargetPhase.Failed when jt.RestoredPid is not null:
                // It ran after its restore and has ended since: its images are older than what it did, so restoring them
                // again would be a second life, not a recovery.
                run.End($"it was restored as pid {jt.RestoredPid} and has exited since; not restored a second time (its images are kept in {run.ImagesDirectory})");
                return;
            case TargetPhase.Ended:
                return;
        }

        if (context.Recovery == RecoveryKind.Rollback && run.Original is { } original && context.Processes.IsAlive(original))
        {
            run.MoveTo(TargetPhase.Resumed); // never ended: a crash before the jump let it run on
        }
        else if (jt.Phase == TargetPhase.Resumed)
        {
            // It ran on in place after a rollback and has ended since: its checkpoint is older than what it did.
            run.End($"it ran on in place (pid {jt.RootPid}) after the rollback and has exited since; not restored from the older checkpoint");
        }
        else if (jt.Phase is TargetPhase.Frozen or TargetPhase.Sealed or TargetPhase.Dumped or TargetPhase.Failed
            || (PodmanHandover.IsPodman(run) && run.Original is not null && PodmanHandover.HasExport(run.ImagesDirectory!)))
        {
            // (A podman target has no hold: podman ended it once its export was written, maybe after this run's death.)
            run.MoveTo(TargetPhase.Dumped);
        }
        else
        {
            run.Fail($"its processes are gone and the journal shows no completed dump (phase {jt.Phase})");
        }
    }

    private async Task ReleasedByCriuAsync(UpdateContext context, IReadOnlyList<JournalTarget> targets, string images, CancellationToken cancellationToken)
    {
        var start = context.TimeProvider.GetTimestamp();
        foreach (var jt in targets)
        {
            while (jt.RootStartTime != 0 && context.Processes.IsTraced(new ProcessIdentity(jt.RootPid, jt.RootStartTime))
                && context.TimeProvider.GetElapsedTime(start) < options.CriuReleaseWait)
            {
                await Task.Delay(20, cancellationToken).ConfigureAwait(false);
            }

            // A podman checkpoint outlives the run that asked for it: judged once podman no longer writes its export.
            while (jt.Settings.Podman is not null && context.Processes.HoldersOf(Path.Combine(images, jt.Folder)).Count > 0
                && context.TimeProvider.GetElapsedTime(start) < options.CriuReleaseWait)
            {
                await Task.Delay(100, cancellationToken).ConfigureAwait(false);
            }

            if (jt.Settings.FreezeCgroup is { } cgroup)
            {
                // A CRIU that died while freezing through the cgroup leaves it frozen; nobody else will thaw it.
                try
                {
                    context.Freezer.Thaw(cgroup);
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
