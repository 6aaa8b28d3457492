using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.UnitTests.Pipeline;

/// <summary>Refused (nothing touched) against RolledBack (touched and put back): what a run did to its targets decides.</summary>
public class RefusedOutcomeTests
{
    private static UpdatePipeline Failing(Action<UpdateContext> before) => new UpdatePipelineBuilder()
        .AddStage("touch", (c, _) =>
        {
            before(c);
            return ValueTask.CompletedTask;
        })
        .AddStage("fail", (_, _) => throw new InvalidOperationException("boom")).Build();

    [Test]
    public async Task A_failure_before_any_target_was_asked_for_is_refused()
    {
        var result = await Failing(_ => { }).ExecuteAsync(new UpdateContext(UpdateMode.Rehearse, [UpdateTarget.ProcessTree(4242)]));
        Assert.That(result.Outcome, Is.EqualTo(UpdateOutcome.Refused));
    }

    [Test]
    public async Task A_failure_after_a_pre_dump_or_a_dump_was_asked_for_is_rolled_back()
    {
        var preDumped = await Failing(c => c.Targets[0].PreDumpAsked()).ExecuteAsync(new UpdateContext(UpdateMode.Rehearse, [UpdateTarget.ProcessTree(4242)]));
        var dumped = await Failing(c => c.Targets[0].DumpRequested("/nonexistent", new ProcessIdentity(4242, 1), false, 1, DateTimeOffset.UnixEpoch, new TargetRun.Pending())).ExecuteAsync(new UpdateContext(UpdateMode.Update, [UpdateTarget.ProcessTree(4242)]));
        Assert.Multiple(() =>
        {
            Assert.That(preDumped.Outcome, Is.EqualTo(UpdateOutcome.RolledBack));
            Assert.That(dumped.Outcome, Is.EqualTo(UpdateOutcome.RolledBack));
        });
    }

    [Test]
    public async Task A_resume_that_found_nothing_to_trust_is_refused_and_a_run_of_custom_stages_alone_is_rolled_back()
    {
        var resume = await Failing(_ => { }).ExecuteAsync(new UpdateContext(UpdateMode.Resume, []));
        var custom = await Failing(_ => { }).ExecuteAsync(new UpdateContext(UpdateMode.Rehearse, []));
        Assert.Multiple(() =>
        {
            Assert.That(resume.Outcome, Is.EqualTo(UpdateOutcome.Refused));
            Assert.That(custom.Outcome, Is.EqualTo(UpdateOutcome.RolledBack), "its stages may have changed anything");
        });
    }
}
