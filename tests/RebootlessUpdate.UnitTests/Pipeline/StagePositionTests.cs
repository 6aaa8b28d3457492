using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;

namespace RebootlessUpdate.UnitTests.Pipeline;

/// <summary>Custom stages placed before or after a named stage, and where plain AddStage puts them in the standard pipelines.</summary>
public class StagePositionTests
{
    private static readonly Func<UpdateContext, CancellationToken, ValueTask> Nothing = (_, _) => ValueTask.CompletedTask;

    private static Func<UpdateContext, CancellationToken, ValueTask> Logs(List<string> log, string name) =>
        (_, _) => { log.Add(name); return ValueTask.CompletedTask; };

    [Test]
    public async Task A_stage_goes_right_before_or_after_the_named_one_and_runs_there()
    {
        var log = new List<string>();
        var builder = new UpdatePipelineBuilder().AddStage("a", Logs(log, "a")).AddStage("c", Logs(log, "c"))
            .AddStage("b", StagePosition.Before("c"), Logs(log, "b"))
            .AddStage("d", StagePosition.After("c"), Logs(log, "d"))
            .AddStage("first", StagePosition.Before("a"), Logs(log, "first"))
            .AddStage("a2", StagePosition.After("a"), Logs(log, "a2"));

        Assert.That(builder.StageNames, Is.EqualTo(new[] { "first", "a", "a2", "b", "c", "d" }));
        var result = await builder.Build().ExecuteAsync(new UpdateContext(UpdateMode.Rehearse, []));
        Assert.That(log, Is.EqualTo(new[] { "first", "a", "a2", "b", "c", "d" }));
        Assert.That(result.Outcome, Is.EqualTo(UpdateOutcome.Succeeded));
    }

    [Test]
    public void An_unknown_stage_is_refused_when_added_naming_it_and_listing_the_known_ones()
    {
        var builder = RebootlessPipelines.Rehearsal();
        var before = builder.StageNames;

        Assert.That(() => builder.AddStage("audit", StagePosition.Before("cleanup"), Nothing), Throws.ArgumentException
            .With.Property(nameof(ArgumentException.ParamName)).EqualTo("position")
            .And.Message.Contains("no stage named 'cleanup' to put 'audit' before it")
            .And.Message.Contains("Preflight, Plan, PreDump, Dump, Seal, Verify, Commit, Restore, Report, Cleanup")
            .And.Message.Contains("case-sensitive"));
        Assert.That(() => new UpdatePipelineBuilder().AddStage("x", StagePosition.After("Dump"), Nothing),
            Throws.ArgumentException.With.Message.Contains("no stage named 'Dump' to put 'x' after it; the pipeline has no stages yet"));
        Assert.That(builder.StageNames, Is.EqualTo(before), "a refused stage is not added");
    }

    [Test]
    public void A_duplicate_name_or_bad_options_are_refused_wherever_the_stage_would_go()
    {
        var builder = new UpdatePipelineBuilder().AddStage("a", Nothing).AddStage("b", Nothing);

        Assert.That(() => builder.AddStage("b", StagePosition.Before("a"), Nothing), Throws.ArgumentException.With.Message.Contains("already in the pipeline"));
        Assert.That(() => builder.AddStage("a", StagePosition.After("b"), Nothing), Throws.ArgumentException.With.Message.Contains("'a' is already"));
        Assert.That(() => builder.AddStage("r", StagePosition.Before("a"), Nothing, null, new StageOptions { MaxRetryAttempts = 1 }),
            Throws.ArgumentException.With.Message.Contains("SafeToRepeat"));
        Assert.That(() => StagePosition.Before(" "), Throws.ArgumentException);
        Assert.That(() => StagePosition.After(null!), Throws.ArgumentNullException);
        Assert.That(builder.StageNames, Is.EqualTo(new[] { "a", "b" }));
    }

    [Test]
    public void Plain_AddStage_puts_a_custom_stage_before_the_closing_stages_of_each_standard_pipeline()
    {
        Assert.That(RebootlessPipelines.Rehearsal().AddStage("health", Nothing).StageNames, Is.EqualTo(new[]
        {
            "Preflight", "Plan", "PreDump", "Dump", "Seal", "Verify", "Commit", "Restore", "health", "Report", "Cleanup",
        }), "after Restore, while the sealed set exists (Cleanup deletes it)");
        Assert.That(RebootlessPipelines.Resume().AddStage("health", Nothing).AddStage("undrain", Nothing).StageNames,
            Is.EqualTo(new[] { "Preflight", "Locate", "Verify", "Restore", "health", "undrain", "Report", "Cleanup" }), "in the order added");
        Assert.That(new UpdatePipelineBuilder(UpdateMode.Resume).AddPreflight().AddStage("x", Nothing).StageNames, Is.EqualTo(new[] { "Preflight", "x" }),
            "at the end while there is no closing stage");
        WithKernel(kernel => Assert.That(RebootlessPipelines.Update(new LoadKernelStageOptions { KernelPath = kernel }).AddStage("sync-disks", Nothing).StageNames,
            Is.EqualTo(new[] { "Preflight", "Plan", "LoadKernel", "PreDump", "Dump", "Seal", "sync-disks", "Jump" }), "nothing would run after the jump"));
    }

    [TestCase("After", "Cleanup")]
    [TestCase("Before", "Cleanup")]
    [TestCase("After", "Report")]
    public void Nothing_goes_after_Report_of_a_rehearsal_or_resume(string where, string stage)
    {
        var position = where == "After" ? StagePosition.After(stage) : StagePosition.Before(stage);
        foreach (var builder in new[] { RebootlessPipelines.Rehearsal(), RebootlessPipelines.Resume() })
        {
            Assert.That(() => builder.AddStage("audit", position, Nothing), Throws.ArgumentException
                .With.Property(nameof(ArgumentException.ParamName)).EqualTo("position")
                .And.Message.Contains($"'audit' cannot go {where.ToLowerInvariant()} '{stage}'")
                .And.Message.Contains("Report journals how the run ended; Cleanup deletes a rehearsal's set")
                .And.Message.Contains("Put it before 'Report'"));
            Assert.That(builder.AddStage("audit", StagePosition.Before("Report"), Nothing).StageNames.TakeLast(3), Is.EqualTo(new[] { "audit", "Report", "Cleanup" }));
        }
    }

    [Test]
    public void Nothing_goes_after_the_jump_and_a_stage_can_go_before_the_freeze()
    {
        WithKernel(kernel =>
        {
            var builder = RebootlessPipelines.Update(new LoadKernelStageOptions { KernelPath = kernel });
            Assert.That(() => builder.AddStage("late", StagePosition.After("Jump"), Nothing),
                Throws.ArgumentException.With.Message.Contains("Jump switches to the new kernel and does not return").And.Message.Contains("Put it before 'Jump'"));
            Assert.That(builder.AddStage("drain", StagePosition.Before("Dump"), Nothing).AddStage("synced", StagePosition.After("Seal"), Nothing).StageNames,
                Is.EqualTo(new[] { "Preflight", "Plan", "LoadKernel", "PreDump", "drain", "Dump", "Seal", "synced", "Jump" }));
        });
    }

    [Test]
    public void The_mode_rules_still_hold_with_inserted_stages()
    {
        Assert.That(() => new UpdatePipelineBuilder(UpdateMode.Rehearse).AddPreflight().AddStage("x", Nothing).AddReport().AddRestore(),
            Throws.InvalidOperationException.With.Message.Contains("Restore must come before Report: nothing runs after the run's closing stages"));
        Assert.That(() => new UpdatePipelineBuilder(UpdateMode.Update).AddStage("x", Nothing).AddStage("y", StagePosition.Before("x"), Nothing).AddJump(),
            Throws.InvalidOperationException.With.Message.Contains("Seal"), "a custom stage is no Seal");
        var pipeline = RebootlessPipelines.Rehearsal().AddStage("x", StagePosition.After("Dump"), Nothing).Build();
        Assert.That(pipeline.Mode, Is.EqualTo(UpdateMode.Rehearse));
        Assert.That(async () => await pipeline.ExecuteAsync(new UpdateContext(UpdateMode.Resume, [])),
            Throws.ArgumentException.With.Message.Contains("built for a rehearse run"));
    }

    [Test]
    public void A_built_builder_refuses_a_positioned_stage()
    {
        var builder = new UpdatePipelineBuilder().AddStage("a", Nothing);
        builder.Build();
        Assert.That(() => builder.AddStage("b", StagePosition.Before("a"), Nothing), Throws.InvalidOperationException.With.Message.Contains("already built"));
    }

    [Test]
    public void A_position_reads_as_it_is_written()
    {
        Assert.That(StagePosition.Before("Dump").ToString(), Is.EqualTo("before 'Dump'"));
        var afterSeal = StagePosition.After("Seal");
        Assert.That(afterSeal, Is.EqualTo(StagePosition.After("Se" + "al")).And.Not.EqualTo(StagePosition.Before("Seal")));
        Assert.That(afterSeal.IsAfter, Is.True);
        Assert.That(StagePosition.Default, Is.EqualTo(default(StagePosition)).And.Property(nameof(StagePosition.Stage)).Null);
    }

    private static void WithKernel(Action<string> test)
    {
        var kernel = Path.GetTempFileName();
        try
        {
            test(kernel);
        }
        finally
        {
            File.Delete(kernel);
        }
    }
}
