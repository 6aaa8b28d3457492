using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;

namespace RebootlessUpdate.UnitTests.Pipeline;

public class UpdatePipelineTests
{
    private sealed class FakeStage(string name, List<string> log, Func<int, Exception?>? failOnAttempt = null) : IUpdateStage
    {
        public int Attempts { get; private set; }

        public string Name => name;

        public ValueTask ExecuteAsync(UpdateContext context, CancellationToken cancellationToken)
        {
            Attempts++;
            log.Add("run " + name);
            cancellationToken.ThrowIfCancellationRequested();
            if (failOnAttempt?.Invoke(Attempts) is { } e)
            {
                throw e;
            }

            return ValueTask.CompletedTask;
        }

        public ValueTask CompensateAsync(UpdateContext context, CancellationToken cancellationToken)
        {
            log.Add("undo " + name);
            return ValueTask.CompletedTask;
        }
    }

    private static UpdateContext Context() => new(UpdateMode.Rehearse, []);

    [Test]
    public async Task Stages_run_in_order_and_each_gets_a_timing()
    {
        var log = new List<string>();
        var pipeline = new UpdatePipelineBuilder()
            .AddStage(new FakeStage("a", log)).AddStage(new FakeStage("b", log)).AddStage(new FakeStage("c", log)).Build();

        var result = await pipeline.ExecuteAsync(Context());

        Assert.That(log, Is.EqualTo(new[] { "run a", "run b", "run c" }));
        Assert.That(result.Outcome, Is.EqualTo(UpdateOutcome.Succeeded));
        Assert.That(result.Stages.Select(s => (s.Name, s.Status, s.Attempts)), Is.EqualTo(new[]
        {
            ("a", StageStatus.Completed, 1), ("b", StageStatus.Completed, 1), ("c", StageStatus.Completed, 1),
        }));
        Assert.That(result.Stages.All(s => s.Duration >= TimeSpan.Zero), Is.True);
    }

    [Test]
    public async Task A_failure_compensates_the_failing_stage_and_every_earlier_one_in_reverse_order_and_skips_the_rest()
    {
        var log = new List<string>();
        var pipeline = new UpdatePipelineBuilder()
            .AddStage(new FakeStage("a", log)).AddStage(new FakeStage("b", log))
            .AddStage(new FakeStage("c", log, _ => new InvalidOperationException("boom"))).AddStage(new FakeStage("d", log)).Build();

        var result = await pipeline.ExecuteAsync(Context());

        Assert.That(log, Is.EqualTo(new[] { "run a", "run b", "run c", "undo c", "undo b", "undo a" }));
        Assert.That(result.Outcome, Is.EqualTo(UpdateOutcome.RolledBack));
        Assert.That(result.FailedStage, Is.EqualTo("c"));
        Assert.That(result.Error, Is.EqualTo("boom"));
        Assert.That(result.Stages.Select(s => s.Status), Is.EqualTo(new[]
        {
            StageStatus.Completed, StageStatus.Completed, StageStatus.Failed,
            StageStatus.Compensated, StageStatus.Compensated, StageStatus.Compensated,
        }));
    }

    [Test]
    public async Task A_failing_compensation_makes_the_outcome_failed_and_the_others_still_run()
    {
        var log = new List<string>();
        var pipeline = new UpdatePipelineBuilder()
            .AddStage(new FakeStage("a", log))
            .AddStage("b", (_, _) => ValueTask.CompletedTask, (_, _) => throw new IOException("cannot undo b"))
            .AddStage(new FakeStage("c", log, _ => new InvalidOperationException("boom"))).Build();

        var result = await pipeline.ExecuteAsync(Context());

        Assert.That(result.Outcome, Is.EqualTo(UpdateOutcome.Failed));
        Assert.That(log, Does.Contain("undo a"));
        Assert.That(result.Stages.Single(s => s.Status == StageStatus.CompensationFailed).Message, Is.EqualTo("cannot undo b"));
    }

    [Test]
    public async Task After_the_point_of_no_return_nothing_is_compensated()
    {
        var log = new List<string>();
        var pipeline = new UpdatePipelineBuilder()
            .AddStage(new FakeStage("a", log))
            .AddStage("jump", (ctx, _) => { ctx.PointOfNoReturnPassed = true; throw new InvalidOperationException("lost"); }).Build();

        var result = await pipeline.ExecuteAsync(Context());

        Assert.That(log, Is.EqualTo(new[] { "run a" }));
        Assert.That(result.Outcome, Is.EqualTo(UpdateOutcome.Failed));
    }

    [Test]
    public async Task A_stage_marked_safe_to_repeat_is_retried_until_it_succeeds()
    {
        var log = new List<string>();
        var flaky = new FakeStage("restore", log, n => n < 3 ? new IOException("pid taken") : null);
        var pipeline = new UpdatePipelineBuilder()
            .AddStage(flaky, new StageOptions { SafeToRepeat = true, MaxRetryAttempts = 3, RetryDelay = TimeSpan.Zero }).Build();

        var result = await pipeline.ExecuteAsync(Context());

        Assert.That(result.Outcome, Is.EqualTo(UpdateOutcome.Succeeded));
        Assert.That(result.Stages[0].Attempts, Is.EqualTo(3));
    }

    [Test]
    public async Task Retries_stop_at_the_budget_and_honour_the_predicate()
    {
        var log = new List<string>();
        var always = new FakeStage("s", log, _ => new IOException("no"));
        var never = new FakeStage("t", log, _ => new FormatException("permanent"));
        var p1 = new UpdatePipelineBuilder().AddStage(always, new StageOptions { SafeToRepeat = true, MaxRetryAttempts = 2, RetryDelay = TimeSpan.Zero }).Build();
        var p2 = new UpdatePipelineBuilder().AddStage(never, new StageOptions
        {
            SafeToRepeat = true, MaxRetryAttempts = 5, RetryDelay = TimeSpan.Zero, ShouldRetry = e => e is IOException,
        }).Build();

        var r1 = await p1.ExecuteAsync(Context());
        var r2 = await p2.ExecuteAsync(Context());

        Assert.That(always.Attempts, Is.EqualTo(3));
        Assert.That(r1.Outcome, Is.EqualTo(UpdateOutcome.RolledBack));
        Assert.That(r1.Stages[0].Attempts, Is.EqualTo(3), "a stage that failed in the end reports every attempt");
        Assert.That(never.Attempts, Is.EqualTo(1));
        Assert.That(r2.Stages[0].Attempts, Is.EqualTo(1));
        Assert.That(r2.Error, Is.EqualTo("permanent"));
    }

    [Test]
    public async Task Cancellation_is_never_retried_and_still_compensates()
    {
        var log = new List<string>();
        using var cts = new CancellationTokenSource();
        var cancelling = new FakeStage("s", log, _ =>
        {
            cts.Cancel();
            return new OperationCanceledException(cts.Token);
        });
        var pipeline = new UpdatePipelineBuilder()
            .AddStage(new FakeStage("a", log))
            .AddStage(cancelling, new StageOptions { SafeToRepeat = true, MaxRetryAttempts = 5, RetryDelay = TimeSpan.Zero }).Build();

        var result = await pipeline.ExecuteAsync(Context(), cts.Token);

        Assert.That(cancelling.Attempts, Is.EqualTo(1));
        Assert.That(result.Cancelled, Is.True);
        Assert.That(log, Is.EqualTo(new[] { "run a", "run s", "undo s", "undo a" }));
    }

    [Test]
    public async Task A_stage_timeout_abandons_the_attempt()
    {
        var pipeline = new UpdatePipelineBuilder()
            .AddStage("slow", async (_, ct) => await Task.Delay(TimeSpan.FromSeconds(30), ct), null, new StageOptions { Timeout = TimeSpan.FromMilliseconds(50) })
            .Build();

        var result = await pipeline.ExecuteAsync(Context());

        Assert.That(result.Outcome, Is.EqualTo(UpdateOutcome.RolledBack));
        Assert.That(result.ErrorType, Is.EqualTo("TimeoutRejectedException"));
        Assert.That(result.Cancelled, Is.False);
    }

    [Test]
    public async Task A_stage_can_skip_itself_with_a_reason()
    {
        var pipeline = new UpdatePipelineBuilder().AddStage("maybe", (ctx, _) => { ctx.SkipStage("not needed"); return ValueTask.CompletedTask; }).Build();

        var result = await pipeline.ExecuteAsync(Context());

        Assert.That(result.Stages[0], Has.Property("Status").EqualTo(StageStatus.Skipped).And.Property("Message").EqualTo("not needed"));
    }

    [Test]
    public async Task Progress_reports_every_stage_start_and_end()
    {
        var events = new List<UpdateProgress>();
        var pipeline = new UpdatePipelineBuilder().AddStage("a", (_, _) => ValueTask.CompletedTask).AddStage("b", (_, _) => ValueTask.CompletedTask).Build();

        await pipeline.ExecuteAsync(new UpdateContext(UpdateMode.Rehearse, []) { Progress = new SyncProgress(events) });

        Assert.That(events.Select(e => (e.Kind, e.Stage)), Is.EqualTo(new[]
        {
            (UpdateProgressKind.StageStarted, "a"), (UpdateProgressKind.StageCompleted, "a"),
            (UpdateProgressKind.StageStarted, "b"), (UpdateProgressKind.StageCompleted, "b"),
        }));
    }

    [Test]
    public void Options_are_validated_when_a_stage_is_added()
    {
        var b = new UpdatePipelineBuilder();
        Assert.Multiple(() =>
        {
            Assert.That(() => b.AddStage("r", (_, _) => default, null, new StageOptions { MaxRetryAttempts = 2 }),
                Throws.ArgumentException.With.Message.Contains("SafeToRepeat"));
            Assert.That(() => b.AddStage("t", (_, _) => default, null, new StageOptions { Timeout = TimeSpan.Zero }),
                Throws.ArgumentException.With.Message.Contains("timeout"));
            Assert.That(() => b.AddStage("n", (_, _) => default, null, new StageOptions { SafeToRepeat = true, MaxRetryAttempts = 11 }),
                Throws.ArgumentException);
            Assert.That(() => b.AddStage(" ", (_, _) => default), Throws.ArgumentException);
        });
        b.AddStage("x", (_, _) => default);
        Assert.That(() => b.AddStage("x", (_, _) => default), Throws.ArgumentException.With.Message.Contains("already"));
    }

    [Test]
    public void A_builder_cannot_be_reused_after_build_and_a_context_serves_one_run()
    {
        var b = new UpdatePipelineBuilder().AddStage("x", (_, _) => default);
        var pipeline = b.Build();
        Assert.That(() => b.AddStage("y", (_, _) => default), Throws.InvalidOperationException);
        Assert.That(() => b.Build(), Throws.InvalidOperationException);
        Assert.That(() => new UpdatePipelineBuilder().Build(), Throws.InvalidOperationException);
        var ctx = Context();
        Assert.That(async () => await pipeline.ExecuteAsync(ctx), Throws.Nothing);
        Assert.That(async () => await pipeline.ExecuteAsync(ctx), Throws.InvalidOperationException);
    }

    [Test]
    public void A_standard_stage_needs_a_builder_made_for_its_kind_of_run()
    {
        Assert.That(() => new UpdatePipelineBuilder().AddVerify(),
            Throws.InvalidOperationException.With.Message.Contains("new UpdatePipelineBuilder(UpdateMode."), "which Verify: the rehearsal's or the resume's?");
        Assert.That(() => new UpdatePipelineBuilder().AddPreflight(), Throws.InvalidOperationException, "kexec is required by an update's only");
        Assert.That(() => new UpdatePipelineBuilder(UpdateMode.Rehearse).AddJump(),
            Throws.InvalidOperationException.With.Message.Contains("no place in a rehearsal pipeline"));
        Assert.That(() => new UpdatePipelineBuilder(UpdateMode.Rehearse).AddLocate(), Throws.InvalidOperationException);
        Assert.That(() => new UpdatePipelineBuilder(UpdateMode.Update).AddRestore(),
            Throws.InvalidOperationException.With.Message.Contains("rehearsal or a resume"), "an update restores after the jump, in its resume");
        Assert.That(() => new UpdatePipelineBuilder(UpdateMode.Resume).AddCommit(), Throws.InvalidOperationException);
        Assert.That(() => new UpdatePipelineBuilder(UpdateMode.Resume).AddDump(), Throws.InvalidOperationException);
        Assert.That(() => new UpdatePipelineBuilder((UpdateMode)7), Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(new UpdatePipelineBuilder(UpdateMode.Resume).AddPreflight().AddVerify().AddReport().Build().Mode, Is.EqualTo(UpdateMode.Resume));
    }

    [Test]
    public async Task A_pipeline_built_for_one_kind_of_run_refuses_a_context_of_another_before_any_stage_runs()
    {
        var ran = false;
        var pipeline = new UpdatePipelineBuilder(UpdateMode.Resume).AddStage("x", (_, _) => { ran = true; return ValueTask.CompletedTask; }).Build();

        Assert.That(async () => await pipeline.ExecuteAsync(new UpdateContext(UpdateMode.Rehearse, [])),
            Throws.ArgumentException.With.Message.Contains("built for a resume run").And.Message.Contains("UpdateMode.Rehearse"));
        Assert.That(ran, Is.False);
        Assert.That((await pipeline.ExecuteAsync(new UpdateContext(UpdateMode.Resume, []))).Outcome, Is.EqualTo(UpdateOutcome.Succeeded));
        Assert.That(ran, Is.True);
        Assert.That((await new UpdatePipelineBuilder().AddStage("y", (_, _) => ValueTask.CompletedTask).Build().ExecuteAsync(new UpdateContext(UpdateMode.Update, []))).Outcome,
            Is.EqualTo(UpdateOutcome.Succeeded), "a pipeline of custom stages takes any kind");
    }

    [Test]
    public void The_standard_pipelines_have_the_documented_order_and_jump_needs_seal()
    {
        Assert.That(RebootlessPipelines.Rehearsal().StageNames, Is.EqualTo(new[]
        {
            "Preflight", "Plan", "PreDump", "Dump", "Seal", "Verify", "Commit", "Restore", "Report", "Cleanup",
        }));
        Assert.That(RebootlessPipelines.Resume().StageNames, Is.EqualTo(new[] { "Preflight", "Locate", "Verify", "Restore", "Report", "Cleanup" }));
        Assert.That(() => new UpdatePipelineBuilder(UpdateMode.Update).AddJump(), Throws.InvalidOperationException.With.Message.Contains("Seal"));
        var kernel = Path.GetTempFileName();
        try
        {
            Assert.That(() => new UpdatePipelineBuilder(UpdateMode.Update).AddDump().AddLoadKernel(new LoadKernelStageOptions { KernelPath = kernel }),
                Throws.InvalidOperationException.With.Message.Contains("before Dump"));
            Assert.That(() => new UpdatePipelineBuilder(UpdateMode.Update).AddLoadKernel(new LoadKernelStageOptions { KernelPath = kernel + ".missing" }),
                Throws.ArgumentException.With.Message.Contains("does not exist"));
            Assert.That(RebootlessPipelines.Update(new LoadKernelStageOptions { KernelPath = kernel }).StageNames,
                Is.EqualTo(new[] { "Preflight", "Plan", "LoadKernel", "PreDump", "Dump", "Seal", "Jump" }));
        }
        finally
        {
            File.Delete(kernel);
        }
    }

    [Test]
    public void Target_specifications_parse_and_duplicates_are_refused()
    {
        Assert.That(Targets.UpdateTarget.Parse("pid:42").Id, Is.EqualTo("pid:42"));
        Assert.That(Targets.UpdateTarget.Parse("42").Id, Is.EqualTo("pid:42"));
        Assert.That(Targets.UpdateTarget.Parse("cgroup:/sys/fs/cgroup/freezer/app").Id, Is.EqualTo("cgroup:/sys/fs/cgroup/freezer/app"));
        Assert.That(Targets.UpdateTarget.Parse("container:web-1").Id, Is.EqualTo("container:web-1"));
        Assert.That(() => Targets.UpdateTarget.Parse("container"), Throws.TypeOf<FormatException>());
        Assert.That(() => Targets.UpdateTarget.Parse("container:"), Throws.TypeOf<FormatException>());
        Assert.That(() => new UpdateContext(UpdateMode.Rehearse, [Targets.UpdateTarget.Parse("7"), Targets.UpdateTarget.Parse("pid:7")]),
            Throws.ArgumentException.With.Message.Contains("twice"));
    }

    private sealed class SyncProgress(List<UpdateProgress> events) : IProgress<UpdateProgress>
    {
        public void Report(UpdateProgress value) => events.Add(value);
    }
}
