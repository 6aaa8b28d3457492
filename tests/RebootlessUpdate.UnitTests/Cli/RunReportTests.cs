using RebootlessUpdate.Cli;
using RebootlessUpdate.Images;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.UnitTests.Cli;

/// <summary>How a run's report becomes the tool's exit code and its one error line.</summary>
public class RunReportTests
{
    private static UpdateResult Result(UpdateOutcome outcome, Exception? e = null, bool cancelled = false, UpdateMode mode = UpdateMode.Rehearse) => new()
    {
        Outcome = outcome,
        Mode = mode,
        Stages = [],
        Targets = [],
        FailedStage = e is null ? null : "Dump",
        Error = e?.Message,
        Exception = e,
        Cancelled = cancelled,
    };

    [Test]
    public void Each_outcome_and_cause_has_its_exit_code()
    {
        var full = new StoreFullException("full", 0, null, null);
        var preflight = new PreflightException(new ReadinessReport([new ReadinessCheck("criu", false, "no criu", ReadinessProblem.CriuMissing)], null));
        Assert.Multiple(() =>
        {
            Assert.That(RunReport.CodeOf(Result(UpdateOutcome.Succeeded)), Is.EqualTo(ExitCodes.Ok));
            Assert.That(RunReport.ErrorOf(Result(UpdateOutcome.NothingToDo)), Is.Null);
            Assert.That(RunReport.CodeOf(Result(UpdateOutcome.RolledBack, new InvalidOperationException("x"))), Is.EqualTo(ExitCodes.Failed));
            Assert.That(RunReport.CodeOf(Result(UpdateOutcome.RolledBack, new InvalidOperationException("could not finish every dump", full))), Is.EqualTo(ExitCodes.StoreFull),
                "a store that filled during the dump is 10 however the dump wrapped it");
            Assert.That(RunReport.CodeOf(Result(UpdateOutcome.Refused, full)), Is.EqualTo(ExitCodes.StoreFull));
            Assert.That(RunReport.CodeOf(Result(UpdateOutcome.RolledBack, new AggregateException(new IOException("No space left on device") { HResult = 28 }))), Is.EqualTo(ExitCodes.StoreFull),
                "ENOSPC is a full store even where no stage named it so");
            Assert.That(RunReport.CodeOf(Result(UpdateOutcome.RolledBack, new IOException("Input/output error") { HResult = 5 })), Is.EqualTo(ExitCodes.Failed));
            Assert.That(RunReport.CodeOf(Result(UpdateOutcome.Refused, preflight)), Is.EqualTo(ExitCodes.CriuMissing));
            Assert.That(RunReport.CodeOf(Result(UpdateOutcome.Refused, new TargetNotFoundException("pid:9", "gone"))), Is.EqualTo(ExitCodes.UnknownTarget));
            Assert.That(RunReport.CodeOf(Result(UpdateOutcome.Refused, new UnsafeStorePathException("/s", "/s/.lock", "is a named pipe"))), Is.EqualTo(ExitCodes.BadStore),
                "a store that cannot be trusted is 8 wherever the run finds it out");
            Assert.That(RunReport.CodeOf(Result(UpdateOutcome.RolledBack, new OperationCanceledException(), cancelled: true)), Is.EqualTo(ExitCodes.Interrupted));
            Assert.That(RunReport.CodeOf(Result(UpdateOutcome.Failed, new OperationCanceledException(), cancelled: true)), Is.EqualTo(ExitCodes.NeedsAttention),
                "an interruption that could not put everything back needs attention first");
            Assert.That(RunReport.CodeOf(Result(UpdateOutcome.Failed, new InvalidOperationException("x"))), Is.EqualTo(ExitCodes.NeedsAttention));
        });
    }

    [Test]
    public void The_error_line_says_refused_rolled_back_or_interrupted_and_a_refused_resume_does_not_promise_running_workloads()
    {
        var e = new InvalidOperationException("boom");
        Assert.Multiple(() =>
        {
            Assert.That(RunReport.ErrorOf(Result(UpdateOutcome.Refused, e))!.Message, Does.StartWith("rehearse refused at Dump: boom"));
            Assert.That(RunReport.ErrorOf(Result(UpdateOutcome.Refused, e))!.Hint, Does.Contain("every workload runs as before"));
            Assert.That(RunReport.ErrorOf(Result(UpdateOutcome.Refused, e, mode: UpdateMode.Resume))!.Hint, Does.Not.Contain("runs as before"));
            Assert.That(RunReport.ErrorOf(Result(UpdateOutcome.RolledBack, e))!.Message, Does.StartWith("rehearse failed and rolled back at Dump"));
            Assert.That(RunReport.ErrorOf(Result(UpdateOutcome.RolledBack, e, cancelled: true))!.Message, Does.StartWith("rehearse interrupted and rolled back"));
            Assert.That(RunReport.ErrorOf(Result(UpdateOutcome.Failed, e))!.Hint, Does.Contain("not every workload is back"));
        });
    }

    [TestCase(0, "0 B")]
    [TestCase(1023, "1023 B")]
    [TestCase(1536, "1.5 KiB")]
    [TestCase(4404019, "4.2 MiB")]
    [TestCase(66571993088, "62.0 GiB")]
    [TestCase(3L << 40, "3.0 TiB")]
    public void Sizes_are_for_people(long bytes, string text) => Assert.That(CliOutput.Size(bytes), Is.EqualTo(text));

    [Test]
    public void An_error_is_one_line_whatever_its_message_holds() =>
        Assert.That(CliOutput.OneLine(new CliError(2, "first\nsecond\n", "do\nthis")), Is.EqualTo("rebootless: first; second (do; this)"));
}
