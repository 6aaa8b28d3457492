using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using Mono.Unix.Native;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Cli;

/// <summary>
/// The operator's Ctrl+C, or a SIGKILL, while <c>rehearse --pages-from-store</c> still streams a restored tree's memory:
/// the page server lives in the tool, so the tree must not be left running without it.
/// </summary>
[NonParallelizable]
public partial class ToolPagesFromStoreInterruptTests
{
    private Testbed _testbed = null!;
    private string _dir = null!;
    private string _store = null!;
    private readonly List<int> _pids = [];

    [SetUp]
    public async Task SetUp()
    {
        _testbed = Testbed.Require();
        Testbed.RequireRoot();
        if (!(await new RebootlessUpdate.Criu.CriuClient(new RebootlessUpdate.Criu.CriuClientOptions { CriuPath = _testbed.Criu }).CheckFeaturesAsync()).LazyPages)
        {
            Testbed.Missing("userfaultfd lazy pages on this kernel");
        }

        _dir = Directory.CreateTempSubdirectory("rebootless-ondemand-interrupt-").FullName;
        _store = Directory.CreateDirectory(Path.Combine(_dir, "store")).FullName;
    }

    [TearDown]
    public void TearDown()
    {
        foreach (var pid in _pids.Where(Workload.IsRunning))
        {
            Syscall.kill(pid, Signum.SIGCONT);
            Syscall.kill(pid, Signum.SIGKILL);
        }

        _pids.Clear();
        Directory.Delete(_dir, recursive: true);
    }

    [GeneratedRegex(@"restored as pid (\d+) .*lazy-pages daemon (\d+) from the store")]
    private static partial Regex Restored();

    /// <summary>Runs the tool; once it reports the restore, stops the daemon (the stream halts mid-way) and sends <paramref name="signal"/> to the tool.</summary>
    private (Process Tool, string Errors, int Root, int Daemon) InterruptMidStream(Workload w, Signum signal)
    {
        var start = new ProcessStartInfo("env") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in (string[])["--default-signal=INT,TERM", "dotnet", Tool.Path, "rehearse", "--pid", w.RootPid.ToString(CultureInfo.InvariantCulture), "--pages-from-store",
            "--store", _store, "--criu", _testbed.Criu])
        {
            start.ArgumentList.Add(a);
        }

        var tool = Process.Start(start)!;
        _ = tool.StandardOutput.ReadToEndAsync();
        var stderr = new StringBuilder();
        int root = 0, daemon = 0;
        var seen = new ManualResetEventSlim();
        _ = Task.Run(() =>
        {
            while (tool.StandardError.ReadLine() is { } line)
            {
                lock (stderr)
                {
                    stderr.AppendLine(line);
                }

                if (Restored().Match(line) is { Success: true } m && !seen.IsSet)
                {
                    root = int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
                    daemon = int.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture);
                    _ = Syscall.kill(daemon, Signum.SIGSTOP);
                    _pids.Add(daemon);
                    _pids.Add(root);
                    seen.Set();
                }
            }
        });

        Assert.That(seen.Wait(TimeSpan.FromSeconds(120)), Is.True, "the tool reports the restore from the store");
        Thread.Sleep(300);
        Assert.That(Syscall.kill(tool.Id, signal), Is.Zero);
        Assert.That(tool.WaitForExit(TimeSpan.FromMinutes(2)), Is.True, "the tool ends");
        string errors;
        lock (stderr)
        {
            errors = stderr.ToString();
        }

        TestContext.Out.WriteLine($"exit {tool.ExitCode}, root {root}, daemon {daemon}\n{errors}");
        return (tool, errors, root, daemon);
    }

    [Test]
    public void Ctrl_c_while_pages_stream_ends_the_tree_and_exits_needs_attention_without_a_stack_trace()
    {
        using var w = Workload.StartProgram(Path.Combine(_dir, "w"), 64);
        var (tool, errors, root, _) = InterruptMidStream(w, Signum.SIGINT);
        using var _tool = tool;

        Assert.Multiple(() =>
        {
            // Not 130 ("put back"): the tree ran after its checkpoint and could not keep running without its server.
            Assert.That(tool.ExitCode, Is.EqualTo(12));
            Assert.That(errors, Does.Contain("not every workload is back"));
            Assert.That(errors, Does.Not.Contain("   at "));
            Assert.That(Workload.IsRunning(root), Is.False, "the restored tree was ended, not left without its page server");
            Assert.That(Workload.CopiesOf(w.Directory), Is.Empty);
        });
    }

    [Test]
    [Explicit("known: SIGKILL of the tool takes the page server with it; the daemon then lets go and the restored tree faults in zero pages (seen: dmesg 'rebootless-work segfault at 0 ip 0'; a workload that does not crash runs on with zeroed memory). Nothing in-process can stop it")]
    public void Sigkill_of_the_tool_while_pages_stream_leaves_no_tree_running_on_zero_pages()
    {
        using var w = Workload.StartProgram(Path.Combine(_dir, "w"), 64);
        var checksum = w.InitialChecksum;
        var (tool, _, root, daemon) = InterruptMidStream(w, Signum.SIGKILL);
        using var _tool = tool;
        _ = Syscall.kill(daemon, Signum.SIGCONT);
        Workload.WaitFor(() => Workload.IsRunning(daemon) ? 0 : 1, "the daemon to let go of its server", 30);

        var alive = Workload.IsRunning(root);
        w.RootPid = root;
        var verdict = alive ? w.Check() : "gone";
        TestContext.Out.WriteLine($"root {root} alive {alive}: {verdict} (expected mem={checksum})");
        Assert.That(alive && !verdict.Contains($"mem={checksum}", StringComparison.Ordinal), Is.False, $"the tree runs on with memory it never got: {verdict}");
    }
}
