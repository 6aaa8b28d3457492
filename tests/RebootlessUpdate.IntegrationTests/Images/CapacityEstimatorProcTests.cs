using RebootlessUpdate.Images;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Images;

/// <summary>
/// The size estimate against the host's real /proc, where a process without memory answers ESRCH: one between
/// releasing its memory and becoming a zombie (a short-lived child of a shell tree, met in CI) or a kernel thread.
/// </summary>
public class CapacityEstimatorProcTests
{
    [Test]
    public void Processes_without_memory_count_zero_and_are_not_an_error()
    {
        Testbed.RequireRoot();
        var comm = File.ReadAllText("/proc/2/comm").Trim();
        Assert.That(comm, Is.EqualTo("kthreadd"), "this host's pid 2 is the kernel's thread starter (no pid namespace)");

        // kthreadd and every kernel thread under it: /proc/PID/smaps_rollup fails with ESRCH for each, as it does
        // for a user process in the last steps of its exit.
        var (processes, memory, _) = CapacityEstimator.Estimate([2]);

        Assert.Multiple(() =>
        {
            Assert.That(processes, Is.GreaterThan(1), "kthreadd's children were walked too");
            Assert.That(memory, Is.Zero);
        });
    }
}
