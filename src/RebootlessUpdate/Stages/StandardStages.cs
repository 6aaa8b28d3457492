using RebootlessUpdate.Pipeline;

namespace RebootlessUpdate.Stages;

/// <summary>
/// Adds the standard stages to a pipeline. Before the switch:
/// Preflight → Plan → LoadKernel → PreDump → Dump → Seal → Jump;
/// a rehearsal replaces LoadKernel/Jump by Verify → Commit → Restore → Report → Cleanup;
/// after boot: Preflight → Locate → Verify → Restore → Report → Cleanup.
/// </summary>
public static class StandardStages
{
    /// <summary>Root, criu, kexec (updates only) and store readiness.</summary>
    public static UpdatePipelineBuilder AddPreflight(this UpdatePipelineBuilder builder) =>
        Check(builder).AddStage(new PreflightStage());

    /// <summary>Resolves targets, checks capacity, locks the store, creates the set and journal.</summary>
    public static UpdatePipelineBuilder AddPlan(this UpdatePipelineBuilder builder) =>
        Check(builder).AddStage(new PlanStage());

    /// <summary>Loads the next kernel while the workloads run; must come before Dump.</summary>
    public static UpdatePipelineBuilder AddLoadKernel(this UpdatePipelineBuilder builder, LoadKernelStageOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        if (Check(builder).StageNames.Contains("Dump"))
        {
            throw new InvalidOperationException("LoadKernel must come before Dump: loading takes seconds and none of it may fall inside the freeze.");
        }

        return builder.AddStage(new LoadKernelStage(options));
    }

    /// <summary>Optional pre-dump while running; skipped with a logged reason when memory tracking is unavailable (unless required).</summary>
    public static UpdatePipelineBuilder AddPreDump(this UpdatePipelineBuilder builder, PreDumpStageOptions? options = null) =>
        Check(builder).AddStage(new PreDumpStage(options ?? new PreDumpStageOptions()));

    /// <summary>Freezes and dumps every target; CRIU holds them until commit or veto.</summary>
    public static UpdatePipelineBuilder AddDump(this UpdatePipelineBuilder builder, DumpStageOptions? options = null) =>
        Check(builder).AddStage(new DumpStage(options ?? new DumpStageOptions()));

    /// <summary>Seals the set (hashes, manifest).</summary>
    public static UpdatePipelineBuilder AddSeal(this UpdatePipelineBuilder builder) =>
        Check(builder).AddStage(new SealStage());

    /// <summary>Rehearsal: lets CRIU end the held targets so Restore can prove the images.</summary>
    public static UpdatePipelineBuilder AddCommit(this UpdatePipelineBuilder builder) =>
        Check(builder).AddStage(new CommitStage());

    /// <summary>Arms and performs the kexec jump; must come after Seal.</summary>
    public static UpdatePipelineBuilder AddJump(this UpdatePipelineBuilder builder, JumpStageOptions? options = null)
    {
        if (!Check(builder).StageNames.Contains("Seal"))
        {
            throw new InvalidOperationException("Jump must come after Seal: the jump is armed only for a sealed set.");
        }

        return builder.AddStage(new JumpStage(options ?? new JumpStageOptions()));
    }

    /// <summary>After boot: finds the set and its journal.</summary>
    public static UpdatePipelineBuilder AddLocate(this UpdatePipelineBuilder builder, LocateStageOptions? options = null) =>
        Check(builder).AddStage(new LocateStage(options ?? new LocateStageOptions()));

    /// <summary>Verifies every hash of the set (after boot, the page images while they are restored: see <see cref="VerifyStageOptions"/>).</summary>
    public static UpdatePipelineBuilder AddVerify(this UpdatePipelineBuilder builder, VerifyStageOptions? options = null) =>
        Check(builder).AddStage(new VerifyStage(options ?? new VerifyStageOptions()));

    /// <summary>Restores the targets in parallel; retried (it skips restored targets, so repeating is safe).</summary>
    public static UpdatePipelineBuilder AddRestore(this UpdatePipelineBuilder builder, RestoreStageOptions? options = null, StageOptions? stageOptions = null)
    {
        options ??= new RestoreStageOptions();
        options.Validate();
        return Check(builder).AddStage(new RestoreStage(options), stageOptions ?? new StageOptions { SafeToRepeat = true, MaxRetryAttempts = 2, RetryDelay = TimeSpan.FromMilliseconds(500) });
    }

    /// <summary>Records the end state in the journal.</summary>
    public static UpdatePipelineBuilder AddReport(this UpdatePipelineBuilder builder) =>
        Check(builder).AddStage(new ReportStage());

    /// <summary>Releases the lock; deletes a rehearsal's set or applies retention.</summary>
    public static UpdatePipelineBuilder AddCleanup(this UpdatePipelineBuilder builder, CleanupStageOptions? options = null)
    {
        options ??= new CleanupStageOptions();
        options.Validate();
        return Check(builder).AddStage(new CleanupStage(options));
    }

    private static UpdatePipelineBuilder Check(UpdatePipelineBuilder builder)
    {
        ArgumentNullException.ThrowIfNull(builder);
        return builder;
    }
}

/// <summary>The standard pipelines, each a builder ready for more stages (e.g. a health check after restore).</summary>
public static class RebootlessPipelines
{
    /// <summary>Rehearsal: Preflight, Plan, PreDump, Dump, Seal, Verify, Commit, Restore, Report, Cleanup.</summary>
    public static UpdatePipelineBuilder Rehearsal(DumpStageOptions? dump = null, CleanupStageOptions? cleanup = null) =>
        new UpdatePipelineBuilder().AddPreflight().AddPlan().AddPreDump().AddDump(dump).AddSeal().AddVerify().AddCommit()
            .AddRestore().AddReport().AddCleanup(cleanup);

    /// <summary>First half of an update: Preflight, Plan, LoadKernel, PreDump, Dump, Seal, Jump. Add custom stages before calling AddJump yourself when needed: use <see cref="UpdateBeforeJump"/>.</summary>
    public static UpdatePipelineBuilder Update(LoadKernelStageOptions kernel, DumpStageOptions? dump = null, JumpStageOptions? jump = null) =>
        UpdateBeforeJump(kernel, dump).AddJump(jump);

    /// <summary>An update without its Jump stage, for inserting stages (e.g. "drain the load balancer") before adding <see cref="StandardStages.AddJump"/>.</summary>
    public static UpdatePipelineBuilder UpdateBeforeJump(LoadKernelStageOptions kernel, DumpStageOptions? dump = null) =>
        new UpdatePipelineBuilder().AddPreflight().AddPlan().AddLoadKernel(kernel).AddPreDump().AddDump(dump).AddSeal();

    /// <summary>Second half, after boot: Preflight, Locate, Verify, Restore, Report, Cleanup.</summary>
    public static UpdatePipelineBuilder Resume(LocateStageOptions? locate = null, CleanupStageOptions? cleanup = null, RestoreStageOptions? restore = null) =>
        new UpdatePipelineBuilder().AddPreflight().AddLocate(locate).AddVerify().AddRestore(restore).AddReport().AddCleanup(cleanup);
}
