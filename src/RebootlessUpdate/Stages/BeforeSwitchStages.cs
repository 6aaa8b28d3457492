using RebootlessUpdate.Criu;
using RebootlessUpdate.Images;
using RebootlessUpdate.Images.Interop;
using RebootlessUpdate.Kexec;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.Stages;

/// <summary>Root, criu, kexec (for an update: <paramref name="requireKexec"/>) and store readiness; changes nothing.</summary>
internal sealed class PreflightStage(bool requireKexec) : IUpdateStage
{
    public string Name => "Preflight";

    public async ValueTask ExecuteAsync(UpdateContext context, CancellationToken cancellationToken)
    {
        var report = await Readiness.CheckAsync(context.RequireCriu(), context.Store, requireKexec, false, cancellationToken).ConfigureAwait(false);
        context.CriuVersion = report.CriuVersion;
        if (!report.IsReady)
        {
            throw new PreflightException(report);
        }
    }
}

/// <summary>Resolves the targets, checks the estimate fits the store, locks the store, creates the set and the journal.</summary>
internal sealed class PlanStage(bool checkCapacity = true) : IUpdateStage
{
    public string Name => "Plan";

    public async ValueTask ExecuteAsync(UpdateContext context, CancellationToken cancellationToken)
    {
        var store = context.RequireStore();
        if (context.Targets.Count == 0)
        {
            throw new ArgumentException("nothing to checkpoint: name at least one target.");
        }

        for (var i = 0; i < context.Targets.Count; i++)
        {
            var t = context.Targets[i];
            var resolved = t.Target.Resolve();
            // Podman restores a podman target whole: lazy restore is for our own CRIU requests.
            t.Resolve(resolved, (context.LazyRestore || context.PagesFromStore) && resolved.Settings.Podman is null
                ? resolved.Settings with { LazyPages = true, PagesFromStore = context.PagesFromStore }
                : resolved.Settings, TargetFolders.FolderName(i, t.Target));
        }

        var roots = context.Targets.Select(t => t.Resolved!.RootPid).ToList();
        var daemons = LazyPagesDaemons.Judge();
        if (daemons.FirstOrDefault(d => d.BlocksCheckpointOf(roots)) is { } serving)
        {
            // A lazily restored tree is missing the pages its daemon has not delivered yet: a dump of it now would lose them.
            throw new InvalidOperationException($"{serving.Describe()}; a checkpoint now could miss the pages it has not delivered. "
                + "Wait until it exits (it does once every page is in) and try again; nothing was frozen.");
        }

        foreach (var orphan in daemons.Where(d => d.Role == LazyPagesDaemonRole.Orphan))
        {
            // Left by a killed lazy restore: it serves nothing, so it does not hold this run up; its store's resume stops it.
            context.ReportProgress(Name, $"{orphan.Describe()}; it does not hold this run up (`rebootless resume --store {orphan.StoreRoot}` stops it)");
        }

        if (checkCapacity)
        {
            context.Estimate = store.EnsureCapacityFor(roots);
        }

        context.StoreLock = store.AcquireLock();
        if (UpdateJournal.Unfinished(store.RootDirectory) is [var interrupted, ..])
        {
            // Not a failure of this run (it changed nothing): an operator decides about the other one first.
            throw new JournalException(JournalProblem.NeedsAttention, interrupted.SetId, interrupted.Describe() + ", then try again.");
        }

        context.CriuVersion ??= (await context.RequireCriu().GetVersionAsync(cancellationToken).ConfigureAwait(false)).ToString();
        var set = store.CreateSet([.. context.Targets.Select(t => t.Target.Id)]);
        context.CheckpointSet = set;
        context.SetId = set.Id;

        context.Journal = UpdateJournal.Create(store.RootDirectory, set.Id, context.Mode,
            // The root's start time from the start: after a crash, the next run tells "still running" from "gone" (or a reused pid).
            [.. context.Targets.Select(t => new JournalTarget
            {
                Id = t.Target.Id,
                Folder = t.Folder!,
                Settings = t.Settings!,
                RootPid = t.Resolved!.RootPid,
                RootStartTime = context.Processes.IdentityOf(t.Resolved.RootPid)?.StartTime ?? 0,
            })],
            context.StoreLock,
            context.TimeProvider);
        PipelineLog.JournalTransition(context.Logger, set.Id, JournalState.Planned);
        context.ReportProgress(Name, $"set {set.Id}: {context.Targets.Count} target(s)" + (context.Estimate is { } e
            ? $", {e.Processes} processes, about {e.RequiredBytes} bytes needed, {e.FreeBytes} free" : ""));
    }

    public ValueTask CompensateAsync(UpdateContext context, CancellationToken cancellationToken)
    {
        // The images are only worth keeping when a target could not be put back running.
        if (context.CheckpointSet is { } set && context.Targets.All(t => t.Phase is TargetPhase.Resumed or TargetPhase.Restored or TargetPhase.Planned))
        {
            context.RequireStore().DeleteSet(set.Id);
        }

        // The lock stays held: the pipeline journals the rollback, then releases it.
        return ValueTask.CompletedTask;
    }
}

/// <summary>Loads the next kernel while the workloads still run (loading takes seconds; none of it may fall inside the freeze).</summary>
internal sealed class LoadKernelStage(LoadKernelStageOptions options) : IUpdateStage
{
    private readonly KexecLoader _loader = options.Loader ?? new KexecLoader();

    public string Name => "LoadKernel";

    public async ValueTask ExecuteAsync(UpdateContext context, CancellationToken cancellationToken)
    {
        var journal = context.RequireJournal();
        var current = KexecCommandLine.ReadCurrent(options.CurrentCommandLinePath);
        var next = KexecCommandLine.ComposeNext(current, new NextCommandLineOptions
        {
            ResumeSetId = context.SetId,
            PersistentMemoryRegions = options.PersistentMemoryRegions,
            SetParameters = options.SetParameters,
            RemoveParameters = options.RemoveParameters,
        });
        var result = await _loader.LoadAsync(new KexecLoadRequest
        {
            KernelPath = options.KernelPath,
            InitrdPath = options.InitrdPath,
            NoInitrd = options.NoInitrd,
            CommandLine = next.ToString(),
            Method = options.Method,
        }, cancellationToken).ConfigureAwait(false);
        context.KernelLoaded = true;
        journal.Transition(JournalState.KernelLoaded, $"{result.KernelPath} ({result.Method})",
            r => r with { NextKernel = result.KernelPath, NextCommandLine = result.CommandLine });
    }

    public async ValueTask CompensateAsync(UpdateContext context, CancellationToken cancellationToken)
    {
        if (context.KernelLoaded)
        {
            await _loader.UnloadAsync(options.Method, cancellationToken).ConfigureAwait(false);
            context.KernelLoaded = false;
        }
    }
}

/// <summary>Copies memory while the targets run (needs soft-dirty tracking), so the final dump has less to copy.</summary>
internal sealed class PreDumpStage(PreDumpStageOptions options) : IUpdateStage
{
    public string Name => "PreDump";

    public async ValueTask ExecuteAsync(UpdateContext context, CancellationToken cancellationToken)
    {
        var criu = context.RequireCriu();
        var features = await criu.CheckFeaturesAsync(cancellationToken).ConfigureAwait(false);
        if (!features.MemoryTracking)
        {
            const string reason = "memory tracking (soft-dirty, CONFIG_MEM_SOFT_DIRTY) is not available in this kernel: the final dump copies all memory while frozen";
            if (options.Required)
            {
                throw new CriuFeatureUnavailableException("a pre-dump was required but " + reason);
            }

            context.SkipStage(reason);
            return;
        }

        var set = context.RequireSet();
        foreach (var t in context.Targets)
        {
            if (PodmanHandover.IsPodman(t))
            {
                // Podman dumps its container whole, inside the freeze: it has no pre-dump to build on.
                context.ReportProgress(Name, "no pre-dump: podman checkpoints the container whole inside the freeze", t.Target.Id);
                continue;
            }

            var folder = t.Folder + "-pre";
            var dir = Path.Combine(set.ImagesDirectory, folder);
            Directory.CreateDirectory(dir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            var dump = t.Settings!.ToDump(t.Resolved!.RootPid, dir, TargetFolders.WorkDirectory(context, t)) with { TrackMemory = true, LogFile = "pre-dump.log" };
            t.PreDumpAsked();
            try
            {
                await criu.SinglePreDumpAsync(dump, cancellationToken).ConfigureAwait(false);
            }
            catch (CriuRequestFailedException e)
            {
                // CRIU answered and let the tree run on: a pre-dump is an optimisation, never a reason to fail. This
                // target is dumped whole inside the freeze, first (see DumpStage); the others keep their pre-dumps.
                // A lost worker or a timeout is not an answer (the tree may still be held) and fails the stage.
                RefusePreDump(context, t, dir, e);
                continue;
            }

            t.PreDumped(folder);
            var bytes = TargetFolders.FolderBytes(dir);
            context.ReportProgress(Name, $"pre-dumped {bytes} bytes while running", t.Target.Id, bytes);
        }

        // Hashed now, after every pre-dump (hashing between them would let the later targets dirty more
        // memory) and while the workloads run: the seal inside the freeze then only hashes the final dumps.
        // Best effort: what is not hashed here is hashed at seal.
        foreach (var t in context.Targets.Where(t => t.PreDumpFolder is not null))
        {
            try
            {
                await context.RequireStore().PrehashAsync(set, t.PreDumpFolder!, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception e) when (e is IOException or ImageStoreException or UnauthorizedAccessException or ArgumentException)
            {
                PipelineLog.TargetWarning(context.Logger, t.Target.Id, $"pre-dump images not hashed ahead ({e.Message}); the seal hashes them");
            }
        }
    }

    private void RefusePreDump(UpdateContext context, TargetRun t, string dir, CriuRequestFailedException e)
    {
        var reason = e.Message.Split('\n', 2)[0];
        t.PreDumpWasRefused(reason);
        // Its log stays in the work folder; a partial pre-dump would only be read by a later dump that names it, so
        // one that cannot be removed is left for the seal to hash (and Cleanup to remove), not a reason to fail.
        try
        {
            Directory.Delete(dir, recursive: true);
        }
        catch (Exception io) when (io is IOException or UnauthorizedAccessException)
        {
            PipelineLog.TargetWarning(context.Logger, t.Target.Id, $"its refused pre-dump's folder {dir} stays: {io.Message}");
        }

        PipelineLog.TargetWarning(context.Logger, t.Target.Id, $"CRIU refused its pre-dump ({reason}); it is dumped whole inside the freeze, before the other targets");
        context.ReportProgress(Name, $"pre-dump refused by CRIU ({reason}): dumped whole inside the freeze, first", t.Target.Id);
    }
}

/// <summary>
/// Freezes and dumps every target, one after the other. CRIU then holds each one frozen in
/// its post-dump notification: a later failure vetoes (the targets resume in
/// place, nothing to restore); Commit or Jump lets CRIU end them.
/// </summary>
internal sealed class DumpStage(DumpStageOptions options) : IUpdateStage
{
    public string Name => "Dump";

    public async ValueTask ExecuteAsync(UpdateContext context, CancellationToken cancellationToken)
    {
        var criu = context.RequireCriu();
        var set = context.RequireSet();
        var journal = context.RequireJournal();
        journal.Transition(JournalState.Dumping);
        // One target after the other: concurrent criu dumps on one host collide (criu 4.1.1's
        // parasite fails with EEXIST creating its /proc folder). Each target stays frozen
        // after its dump until all are held, so the set is consistent.
        // Those CRIU refused a pre-dump are dumped whole, first: if that fails too, no other target was frozen yet.
        foreach (var t in context.Targets.OrderBy(t => t.PreDumpRefused is null))
        {
            TargetDump.Start(context, t, criu, set, options.OnCriuNotification, cancellationToken);
            if (PodmanHandover.IsPodman(t))
            {
                // Podman ends the container once its export is written, with no hold to veto: its root and the dump's
                // start are journaled before, and its end after, so a run killed meanwhile restores it from the export.
                journal.UpdateTargets(context);
            }

            await TargetDump.WaitHeldAsync(context, t, set, options, cancellationToken).ConfigureAwait(false);
            if (PodmanHandover.IsPodman(t))
            {
                journal.UpdateTargets(context);
            }

            if (t.Phase == TargetPhase.Failed)
            {
                break;
            }
        }

        journal.UpdateTargets(context);
        var failed = context.Targets.Where(t => t.Phase == TargetPhase.Failed).ToList();
        if (failed.Count == 1 && failed[0].DumpException is { } only)
        {
            throw only;
        }

        if (failed.Count > 0)
        {
            throw new AggregateException("dumping failed for " + string.Join("; ", failed.Select(t => $"{t.Target.Id}: {t.Error}")),
                failed.Select(t => t.DumpException!));
        }
    }

    public async ValueTask CompensateAsync(UpdateContext context, CancellationToken cancellationToken) =>
        await TargetRollback.RollBackAsync(context).ConfigureAwait(false);
}

/// <summary>Seals the set: fsyncs and hashes every image, writes the manifest (while CRIU still holds the targets).</summary>
internal sealed class SealStage : IUpdateStage
{
    public string Name => "Seal";

    public async ValueTask ExecuteAsync(UpdateContext context, CancellationToken cancellationToken)
    {
        CheckpointManifest manifest;
        try
        {
            manifest = await context.RequireStore().SealAsync(context.RequireSet(), new SealOptions { CriuVersion = context.CriuVersion ?? "unknown" }, cancellationToken).ConfigureAwait(false);
        }
        catch (IOException e) when (e.HResult == Libc.ENoSpc)
        {
            throw new StoreFullException($"the store filled up while sealing set {context.RequireSet().Id} (its manifest could not be written): free space in the store and try again", 0, null, e);
        }

        foreach (var t in context.Targets.Where(t => t.Phase == TargetPhase.Frozen))
        {
            t.MarkSealed();
        }

        // One record: the set sealed and its held targets with it (the jump is armed only for sealed targets).
        context.RequireJournal().Transition(JournalState.Sealed, $"{manifest.Files.Count} files, {manifest.TotalBytes} bytes", context);
    }
}

/// <summary>Rehearsal: lets CRIU finish the held dumps (the original processes end) so that Restore can prove the images work.</summary>
internal sealed class CommitStage : IUpdateStage
{
    public string Name => "Commit";

    public async ValueTask ExecuteAsync(UpdateContext context, CancellationToken cancellationToken) =>
        await TargetDump.CommitAsync(context).ConfigureAwait(false);
}

/// <summary>
/// Arms the jump (refused unless the journal says the set is sealed), lets CRIU end
/// the held targets, syncs and jumps. Returns only by throwing; a refused or failed
/// jump is rolled back (the targets are restored from the sealed images).
/// </summary>
internal sealed class JumpStage(JumpStageOptions options) : IUpdateStage
{
    public string Name => "Jump";

    public async ValueTask ExecuteAsync(UpdateContext context, CancellationToken cancellationToken)
    {
        var journal = context.RequireJournal();
        journal.Transition(JournalState.Jumping);
        var jump = options.Jump ?? new KexecJump();
        using var armed = jump.Arm(new JournalJumpGuard(journal));
        var carried = context.Store as IKexecHandoverStore;
        if (carried is not null && jump.JumpsThroughSystemd)
        {
            // Before CRIU lets the targets go: the rollback resumes them where they are.
            throw new KexecException(KexecFailureReason.JumpRefused, HandoverNeedsDirectJump);
        }

        ServiceHandback.OrderResumeFirst(context);
        await TargetDump.CommitAsync(context).ConfigureAwait(false);
        IKexecHandover? handover = null;
        if (carried is not null)
        {
            // The last step before the jump: nothing is written into the store after this (the journal said Jumping).
            // From here until the kernel jumps the store lives only in this process: the file systems are flushed first
            // (the jump's own sync is then short), and the OOM killer is told to spare it.
            Libc.Sync();
            ShieldFromOomKiller();
            try
            {
                handover = carried.HandOver(context.RequireSet().Id);
            }
            catch (ImageStoreException)
            {
                // The store's files are back in place: the rollback restores the targets from them.
                ServiceHandback.ClearResumeOrder(context);
                throw;
            }

            context.ReportProgress(Name, $"store handed to {handover.Carrier}: {handover.Files} files, {handover.Bytes} bytes");
        }

        context.PointOfNoReturnPassed = true;
        try
        {
            await armed.JumpAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (KexecException e) when (e.Reason is KexecFailureReason.JumpRefused or KexecFailureReason.JumpFailed)
        {
            // Still on this kernel: the rollback restores the targets from the images.
            context.PointOfNoReturnPassed = false;
            ServiceHandback.ClearResumeOrder(context);
            throw;
        }
        finally
        {
            // Reached only when the jump did not happen (a jump returns only by throwing): the store is this kernel's again.
            GiveBack(context, handover);
        }
    }

    /// <summary>oom_score_adj -1000 for this process (best effort: a kernel or a sandbox may refuse).</summary>
    private static void ShieldFromOomKiller()
    {
        try
        {
            File.WriteAllText("/proc/self/oom_score_adj", "-1000");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Not fatal: the window is short; the store is lost only if this process is killed within it.
        }
    }

    /// <summary>Why a store handed to the kernel cannot cross a jump made by systemd.</summary>
    internal const string HandoverNeedsDirectJump = "systemd is PID 1 here, and `systemctl kexec` ends every process before the kernel jumps: "
        + "a LUO session dies with the process that holds it, so the store would not cross. Use a persistent-memory store (--pmem) on this host";

    private void GiveBack(UpdateContext context, IKexecHandover? handover)
    {
        if (handover is null)
        {
            return;
        }

        try
        {
            handover.GiveBack();
        }
        catch (ImageStoreException e)
        {
            // The rollback's verification names what is missing; the files are not lost (the message says where they are).
            context.ReportProgress(Name, "the store was not given back whole: " + e.Message);
        }
    }
}

/// <summary>Arms the jump only when the journal shows a sealed set whose every target is sealed (held) or dumped.</summary>
internal sealed class JournalJumpGuard(UpdateJournal journal) : IJumpGuard
{
    public bool IsCheckpointSealed(out string reason)
    {
        var record = journal.Record;
        if (!record.History.Any(h => h.State == JournalState.Sealed))
        {
            reason = $"journal {record.SetId} never reached 'sealed' (state {record.State})";
            return false;
        }

        var notReady = record.Targets.Where(t => t.Phase is not (TargetPhase.Sealed or TargetPhase.Dumped)).ToList();
        if (notReady.Count > 0)
        {
            reason = "targets not checkpointed: " + string.Join(", ", notReady.Select(t => $"{t.Id} ({t.Phase})"));
            return false;
        }

        reason = string.Empty;
        return true;
    }
}
