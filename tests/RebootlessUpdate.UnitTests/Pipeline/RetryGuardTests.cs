using RebootlessUpdate.Pipeline;

namespace RebootlessUpdate.UnitTests.Pipeline;

/// <summary>
/// The two guards that keep a stage marked safe to repeat from being retried on cancellation
/// (UpdatePipeline's retry predicate), each tested alone: the other guard cannot catch the case.
/// </summary>
public class RetryGuardTests
{
    private static readonly StageOptions Retried = new() { SafeToRepeat = true, MaxRetryAttempts = 5, RetryDelay = TimeSpan.Zero };

    [Test]
    public async Task A_stage_that_throws_OperationCanceledException_is_not_retried_even_when_the_caller_did_not_cancel()
    {
        // E.g. a CRIU notification handler or an inner timeout cancelled: the caller's token is untouched,
        // so only the exception's type tells it is a cancellation.
        var attempts = 0;
        using var inner = new CancellationTokenSource();
        var pipeline = new UpdatePipelineBuilder().AddStage("restore", (_, _) =>
        {
            attempts++;
            inner.Cancel();
            throw new OperationCanceledException("the stage's own operation was cancelled", inner.Token);
        }, null, Retried).Build();

        var result = await pipeline.ExecuteAsync(new UpdateContext(UpdateMode.Rehearse, []), CancellationToken.None);

        Assert.That(attempts, Is.EqualTo(1), "cancellation is never a failure to retry");
        Assert.That(result.Stages[0].Attempts, Is.EqualTo(1));
        Assert.That(result.ErrorType, Is.EqualTo(nameof(OperationCanceledException)));
        Assert.That(result.Cancelled, Is.False, "the caller did not cancel");
    }

    [Test]
    public async Task A_stage_failing_with_another_error_after_the_caller_cancelled_is_not_retried_and_its_own_error_is_reported()
    {
        // The caller cancels while the stage runs; the stage fails with an ordinary error (e.g. the I/O it
        // was doing broke): only the caller's token tells that retrying would go against the caller.
        var attempts = 0;
        using var caller = new CancellationTokenSource();
        var pipeline = new UpdatePipelineBuilder().AddStage("restore", (_, _) =>
        {
            attempts++;
            caller.Cancel();
            throw new IOException("the restore broke off");
        }, null, Retried).Build();

        var result = await pipeline.ExecuteAsync(new UpdateContext(UpdateMode.Rehearse, []), caller.Token);

        Assert.That(attempts, Is.EqualTo(1));
        Assert.That(result.Stages[0].Attempts, Is.EqualTo(1));
        Assert.That(result.ErrorType, Is.EqualTo(nameof(IOException)), "the stage's own failure, not a retry abandoned by cancellation");
        Assert.That(result.Error, Is.EqualTo("the restore broke off"));
    }
}
