using RebootlessUpdate.Cli;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Pipeline;

namespace RebootlessUpdate.UnitTests.Cli;

/// <summary>The exit code's cause is found however the pipeline wrapped it (Commit wraps a target's failure).</summary>
public class ExitCauseTests
{
    private static readonly CriuTimeoutException Timeout = new("criu DUMP timed out after 5 s");

    [Test]
    public void A_timeout_is_found_directly_as_an_inner_exception_and_inside_an_aggregate()
    {
        Assert.Multiple(() =>
        {
            Assert.That(ExceptionCauses.Contains<CriuTimeoutException>(Timeout), Is.True);
            Assert.That(ExceptionCauses.Contains<CriuTimeoutException>(new InvalidOperationException("could not finish every dump", Timeout)), Is.True);
            Assert.That(ExceptionCauses.Contains<CriuTimeoutException>(new InvalidOperationException("could not finish every dump",
                new AggregateException(new IOException("disk"), Timeout))), Is.True);
        });
    }

    [Test]
    public void Other_failures_are_not_taken_for_a_timeout()
    {
        Assert.Multiple(() =>
        {
            Assert.That(ExceptionCauses.Contains<CriuTimeoutException>(null), Is.False);
            Assert.That(ExceptionCauses.Contains<CriuTimeoutException>(new InvalidOperationException("could not finish every dump",
                new AggregateException(new IOException("disk"), new CriuTransportException("broken")))), Is.False);
        });
    }
}
