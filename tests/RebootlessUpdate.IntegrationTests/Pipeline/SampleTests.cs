using System.Text.RegularExpressions;
using Mono.Unix.Native;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Pipeline;

/// <summary>The samples in samples/, run as the real programs against real workloads and real criu.</summary>
[NonParallelizable]
public partial class SampleTests
{
    private Testbed _testbed = null!;
    private string _dir = null!;
    private readonly List<Workload> _workloads = [];

    [SetUp]
    public void SetUp()
    {
        _testbed = Testbed.Require();
        Testbed.RequireRoot();
        _dir = Directory.CreateTempSubdirectory("rebootless-samples-it-").FullName;
    }

    [TearDown]
    public void TearDown()
    {
        foreach (var w in _workloads)
        {
            w.Dispose();
        }

        _workloads.Clear();
        Directory.Delete(_dir, recursive: true);
    }

    private static string Sample(string name)
    {
        var dll = Path.Combine(Testbed.RepositoryRoot, "samples", name, "bin", BuiltTool.Configuration, "net10.0", name + ".dll");
        if (!File.Exists(dll))
        {
            Testbed.Missing($"the sample is not built at {dll}: run dotnet build RebootlessUpdate.sln");
        }

        return dll;
    }

    private Workload Start(string name, bool program)
    {
        var w = program ? Workload.StartProgram(Path.Combine(_dir, name), 16) : Workload.Start(Path.Combine(_dir, name));
        _workloads.Add(w);
        return w;
    }

    private static void AssertContinues(Workload w, string because)
    {
        var before = w.ReadCounter();
        Workload.WaitFor(() => w.ReadCounter() > before + 2 ? 1 : 0, $"{because}: the workload to count on");
        Assert.That(w.IsAlive, Is.True, because);
    }

    [Test]
    public void RehearsePids_rehearses_two_real_trees_and_prints_each_ones_result()
    {
        var rich = Start("rich", program: true);
        var shell = Start("shell", program: false);
        var (richPid, shellPid) = (rich.RootPid, shell.RootPid);

        var r = ProcessRunner.Run("dotnet", [Sample("RehearsePids"), "--store", Path.Combine(_dir, "store"), "--criu", _testbed.Criu, $"{richPid}", $"{shellPid}"], TimeSpan.FromMinutes(2));
        TestContext.Out.WriteLine(r.ToString());

        Assert.That(r.ExitCode, Is.Zero, r.ToString());
        rich.RootPid = RestoredPid(r.Output, richPid);
        shell.RootPid = RestoredPid(r.Output, shellPid);
        Assert.That(r.Output, Does.Contain("rehearsal succeeded; total downtime"));
        Assert.That(rich.RootPid, Is.Not.EqualTo(richPid), "restored from the images, not left running");
        Assert.That(rich.Check(), Does.StartWith("ok"));
        AssertContinues(shell, "the restored shell tree");
    }

    [Test]
    public void RehearsePids_refuses_a_pid_that_does_not_exist_and_says_so()
    {
        var r = ProcessRunner.Run("dotnet", [Sample("RehearsePids"), "--store", Path.Combine(_dir, "store"), "--criu", _testbed.Criu, "999999"], TimeSpan.FromMinutes(1));
        TestContext.Out.WriteLine(r.ToString());

        Assert.That(r.ExitCode, Is.EqualTo(1));
        Assert.That(r.Output, Does.Contain("pid:999999: NOT restorable").And.Contain("no running process 999999"));
    }

    [Test]
    public void UpdateWithCustomStages_rehearse_runs_the_platform_stages_in_place_and_the_workload_continues()
    {
        var w = Start("app", program: true);
        var pid = w.RootPid;
        var lb = Path.Combine(_dir, "lb");

        var r = ProcessRunner.Run("dotnet", [Sample("UpdateWithCustomStages"), "rehearse", "--store", Path.Combine(_dir, "store"), "--criu", _testbed.Criu,
            "--lb-file", lb, "--health-cmd", "test -d /proc/$REBOOTLESS_PID && test \"$REBOOTLESS_TARGET\" = pid:" + pid, $"{pid}"], TimeSpan.FromMinutes(2));
        TestContext.Out.WriteLine(r.ToString());

        Assert.That(r.ExitCode, Is.Zero, r.ToString());
        Assert.That(r.Output, Does.Contain("stages: Preflight -> Plan -> PreDump -> drain-load-balancer -> Dump -> Seal -> Verify -> Commit -> Restore -> health-check -> Report -> Cleanup"));
        Assert.That(r.Output, Does.Contain("stage health-check: Completed"));
        Assert.That(File.ReadAllLines(lb), Is.EqualTo(new[] { $"draining pid:{pid}", $"serving pid:{pid}" }));
        w.RootPid = int.Parse(TargetPid().Match(r.Output).Groups[1].Value);
        Assert.That(w.Check(), Does.StartWith("ok"));
    }

    [Test]
    public void UpdateWithCustomStages_a_failing_health_check_fails_the_run_and_leaves_the_restored_workload_running()
    {
        var w = Start("sick", program: false);
        var pid = w.RootPid;
        var lb = Path.Combine(_dir, "lb");

        var r = ProcessRunner.Run("dotnet", [Sample("UpdateWithCustomStages"), "rehearse", "--store", Path.Combine(_dir, "store"), "--criu", _testbed.Criu,
            "--lb-file", lb, "--health-cmd", "exit 3", $"{pid}"], TimeSpan.FromMinutes(2));
        TestContext.Out.WriteLine(r.ToString());

        Assert.That(r.ExitCode, Is.EqualTo(1), r.ToString());
        Assert.That(r.Output, Does.Contain("at health-check: pid:" + pid + ": the health command exited with 3"));
        w.RootPid = int.Parse(TargetPid().Match(r.Output).Groups[1].Value);
        Assert.That(File.ReadAllLines(lb), Is.EqualTo(new[] { $"draining pid:{pid}", $"serving pid:{pid}" }), "the drain was undone");
        AssertContinues(w, "after the failed health check");
    }

    private static int RestoredPid(string output, int original)
    {
        var m = Regex.Match(output, $@"^pid:{original}: restorable; restored as pid (\d+)", RegexOptions.Multiline);
        Assert.That(m.Success, Is.True, $"no result line for pid {original} in:\n{output}");
        return int.Parse(m.Groups[1].Value);
    }

    [GeneratedRegex(@"^target pid:\d+: \w+ as pid (\d+)", RegexOptions.Multiline)]
    private static partial Regex TargetPid();
}
