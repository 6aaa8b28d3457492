using System.Diagnostics;
using Mono.Unix.Native;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Pipeline;

/// <summary>The tool with a criu worker that stops responding while it holds the workload: `--criu-timeout`.</summary>
public partial class ToolTests
{
    [Test]
    public void Rehearse_with_a_stopped_criu_hits_criu_timeout_rolls_back_with_a_clear_error_and_exit_16_and_the_workload_runs_on()
    {
        var store = Directory.CreateDirectory(Path.Combine(_dir, "store")).FullName;
        using var w = Workload.Start(Path.Combine(_dir, "w"));
        var root = w.RootPid;

        var run = Task.Run(() => Run("rehearse", "--pid", root.ToString(), "--store", store, "--criu", _testbed.Criu, "--criu-timeout", "5", "--json"));
        // criu logs "Running post-dump scripts" just before it asks the tool whether to finish; from then on it
        // holds the frozen tree until the tool answers (after Seal and Verify). Stop the tool for that moment so
        // criu is stopped while it holds the tree, before the tool has answered, whatever the machine's speed.
        var tool = Workload.WaitFor(() => Workload.ChildrenOf(Environment.ProcessId).FirstOrDefault(p => Cmdline(p).Contains("--criu-timeout")), "the tool to start");
        if (Workload.WaitFor(() => run.IsCompleted ? -1 : PostDumpLogged(store) ? 1 : 0, "criu to reach post-dump", 60) < 0)
        {
            Assert.Fail("the tool ended before criu reached post-dump: " + run.Result);
        }

        Assert.That(Syscall.kill(tool, Signum.SIGSTOP), Is.Zero);
        int worker;
        try
        {
            worker = Workload.TracerOf(root);
            Assert.That(worker, Is.Not.Zero, "criu holds the tree at post-dump");
            Assert.That(Syscall.kill(worker, Signum.SIGSTOP), Is.Zero);
            Workload.WaitFor(() => Workload.StatusField(worker, "State") is ['T', ..] ? 1 : 0, "criu to stop");
        }
        finally
        {
            Syscall.kill(tool, Signum.SIGCONT);
        }

        var sw = Stopwatch.StartNew();
        var r = run.Result;
        TestContext.Out.WriteLine($"{sw.Elapsed.TotalSeconds:0.0} s after the stop\n{r}");

        Assert.Multiple(() =>
        {
            Assert.That(r.ExitCode, Is.EqualTo(16), "16: criu timed out, every workload put back");
            Assert.That(r.Error.Trim().Split('\n'), Has.Length.EqualTo(1).And.All.StartsWith("rebootless: "), r.ToString());
            Assert.That(r.Error, Does.Contain($"criu DUMP timed out after 5 s: criu swrk worker {worker} did not finish it and was killed"));
            Assert.That(r.Error, Does.Contain("--criu-timeout"));
            using var json = System.Text.Json.JsonDocument.Parse(r.Output);
            Assert.That(json.RootElement.GetProperty("outcome").GetString(), Is.EqualTo("RolledBack"));
            Assert.That(json.RootElement.GetProperty("targets")[0].GetProperty("phase").GetString(), Is.EqualTo("Resumed"), "the report says the target runs on in place");
            Assert.That(Directory.Exists($"/proc/{worker}"), Is.False, "criu is gone");
            Assert.That(w.RootPid, Is.EqualTo(root));
        });
        Workload.WaitFor(() => Workload.IsFree(root) ? 1 : 0, "the workload to be untraced and running");
        var before = w.ReadCounter();
        Workload.WaitFor(() => w.ReadCounter() > before + 3 ? 1 : 0, "the workload to count on");
    }

    [TestCase("0")]
    [TestCase("-5")]
    [TestCase("ten")]
    [TestCase("99999999999")]
    public void A_criu_timeout_that_is_not_a_positive_whole_number_of_seconds_is_one_usage_line_and_exit_2(string value)
    {
        var store = Directory.CreateDirectory(Path.Combine(_dir, "store")).FullName;
        using var sleeper = Process.Start("sleep", "60");
        try
        {
            var r = Run("rehearse", "--pid", sleeper.Id.ToString(), "--store", store, "--criu", _testbed.Criu, "--criu-timeout", value);

            Assert.That(r.ExitCode, Is.EqualTo(2), r.ToString());
            Assert.That(r.Error.Trim().Split('\n'), Has.Length.EqualTo(1).And.All.StartsWith($"rebootless: --criu-timeout '{value}' is not a whole number of seconds"));
            Assert.That(Directory.GetFileSystemEntries(store), Is.Empty, "nothing was written to the store");
            Assert.That(Workload.IsRunning(sleeper.Id), Is.True);
        }
        finally
        {
            sleeper.Kill();
        }
    }

    private static bool PostDumpLogged(string store)
    {
        try
        {
            return Directory.EnumerateFiles(store, "dump.log", SearchOption.AllDirectories)
                .Any(f => File.ReadAllText(f).Contains("Running post-dump scripts", StringComparison.Ordinal));
        }
        catch (IOException)
        {
            return false;
        }
    }

    private static string Cmdline(int pid)
    {
        try
        {
            return File.ReadAllText($"/proc/{pid}/cmdline").Replace('\0', ' ');
        }
        catch (IOException)
        {
            return string.Empty;
        }
    }
}
