using System.Diagnostics;
using System.Text.Json;
using RebootlessUpdate.Criu;
using RebootlessUpdate.IntegrationTests.Cli;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests;

/// <summary>
/// Hardware breakpoints on this machine: the probe's verdict, held against what the real criu does when told to use
/// them. Some VMs (this project's CI machines among them) accept the debug registers and never fire them; criu 4.1
/// then waits forever at the end of a dump with the tree frozen.
/// </summary>
[NonParallelizable]
public class CriuBreakpointTests : CriuTestFixture
{
    public CriuBreakpointTests()
        : base("rebootless-bp-")
    {
    }

    [Test]
    public async Task The_probe_tells_whether_breakpoints_fire_and_criu_told_to_use_them_proves_it_right()
    {
        Assume.That(Environment.GetEnvironmentVariable(HardwareBreakpointProbe.FaultVariable), Is.Null, "CRIU_FAULT set outside");
        var sw = Stopwatch.StartNew();
        var verdict = HardwareBreakpointProbe.Run(TimeSpan.FromSeconds(10));
        var probed = sw.Elapsed;
        TestContext.Out.WriteLine($"probe: fire={verdict.Fire} in {probed.TotalMilliseconds:0} ms: {verdict.Detail}");
        Assert.That(verdict.Detail, Does.Not.Contain("could not tell"), "a conclusive probe on an x86-64 test machine");

        using var workload = Workload.Start(NewDir("work"));
        var forced = new CriuClient(new CriuClientOptions
        {
            CriuPath = TestbedInfo.Criu,
            Breakpoints = CriuBreakpoints.Use,
            RequestTimeout = TimeSpan.FromSeconds(20),
        });
        var dump = forced.DumpAsync(new CriuDumpOptions { ImagesDirectory = NewDir("images"), Pid = workload.RootPid, LeaveRunning = true });
        if (verdict.Fire)
        {
            await dump;
        }
        else
        {
            // Where they do not fire, criu waits for a trap that never comes: only the watchdog ends it.
            var e = Assert.ThrowsAsync<CriuTimeoutException>(async () => await dump);
            TestContext.Out.WriteLine(e!.Message);
        }

        Workload.WaitFor(() => Workload.IsFree(workload.RootPid) ? 1 : 0, "the workload to be untraced", 10);
        var before = workload.ReadCounter();
        await Task.Delay(500);
        Assert.That(workload.ReadCounter(), Is.GreaterThan(before), "the workload runs on either way");
    }

    [Test]
    public void The_probe_leaves_no_process_behind_and_answers_the_same_twice()
    {
        var children = Workload.ChildrenOf(Environment.ProcessId);
        var first = HardwareBreakpointProbe.Run(TimeSpan.FromSeconds(10));
        var second = HardwareBreakpointProbe.Run(TimeSpan.FromSeconds(10));

        Assert.Multiple(() =>
        {
            Assert.That(second.Fire, Is.EqualTo(first.Fire));
            Assert.That(Workload.ChildrenOf(Environment.ProcessId), Is.EquivalentTo(children), "the probe's sleep is killed and reaped");
        });
    }

    [TestCase(CriuBreakpoints.Auto)]
    [TestCase(CriuBreakpoints.Avoid)]
    public async Task A_dump_and_restore_finish_when_criu_is_left_to_the_probe_or_told_to_avoid_breakpoints(CriuBreakpoints mode)
    {
        using var workload = Workload.StartProgram(NewDir("work"), 16);
        var checksum = workload.InitialChecksum;
        var client = new CriuClient(new CriuClientOptions { CriuPath = TestbedInfo.Criu, Breakpoints = mode, RequestTimeout = TimeSpan.FromSeconds(60) });
        var images = NewDir("images");

        await client.DumpAsync(new CriuDumpOptions { ImagesDirectory = images, Pid = workload.RootPid });
        Workload.WaitFor(() => workload.IsAlive ? 0 : 1, "the dumped tree to be gone");
        var restore = await client.RestoreAsync(new CriuRestoreOptions { ImagesDirectory = images });
        workload.RootPid = restore.Pid;

        Assert.That(workload.Check(), Does.StartWith("ok").And.Contain($"mem={checksum}"));
    }

    [TestCase(null)]
    [TestCase("avoid")]
    [TestCase("use")]
    public void Check_shows_whether_criu_will_use_breakpoints_here(string? mode)
    {
        string[] args = ["check", "--json", "--criu", TestbedInfo.Criu, "--store", NewDir("store"), .. mode is null ? [] : new[] { "--criu-breakpoints", mode }];
        var r = Tool.Run(args);
        TestContext.Out.WriteLine(r.ToString());
        using var json = JsonDocument.Parse(r.Output);
        var line = json.RootElement.GetProperty("checks").EnumerateArray().Single(c => c.GetProperty("name").GetString() == "breakpoints");
        var detail = line.GetProperty("detail").GetString();

        var host = HardwareBreakpointProbe.Run(TimeSpan.FromSeconds(10));
        Assert.Multiple(() =>
        {
            Assert.That(line.GetProperty("ok").GetBoolean(), Is.True);
            Assert.That(detail, mode switch
            {
                "avoid" => Is.EqualTo("criu avoids hardware breakpoints, as configured"),
                "use" => Is.EqualTo("criu uses hardware breakpoints, as configured"),
                _ => host.Fire ? Does.StartWith("hardware breakpoints fire here, criu uses them") : Does.StartWith("criu runs without hardware breakpoints (CRIU_FAULT=130)"),
            });
        });
    }
}
