using RebootlessUpdate.Criu;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests;

/// <summary>
/// Cancelling a dump while the real criu is at work on a real workload: criu is not killed while
/// it holds the tree (a kill while its parasite is inside a task killed the workload about one run
/// in ten) but told to stop at its next notification, so criu itself cures and resumes the tree
/// ("Dumping FAILED" in its log). The caller sees an <see cref="OperationCanceledException"/>
/// carrying its own token, the worker is gone and reaped before the call returns, and the
/// workload runs on intact.
/// </summary>
[NonParallelizable]
public class CriuCancellationTests : CriuTestFixture
{
    public CriuCancellationTests()
        : base("rebootless-cancel-")
    {
    }

    /// <summary>Where in the dump the token is cancelled.</summary>
    public enum CancelPoint
    {
        /// <summary>As soon as criu has seized (ptrace) the tree.</summary>
        Seized,

        /// <summary>While criu's parasite copies the workload's memory out (a pages image past 16 MiB).</summary>
        CopyingMemory,
    }

    [Test]
    public async Task Cancelling_a_dump_mid_way_is_a_cancellation_the_worker_is_reaped_and_the_workload_runs_on([Values] CancelPoint point)
    {
        using var workload = Workload.StartProgram(Path.Combine(ScratchDirectory, "work"), 256);
        var images = NewDir("images");
        using var cts = new CancellationTokenSource();

        var dump = Client.DumpAsync(new CriuDumpOptions { ImagesDirectory = images, Pid = workload.RootPid }, cts.Token);
        var worker = Workload.WaitFor(() => dump.IsCompleted ? -1 : Workload.TracerOf(workload.RootPid), "criu to seize the tree", 30);
        Assert.That(worker, Is.Positive, "the dump ended before criu seized the tree");
        if (point == CancelPoint.CopyingMemory)
        {
            Workload.WaitFor(() => dump.IsCompleted || Directory.EnumerateFiles(images, "pages-*.img").Any(f => new FileInfo(f).Length > 16 << 20) ? 1 : 0,
                "criu to be copying memory", 60);
        }

        Assert.That(dump.IsCompleted, Is.False, "the dump finished before it could be cancelled");
        await cts.CancelAsync();

        var e = Assert.CatchAsync<Exception>(async () => await dump.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.That(e, Is.InstanceOf<OperationCanceledException>(), e!.ToString());
        Assert.Multiple(() =>
        {
            Assert.That(((OperationCanceledException)e).CancellationToken, Is.EqualTo(cts.Token), "the caller's token");
            Assert.That(Directory.Exists($"/proc/{worker}"), Is.False, "the worker is gone and reaped before the call returned");
            Assert.That(Workload.ChildrenOf(Environment.ProcessId), Does.Not.Contain(worker), "no criu child left behind");
        });

        Assert.That(File.ReadAllText(Path.Combine(images, "dump.log")), Does.Contain("Dumping FAILED"),
            "criu wound the dump down itself (resuming the tree) rather than being killed mid-way");
        Workload.WaitFor(() => Workload.IsFree(workload.RootPid) ? 1 : 0, "the workload to be untraced and running");
        var before = workload.ReadCounter();
        Workload.WaitFor(() => workload.ReadCounter() > before ? 1 : 0, "the workload to count on");
        Assert.That(workload.Check(), Does.StartWith("ok"), "memory, file offset, socket and threads as before the dump");
    }
}
