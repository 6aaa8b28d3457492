using System.Diagnostics;
using Mono.Unix.Native;
using RebootlessUpdate.Criu;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests;

/// <summary>
/// A real criu worker that stops responding (SIGSTOP) while it holds a real workload: the
/// watchdog kills it, the kernel releases the workload, and it runs on; cancelling does the
/// same and is reported as a cancellation. And CHECK writes nothing at a fixed shared path.
/// </summary>
[NonParallelizable]
public class CriuWatchdogTests : CriuTestFixture
{
    public CriuWatchdogTests()
        : base("rebootless-watchdog-")
    {
    }

    /// <summary>
    /// A dump whose worker is stopped right after it was told to finish (the post-dump answer):
    /// the tree is frozen and seized by the worker at that moment. Returns the worker's pid.
    /// </summary>
    private static CriuDumpOptions StopWorkerAtPostDump(Workload workload, string images, TaskCompletionSource<int> stopped) => new()
    {
        ImagesDirectory = images,
        Pid = workload.RootPid,
        OnNotification = (n, _) =>
        {
            if (n.Script == "post-dump")
            {
                // The worker is the tracer of the frozen tree (the testbed's wrapper execs criu, so it is our child's pid).
                var worker = Workload.TracerOf(workload.RootPid);
                Assert.That(worker, Is.Not.Zero, "criu holds the tree at post-dump");
                Assert.That(Syscall.kill(worker, Signum.SIGSTOP), Is.Zero);
                stopped.SetResult(worker);
            }

            return ValueTask.CompletedTask;
        },
    };

    private static async Task AssertRunsOnAsync(Workload workload)
    {
        Workload.WaitFor(() => Workload.IsFree(workload.RootPid) ? 1 : 0, "the workload to be untraced and running", 10);
        var before = workload.ReadCounter();
        await Task.Delay(500);
        Assert.Multiple(() =>
        {
            Assert.That(workload.IsAlive, Is.True);
            Assert.That(Workload.StatusField(workload.RootPid, "State"), Does.Not.StartWith("t").And.Not.StartWith("T"));
            Assert.That(Workload.TracerOf(workload.RootPid), Is.Zero);
            Assert.That(workload.ReadCounter(), Is.GreaterThan(before + 3), "still counting");
        });
    }

    private static bool IsOurCriuChild(int pid) => Workload.ChildrenOf(Environment.ProcessId).Contains(pid);

    [Test]
    public async Task A_stopped_worker_hits_the_watchdog_is_killed_and_the_workload_runs_on()
    {
        using var workload = Workload.Start(Path.Combine(ScratchDirectory, "work"));
        var client = new CriuClient(new CriuClientOptions { CriuPath = TestbedInfo.Criu, RequestTimeout = TimeSpan.FromSeconds(3) });
        var stopped = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);

        var sw = Stopwatch.StartNew();
        var dump = client.DumpAsync(StopWorkerAtPostDump(workload, NewDir("images"), stopped));
        var worker = await stopped.Task.WaitAsync(TimeSpan.FromSeconds(30));
        var stoppedAt = sw.Elapsed;
        Workload.WaitFor(() => Workload.StatusField(worker, "State") is ['T', ..] ? 1 : 0, "the worker to stop");
        Assert.That(Workload.IsFree(workload.RootPid), Is.False, "the stopped worker holds the tree");

        var e = Assert.ThrowsAsync<CriuTimeoutException>(async () => await dump.WaitAsync(TimeSpan.FromSeconds(60)));
        var waited = sw.Elapsed - stoppedAt;
        TestContext.Out.WriteLine($"timed out {waited.TotalSeconds:0.0} s after the stop: {e!.Message}");

        Assert.Multiple(() =>
        {
            Assert.That(waited, Is.GreaterThan(TimeSpan.FromSeconds(2)).And.LessThan(TimeSpan.FromSeconds(15)), "the 3 s watchdog");
            Assert.That(e.Request, Is.EqualTo(CriuRequestType.Dump));
            Assert.That(e.WorkerPid, Is.EqualTo(worker));
            Assert.That(e.Message, Does.Contain($"worker {worker} did not finish it and was killed"));
            Assert.That(Directory.Exists($"/proc/{worker}"), Is.False, "the worker was killed and reaped");
            Assert.That(IsOurCriuChild(worker), Is.False);
        });
        await AssertRunsOnAsync(workload);
    }

    [Test]
    public async Task A_worker_stopped_in_the_middle_of_the_memory_dump_is_killed_and_the_workload_state_is_intact()
    {
        // The hard moment: criu's parasite code is inside the workload, copying its memory out.
        using var workload = Workload.StartProgram(Path.Combine(ScratchDirectory, "work"), 256);
        var images = NewDir("images");
        var client = new CriuClient(new CriuClientOptions { CriuPath = TestbedInfo.Criu, RequestTimeout = TimeSpan.FromSeconds(2) });

        var dump = client.DumpAsync(new CriuDumpOptions { ImagesDirectory = images, Pid = workload.RootPid });
        var worker = Workload.WaitFor(() => dump.IsCompleted ? -1 : Workload.TracerOf(workload.RootPid), "criu to seize the tree", 30);
        Assert.That(worker, Is.Positive, "the dump ended before criu seized the tree");
        Workload.WaitFor(() => dump.IsCompleted || Directory.EnumerateFiles(images, "pages-*.img").Any(f => new FileInfo(f).Length > 16 << 20) ? 1 : 0,
            "criu to be copying memory", 60);
        Assert.That(dump.IsCompleted, Is.False, "the dump finished before it could be stopped in the middle");
        Assert.That(Syscall.kill(worker, Signum.SIGSTOP), Is.Zero);

        var e = Assert.ThrowsAsync<CriuTimeoutException>(async () => await dump.WaitAsync(TimeSpan.FromSeconds(60)));

        Assert.That(e!.WorkerPid, Is.EqualTo(worker));
        Assert.That(Directory.Exists($"/proc/{worker}"), Is.False, "the worker was killed and reaped");
        Workload.WaitFor(() => Workload.IsFree(workload.RootPid) ? 1 : 0, "the workload to be untraced and running");
        Assert.That(workload.Check(), Does.StartWith("ok"), "memory, file offset, socket and threads as before");
    }

    [Test]
    public async Task Cancelling_while_a_stopped_worker_holds_the_tree_kills_it_and_is_a_cancellation()
    {
        using var workload = Workload.Start(Path.Combine(ScratchDirectory, "work"));
        var stopped = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        using var cts = new CancellationTokenSource();

        var dump = Client.DumpAsync(StopWorkerAtPostDump(workload, NewDir("images"), stopped), cts.Token);
        var worker = await stopped.Task.WaitAsync(TimeSpan.FromSeconds(30));
        await Task.Delay(300); // the answer to post-dump is sent; the client waits on the stopped worker
        await cts.CancelAsync();

        var e = Assert.CatchAsync<Exception>(async () => await dump.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.That(e, Is.InstanceOf<OperationCanceledException>(), e!.ToString());
        Assert.Multiple(() =>
        {
            Assert.That(Directory.Exists($"/proc/{worker}"), Is.False, "the worker was killed and reaped");
            Assert.That(IsOurCriuChild(worker), Is.False, "no criu child left behind");
        });
        await AssertRunsOnAsync(workload);
    }

    [Test]
    public async Task Check_leaves_a_file_behind_a_symlink_planted_at_the_old_fixed_log_path_untouched()
    {
        // Before: CHECK ran with the shared temp folder as its images folder, and criu (root)
        // opened <tmp>/criu.log for writing, following whatever link was planted there.
        var planted = Path.Combine(Path.GetTempPath(), "criu.log");
        var victim = Path.Combine(ScratchDirectory, "precious");
        await File.WriteAllTextAsync(victim, "precious contents\n");
        string? aside = null;
        if (File.Exists(planted) || Directory.Exists(planted) || new FileInfo(planted).LinkTarget is not null)
        {
            aside = planted + ".aside-" + Environment.ProcessId;
            File.Move(planted, aside);
        }

        try
        {
            File.CreateSymbolicLink(planted, victim);
            var before = Directory.GetDirectories(Path.GetTempPath(), "rebootless-criu-check-*");

            await Client.CheckAsync();

            Assert.Multiple(() =>
            {
                Assert.That(File.ReadAllText(victim), Is.EqualTo("precious contents\n"), "criu wrote through the planted symlink");
                Assert.That(new FileInfo(planted).LinkTarget, Is.EqualTo(victim), "the planted link itself is untouched");
                Assert.That(Directory.GetDirectories(Path.GetTempPath(), "rebootless-criu-check-*"), Is.EquivalentTo(before), "the private folder is removed");
            });
        }
        finally
        {
            File.Delete(planted);
            if (aside is not null)
            {
                File.Move(aside, planted);
            }
        }
    }
}
