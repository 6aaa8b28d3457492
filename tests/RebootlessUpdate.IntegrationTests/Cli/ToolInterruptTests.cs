using System.Diagnostics;
using System.Text;
using System.Text.Json;
using Mono.Unix.Native;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Cli;

/// <summary>
/// An operator's Ctrl+C, or a service manager's SIGTERM, in the middle of a rehearsal: the tool stops at a safe point,
/// puts the workload back, prints its report and exits 130; the store's journal is finished, so the next run is not refused.
/// </summary>
[NonParallelizable]
public class ToolInterruptTests
{
    private Testbed _testbed = null!;
    private string _dir = null!;
    private string _store = null!;

    [SetUp]
    public void SetUp()
    {
        _testbed = Testbed.Require();
        Testbed.RequireRoot();
        _dir = Directory.CreateTempSubdirectory("rebootless-interrupt-").FullName;
        _store = Directory.CreateDirectory(Path.Combine(_dir, "store")).FullName;
    }

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    [TestCase(Signum.SIGTERM, false)]
    [TestCase(Signum.SIGINT, false)]
    [TestCase(Signum.SIGTERM, true)]
    public void A_signal_while_the_workload_is_frozen_rolls_back_prints_the_report_and_exits_130(Signum signal, bool json)
    {
        using var w = Workload.StartProgram(Path.Combine(_dir, "w"), 64);
        var pid = w.RootPid;
        // env resets the signals to their defaults: a test run started in the background (CI's nohup) hands its children
        // SIGINT ignored, and an ignored signal stays ignored across exec, as a shell's background job expects.
        var start = new ProcessStartInfo("env") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in (string[])["--default-signal=INT,TERM", "dotnet", Tool.Path, "rehearse", "--pid", pid.ToString(), "--store", _store, "--criu", _testbed.Criu, .. json ? ["--json"] : Array.Empty<string>()])
        {
            start.ArgumentList.Add(a);
        }

        using var tool = Process.Start(start)!;
        var stdout = tool.StandardOutput.ReadToEndAsync();
        var stderr = new StringBuilder();
        var readErrors = Task.Run(() =>
        {
            while (tool.StandardError.ReadLine() is { } line)
            {
                lock (stderr)
                {
                    stderr.AppendLine(line);
                }
            }
        });

        // The moment: CRIU holds the workload frozen (text: its progress line; JSON prints none, so the journal says it).
        Workload.WaitFor(() => json ? (UpdateJournal.List(_store).Any(j => j.State == JournalState.Dumping) ? 1 : 0)
            : (Snapshot(stderr).Contains($"[Dump] pid:{pid} frozen", StringComparison.Ordinal) ? 1 : 0), "the dump to hold the workload", 60);
        Assert.That(Syscall.kill(tool.Id, signal), Is.Zero);
        Assert.That(tool.WaitForExit(TimeSpan.FromMinutes(2)), Is.True, "the tool ends by itself after the rollback");
        readErrors.Wait(TimeSpan.FromSeconds(10));
        var output = stdout.Result;
        var errors = Snapshot(stderr);
        TestContext.Out.WriteLine($"exit {tool.ExitCode}\n{output}\n{errors}");

        Assert.Multiple(() =>
        {
            Assert.That(tool.ExitCode, Is.EqualTo(130));
            Assert.That(errors, Does.Contain($"rebootless: {signal}: stopping at the next safe point").And.Not.Contain("   at "));
            if (json)
            {
                using var report = JsonDocument.Parse(output);
                Assert.That(report.RootElement.GetProperty("outcome").GetString(), Is.EqualTo("RolledBack"));
                Assert.That(report.RootElement.GetProperty("cancelled").GetBoolean(), Is.True);
                Assert.That(report.RootElement.GetProperty("exitCode").GetInt32(), Is.EqualTo(130));
                Assert.That(report.RootElement.GetProperty("failure").GetProperty("error").GetString(), Is.EqualTo("interrupted"));
            }
            else
            {
                Assert.That(output, Does.Contain("Rehearse: RolledBack"), "the report is printed");
                Assert.That(errors.TrimEnd().Split('\n')[^1], Does.StartWith("rebootless: rehearse interrupted and rolled back at "));
            }
        });

        Assert.That(Workload.CopiesOf(w.Directory), Is.EqualTo(new[] { pid }), "the workload runs once, in place");
        Assert.That(w.Check(), Does.StartWith("ok"), "with its memory and its counter going on");
        Assert.That(UpdateJournal.Unfinished(_store), Is.Empty, "the journal is finished: the next run is not refused");
    }

    private static string Snapshot(StringBuilder text)
    {
        lock (text)
        {
            return text.ToString();
        }
    }
}
