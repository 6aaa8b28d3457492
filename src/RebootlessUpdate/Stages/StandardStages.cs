using RebootlessUpdate.Pipeline;

namespace RebootlessUpdate.Stages;

/// <summary>
/// Adds the standard stages to a pipeline. Before the switch:
/// Preflight → Plan → LoadKernel → PreDump → Dump → Seal → Jump;
/// a rehearsal replaces LoadKernel/Jump by Verify → Commit → Restore → Report → Cleanup;
/// after boot: Preflight → Locate → Verify → Restore → Report → Cleanup, where Locate decides whether the run is a
/// resume (after the jump), a rollback (a crash before the jump, same boot) or has nothing to do, and each of the
/// four steps after it is done by that kind's own stage (<see cref="RecoveryStep"/>).
/// A standard stage does one kind of run's work: the builder must be made for that kind
/// (<c>new UpdatePipelineBuilder(UpdateMode.Resume)</c>), and a stage that has no place in
/// it (a Jump in a rehearsal, a Locate before a dump) is refused when added.
/// </summary>
public static class StandardStages
{
    /// <summary>Root, criu, kexec (updates only) and store readiness.</summary>
    public static UpdatePipelineBuilder AddPreflight(this UpdatePipelineBuilder builder) =>
        builder.AppendStage(new PreflightStage(requireKexec: KindOf(builder, "Preflight") == UpdateMode.Update));

    /// <summary>Resolves targets, checks capacity, locks the store, creates the set and journal.</summary>
    public static UpdatePipelineBuilder AddPlan(this UpdatePipelineBuilder builder) =>
        For(builder, "Plan", UpdateMode.Update, UpdateMode.Rehearse).AppendStage(new PlanStage());

    /// <summary>Loads the next kernel while the workloads run; must come before Dump.</summary>
    public static UpdatePipelineBuilder AddLoadKernel(this UpdatePipelineBuilder builder, LoadKernelStageOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        if (For(builder, "LoadKernel", UpdateMode.Update).StageNames.Contains("Dump"))
        {
            throw new InvalidOperationException("LoadKernel must come before Dump: loading takes seconds and none of it may fall inside the freeze.");
        }

        return builder.AppendStage(new LoadKernelStage(options));
    }

    /// <summary>Optional pre-dump while running; skipped with a logged reason when memory tracking is unavailable (unless required).</summary>
    public static UpdatePipelineBuilder AddPreDump(this UpdatePipelineBuilder builder, PreDumpStageOptions? options = null) =>
        For(builder, "PreDump", UpdateMode.Update, UpdateMode.Rehearse).AppendStage(new PreDumpStage(options ?? new PreDumpStageOptions()));

    /// <summary>Freezes and dumps every target; CRIU holds them until commit or veto.</summary>
    public static UpdatePipelineBuilder AddDump(this UpdatePipelineBuilder builder, DumpStageOptions? options = null)
    {
        options ??= new DumpStageOptions();
        options.Validate();
        return For(builder, "Dump", UpdateMode.Update, UpdateMode.Rehearse).AppendStage(new DumpStage(options));
    }

    /// <summary>Seals the set (hashes, manifest).</summary>
    public static UpdatePipelineBuilder AddSeal(this UpdatePipelineBuilder builder) =>
        For(builder, "Seal", UpdateMode.Update, UpdateMode.Rehearse).AppendStage(new SealStage());

    /// <summary>Rehearsal: lets CRIU end the held targets so Restore can prove the images.</summary>
    public static UpdatePipelineBuilder AddCommit(this UpdatePipelineBuilder builder) =>
        For(builder, "Commit", UpdateMode.Rehearse).AppendStage(new CommitStage());

    /// <summary>Arms and performs the kexec jump; must come after Seal.</summary>
    public static UpdatePipelineBuilder AddJump(this UpdatePipelineBuilder builder, JumpStageOptions? options = null)
    {
        if (!For(builder, "Jump", UpdateMode.Update).StageNames.Contains("Seal"))
        {
            throw new InvalidOperationException("Jump must come after Seal: the jump is armed only for a sealed set.");
        }

        return builder.AppendClosingStage(new JumpStage(options ?? new JumpStageOptions()), "Jump switches to the new kernel and does not return");
    }

    /// <summary>After boot: finds the set and its journal.</summary>
    public static UpdatePipelineBuilder AddLocate(this UpdatePipelineBuilder builder, LocateStageOptions? options = null) =>
        For(builder, "Locate", UpdateMode.Resume).AppendStage(new LocateStage(options ?? new LocateStageOptions()));

    /// <summary>Verifies every hash of the set (after boot, the page images while they are restored: see <see cref="VerifyStageOptions"/>).</summary>
    public static UpdatePipelineBuilder AddVerify(this UpdatePipelineBuilder builder, VerifyStageOptions? options = null)
    {
        options ??= new VerifyStageOptions();
        return builder.AppendStage(KindOf(builder, "Verify", UpdateMode.Rehearse, UpdateMode.Resume) == UpdateMode.Rehearse
            ? new RehearsalVerifyStage()
            : new RecoveryStep("Verify", new ResumeVerifyStage(options), new RollbackVerifyStage(options)));
    }

    /// <summary>
    /// Restores the targets in parallel; retried (it skips restored targets, so repeating is safe), except when a
    /// target's pids stayed in use for the whole <see cref="RestoreStageOptions.PidReleaseWait"/>: a retry would only
    /// wait that long again.
    /// </summary>
    public static UpdatePipelineBuilder AddRestore(this UpdatePipelineBuilder builder, RestoreStageOptions? options = null, StageOptions? stageOptions = null)
    {
        options ??= new RestoreStageOptions();
        options.Validate();
        IUpdateStage stage = KindOf(builder, "Restore", UpdateMode.Rehearse, UpdateMode.Resume) == UpdateMode.Rehearse
            ? new RehearsalRestoreStage(options)
            : new RecoveryStep("Restore", new ResumeRestoreStage(options), new RollbackRestoreStage(options));
        return builder.AppendStage(stage, stageOptions ?? new StageOptions
        {
            SafeToRepeat = true,
            MaxRetryAttempts = 2,
            RetryDelay = TimeSpan.FromMilliseconds(500),
            ShouldRetry = e => !ExceptionCauses.Contains<PidsInUseException>(e),
        });
    }

    /// <summary>Records the end state in the journal.</summary>
    public static UpdatePipelineBuilder AddReport(this UpdatePipelineBuilder builder) =>
        builder.AppendClosingStage(KindOf(builder, "Report", UpdateMode.Rehearse, UpdateMode.Resume) == UpdateMode.Rehearse
            ? new ReportStage()
            : new RecoveryStep("Report", new ReportStage(), new RollbackReportStage()), "Report journals how the run ended");

    /// <summary>Releases the lock; deletes a rehearsal's set or applies retention.</summary>
    public static UpdatePipelineBuilder AddCleanup(this UpdatePipelineBuilder builder, CleanupStageOptions? options = null)
    {
        options ??= new CleanupStageOptions();
        options.Validate();
        return builder.AppendClosingStage(KindOf(builder, "Cleanup", UpdateMode.Rehearse, UpdateMode.Resume) == UpdateMode.Rehearse
            ? new RehearsalCleanupStage(options)
            : new RecoveryStep("Cleanup", new ResumeCleanupStage(options), new RollbackCleanupStage(options), new NothingToResumeCleanupStage(options)),
            "Cleanup deletes a rehearsal's set and prunes the store");
    }

    /// <summary>The kind of run <paramref name="builder"/> is for, when <paramref name="stage"/> has a place in it (any kind when none is listed).</summary>
    private static UpdateMode KindOf(UpdatePipelineBuilder builder, string stage, params UpdateMode[] allowed)
    {
        ArgumentNullException.ThrowIfNull(builder);
        if (builder.Mode is not { } mode)
        {
            throw new InvalidOperationException($"{stage} is a standard stage and does one kind of run's work: create the builder for that kind, "
                + "e.g. new UpdatePipelineBuilder(UpdateMode.Resume), or start from RebootlessPipelines.");
        }

        if (allowed.Length > 0 && !allowed.Contains(mode))
        {
            throw new InvalidOperationException($"{stage} has no place in a {Describe(mode)} pipeline; it belongs in "
                + string.Join(" or ", allowed.Select(a => $"a {Describe(a)}")) + " pipeline.");
        }

        return mode;
    }

    private static UpdatePipelineBuilder For(UpdatePipelineBuilder builder, string stage, params UpdateMode[] allowed)
    {
        KindOf(builder, stage, allowed);
        return builder;
    }

    private static string Describe(UpdateMode mode) => mode switch
    {
        UpdateMode.Update => "update (before the jump)",
        UpdateMode.Rehearse => "rehearsal",
        _ => "resume (after the jump)",
    };
}

/// <summary>
/// The standard pipelines, each a builder ready for more stages (e.g. a health check after restore): see
/// <see cref="StagePosition"/> for where a custom stage goes.
/// </summary>
public static class RebootlessPipelines
{
    /// <summary>
    /// Rehearsal: Preflight, Plan, PreDump, Dump, Seal, Verify, Commit, Restore, Report, Cleanup. A custom stage added with
    /// plain <c>AddStage</c> goes after Restore and before Report, while the sealed set still exists.
    /// </summary>
    public static UpdatePipelineBuilder Rehearsal(DumpStageOptions? dump = null, CleanupStageOptions? cleanup = null, RestoreStageOptions? restore = null) =>
        new UpdatePipelineBuilder(UpdateMode.Rehearse).AddPreflight().AddPlan().AddPreDump().AddDump(dump).AddSeal().AddVerify().AddCommit()
            .AddRestore(restore).AddReport().AddCleanup(cleanup);

    /// <summary>
    /// First half of an update: Preflight, Plan, LoadKernel, PreDump, Dump, Seal, Jump. A custom stage added with plain
    /// <c>AddStage</c> goes before Jump; use <c>StagePosition.Before("Dump")</c> for one that must run before the freeze.
    /// </summary>
    public static UpdatePipelineBuilder Update(LoadKernelStageOptions kernel, DumpStageOptions? dump = null, JumpStageOptions? jump = null) =>
        UpdateBeforeJump(kernel, dump).AddJump(jump);

    /// <summary>An update without its Jump stage, for inserting stages (e.g. "drain the load balancer") before adding <see cref="StandardStages.AddJump"/>.</summary>
    public static UpdatePipelineBuilder UpdateBeforeJump(LoadKernelStageOptions kernel, DumpStageOptions? dump = null) =>
        new UpdatePipelineBuilder(UpdateMode.Update).AddPreflight().AddPlan().AddLoadKernel(kernel).AddPreDump().AddDump(dump).AddSeal();

    /// <summary>Second half, after boot: Preflight, Locate, Verify, Restore, Report, Cleanup. A custom stage added with plain <c>AddStage</c> goes before Report.</summary>
    public static UpdatePipelineBuilder Resume(LocateStageOptions? locate = null, CleanupStageOptions? cleanup = null, RestoreStageOptions? restore = null) =>
        new UpdatePipelineBuilder(UpdateMode.Resume).AddPreflight().AddLocate(locate).AddVerify().AddRestore(restore).AddReport().AddCleanup(cleanup);
}
