using System.Diagnostics;
using System.Globalization;
using RebootlessUpdate.Criu;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests;

/// <summary>The RPC client (swrk transport) against the testbed's real criu 4.x.</summary>
[NonParallelizable]
public class CriuClientTests : CriuTestFixture
{
    public CriuClientTests()
        : base("rebootless-client-")
    {
    }

    [Test]
    public async Task Version_matches_the_command_line()
    {
        var cli = ProcessRunner.Run(TestbedInfo.Criu, ["--version"], TimeSpan.FromMinutes(1));
        var expected = CriuVersion.Parse(cli.Output.Split('\n').First(l => l.StartsWith("Version:", StringComparison.Ordinal))["Version:".Length..]);

        var version = await Client.GetVersionAsync();

        Assert.That(version.Number, Is.EqualTo(expected.Number));
    }

    [Test]
    public async Task Check_passes_on_this_host()
    {
        await Client.CheckAsync();
    }

    [Test]
    public async Task Feature_check_agrees_with_criu_check_feature()
    {
        bool Cli(string feature) => ProcessRunner.Run(TestbedInfo.Criu, ["check", "--feature", feature], TimeSpan.FromMinutes(1)).ExitCode == 0;

        var features = await Client.CheckFeaturesAsync();

        Assert.Multiple(() =>
        {
            Assert.That(features.MemoryTracking, Is.EqualTo(Cli("memScratchDirectoryty_track")), "mem_track");
            Assert.That(features.LazyPages, Is.EqualTo(Cli("uffd-noncoop")), "lazy_pages");
        });
    }

    [Test]
    public async Task Dump_and_restore_continue_the_workload_and_report_statistics_and_notifications()
    {
        using var workload = Workload.Start(Path.Combine(ScratchDirectory, "work"));
        var images = NewDir("images");
        var seen = new List<CriuNotification>();
        ValueTask Record(CriuNotification n, CancellationToken _)
        {
            lock (seen)
            {
                seen.Add(n);
            }

            return ValueTask.CompletedTask;
        }

        var dump = await Client.DumpAsync(new CriuDumpOptions { ImagesDirectory = images, Pid = workload.RootPid, OnNotification = Record });
        var countAtDump = workload.ReadCounter();
        Workload.WaitFor(() => workload.IsAlive ? 0 : 1, "the dumped tree to be gone");

        var restore = await Client.RestoreAsync(new CriuRestoreOptions { ImagesDirectory = images, OnNotification = Record });
        workload.RootPid = restore.Pid;
        Workload.WaitFor(() => workload.ReadCounter() > countAtDump + 3 ? 1 : 0, "the restored tree to count on");

        Assert.Multiple(() =>
        {
            Assert.That(Workload.NamespacePid(restore.Pid), Is.EqualTo(1));
            Assert.That(workload.ReadCounter(), Is.LessThan(countAtDump + 200), "continued from the checkpoint");
            Assert.That(dump.Statistics, Is.Not.Null);
            Assert.That(dump.Statistics!.PagesWritten, Is.GreaterThan(0UL));
            Assert.That(dump.Statistics.Frozen, Is.GreaterThan(TimeSpan.Zero));
            Assert.That(restore.Statistics, Is.Not.Null);
            Assert.That(restore.Statistics!.PagesRestored, Is.GreaterThan(0UL));
            Assert.That(File.Exists(dump.LogFile), Is.True);
            Assert.That(seen.Select(n => n.Script), Does.Contain("post-dump").And.Contain("post-restore"));
            Assert.That(seen.First(n => n.Script == "post-restore").Pid, Is.EqualTo(restore.Pid));
        });
    }

    [Test]
    public void Dump_of_a_missing_pid_names_the_request_the_errno_and_the_log_lines()
    {
        var images = NewDir("images");
        var unused = FindUnusedPid();

        var e = Assert.ThrowsAsync<CriuRequestFailedException>(() => Client.DumpAsync(new CriuDumpOptions { ImagesDirectory = images, Pid = unused }));

        Assert.Multiple(() =>
        {
            Assert.That(e!.Request, Is.EqualTo(CriuRequestType.Dump));
            Assert.That(e.Message, Does.StartWith("criu DUMP failed"));
            Assert.That(e.LogExcerpt, Is.Not.Empty, e.Message);
            Assert.That(e.Message, Does.Contain(unused.ToString(CultureInfo.InvariantCulture)), "the log lines name the pid");
        });
    }

    [Test]
    public async Task A_failing_post_dump_handler_aborts_the_dump_and_the_workload_keeps_running()
    {
        using var workload = Workload.Start(Path.Combine(ScratchDirectory, "work"));
        var images = NewDir("images");

        var e = Assert.ThrowsAsync<CriuRequestFailedException>(() => Client.DumpAsync(new CriuDumpOptions
        {
            ImagesDirectory = images,
            Pid = workload.RootPid,
            OnNotification = (n, _) => n.Script == "post-dump" ? throw new InvalidOperationException("refusing the jump") : ValueTask.CompletedTask,
        }));

        var before = workload.ReadCounter();
        await Task.Delay(300);
        Assert.Multiple(() =>
        {
            Assert.That(e!.InnerException, Is.TypeOf<InvalidOperationException>());
            Assert.That(e.Message, Does.Contain("refusing the jump"));
            Assert.That(workload.IsAlive, Is.True, "post-dump failure resumes the tasks");
            Assert.That(workload.ReadCounter(), Is.GreaterThan(before), "still counting");
        });
    }

    [Test]
    public async Task Cancelling_a_dump_kills_the_worker_and_the_workload_keeps_running()
    {
        using var workload = Workload.Start(Path.Combine(ScratchDirectory, "work"));
        var images = NewDir("images");
        using var cts = new CancellationTokenSource();

        var dump = Client.DumpAsync(new CriuDumpOptions
        {
            ImagesDirectory = images,
            Pid = workload.RootPid,
            OnNotification = async (n, ct) =>
            {
                if (n.Script == "pre-dump")
                {
                    await cts.CancelAsync();
                    await Task.Delay(Timeout.Infinite, ct);
                }
            },
        }, cts.Token);

        Assert.That(async () => await dump, Throws.InstanceOf<OperationCanceledException>());
        var before = workload.ReadCounter();
        await Task.Delay(500);
        Assert.Multiple(() =>
        {
            Assert.That(workload.IsAlive, Is.True);
            Assert.That(workload.ReadCounter(), Is.GreaterThan(before), "still counting after the cancelled dump");
            Assert.That(Process.GetProcesses().Count(p => Safe(() => p.ProcessName) == "criu" && Workload.ChildrenOf(Environment.ProcessId).Contains(p.Id)),
                Is.Zero, "no criu worker left behind");
        });
    }

    [Test]
    public async Task Concurrent_requests_and_unrelated_child_processes_never_hang()
    {
        // A leaked socket end in an unrelated child would keep the connection open
        // after criu exits, and the client would wait forever.
        var sleepers = Enumerable.Range(0, 8).Select(_ => Task.Run(() =>
            ProcessRunner.Run("sleep", ["3"], TimeSpan.FromSeconds(30)))).ToArray();
        var versions = Enumerable.Range(0, 16).Select(_ => Client.GetVersionAsync()).ToArray();

        var all = Task.WhenAll(versions);
        var finished = await Task.WhenAny(all, Task.Delay(TimeSpan.FromSeconds(60)));
        await Task.WhenAll(sleepers);

        Assert.That(finished, Is.SameAs(all), "requests hung while unrelated children ran");
        Assert.That((await all).Select(v => v.Major), Has.All.GreaterThanOrEqualTo(4));
    }

    [Test]
    public void A_missing_criu_binary_is_a_clear_transport_error()
    {
        var client = new CriuClient(new CriuClientOptions { CriuPath = Path.Combine(ScratchDirectory, "no-such-criu") });

        Assert.That(() => client.GetVersionAsync(), Throws.TypeOf<CriuUnavailableException>().With.Message.Contains("criu not found at"));
    }

    [Test]
    public void Invalid_options_are_rejected_before_criu_runs()
    {
        Assert.Multiple(() =>
        {
            Assert.That(() => Client.DumpAsync(new CriuDumpOptions { ImagesDirectory = Path.Combine(ScratchDirectory, "missing"), Pid = 1 }),
                Throws.ArgumentException.With.Message.Contains("does not exist"));
            Assert.That(() => Client.DumpAsync(new CriuDumpOptions { ImagesDirectory = ScratchDirectory, Pid = 0 }),
                Throws.InstanceOf<ArgumentOutOfRangeException>());
            Assert.That(() => Client.DumpAsync(new CriuDumpOptions { ImagesDirectory = ScratchDirectory, Pid = 5, LeaveRunning = true, LeaveStopped = true }),
                Throws.ArgumentException.With.Message.Contains("exclude"));
        });
    }

    private static T? Safe<T>(Func<T> f)
    {
        try
        {
            return f();
        }
        catch (InvalidOperationException)
        {
            return default;
        }
    }

    private static int FindUnusedPid()
    {
        for (var pid = 3_000_000; pid > 1000; pid -= 7919)
        {
            if (!Directory.Exists($"/proc/{pid}"))
            {
                return pid;
            }
        }

        throw new InvalidOperationException("no unused pid found");
    }
}
