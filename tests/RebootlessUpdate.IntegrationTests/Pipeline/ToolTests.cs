using System.Diagnostics;
using System.Text.Json;
using System.Text.RegularExpressions;
using Mono.Unix.Native;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Pipeline;

/// <summary>The real `rebootless` tool (dotnet rebootless.dll) on real workloads and bad input.</summary>
[NonParallelizable]
public partial class ToolTests
{
    private Testbed _testbed = null!;
    private string _dir = null!;
    private string _tool = null!;

    [SetUp]
    public void SetUp()
    {
        _testbed = Testbed.Require();
        Testbed.RequireRoot();
        _dir = Directory.CreateTempSubdirectory("rebootless-tool-it-").FullName;
        _tool = BuiltTool.Path;
    }

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    private ProcessResult Run(params string[] args) => ProcessRunner.Run("dotnet", [_tool, .. args], TimeSpan.FromMinutes(2));

    [Test]
    public void Rehearse_json_on_a_real_workload_exits_0_and_the_workload_continues_with_its_state()
    {
        var store = Directory.CreateDirectory(Path.Combine(_dir, "store")).FullName;
        using var w = Workload.StartProgram(Path.Combine(_dir, "w"), 16);
        var sw = Stopwatch.StartNew();
        var r = Run("rehearse", "--pid", w.RootPid.ToString(), "--store", store, "--criu", _testbed.Criu, "--json");
        TestContext.Out.WriteLine($"{sw.ElapsedMilliseconds} ms\n{r.Output}\n{r.Error}");

        Assert.That(r.ExitCode, Is.Zero, r.ToString());
        using var json = JsonDocument.Parse(r.Output);
        var target = json.RootElement.GetProperty("targets")[0];
        Assert.That(json.RootElement.GetProperty("outcome").GetString(), Is.EqualTo("Succeeded"));
        Assert.That(target.GetProperty("restorable").GetBoolean(), Is.True);
        w.RootPid = target.GetProperty("restoredPid").GetInt32();
        try
        {
            Assert.That(w.Check(), Does.StartWith("ok"));
        }
        finally
        {
            Syscall.kill(w.RootPid, Signum.SIGKILL);
        }
    }

    [Test]
    public void Rehearse_with_lazy_restore_serves_the_memory_on_demand_intact_the_daemon_outlives_the_tool_and_exits_by_itself_and_the_set_stays_sealed()
    {
        var store = Directory.CreateDirectory(Path.Combine(_dir, "store")).FullName;
        using var w = Workload.StartProgram(Path.Combine(_dir, "w"), 64);
        var checksum = w.InitialChecksum;
        var sw = Stopwatch.StartNew();
        // --keep-images: the tool exits without waiting for the daemon (as after a real resume), and the set stays to be verified.
        var r = Run("rehearse", "--pid", w.RootPid.ToString(), "--lazy-restore", "--keep-images", "--store", store, "--criu", _testbed.Criu, "--json");
        TestContext.Out.WriteLine($"{sw.ElapsedMilliseconds} ms\n{r.Output}\n{r.Error}");

        Assert.That(r.ExitCode, Is.Zero, r.ToString());
        using var json = JsonDocument.Parse(r.Output);
        var target = json.RootElement.GetProperty("targets")[0];
        w.RootPid = target.GetProperty("restoredPid").GetInt32();
        try
        {
            var daemon = target.GetProperty("lazyPagesDaemonPid").GetInt32();
            var setId = json.RootElement.GetProperty("setId").GetString()!;
            var journal = UpdateJournal.List(store).Single();
            var folder = journal.Targets.Single().Folder;
            var verdict = w.Check();
            var before = w.ReadCounter();
            Workload.WaitFor(() => w.ReadCounter() > before + 2 ? 1 : 0, "the restored workload to count on");
            Workload.WaitFor(() => Workload.IsRunning(daemon) ? 0 : 1, "the lazy-pages daemon to deliver every page and exit by itself", 60);
            var verify = Run("images", "verify", setId, "--store", store);
            TestContext.Out.WriteLine(verify.ToString());
            Assert.Multiple(() =>
            {
                Assert.That(json.RootElement.GetProperty("outcome").GetString(), Is.EqualTo("Succeeded"));
                Assert.That(target.GetProperty("lazyPages").GetBoolean(), Is.True);
                Assert.That(target.GetProperty("pagesRestored").GetUInt64(), Is.LessThan(64UL * 256 / 4),
                    "CRIU copied only a few pages itself (64 MiB are 16384 pages): the rest came through the daemon");
                Assert.That(verdict, Does.StartWith("ok").And.Contain($"mem={checksum}"), verdict);
                Assert.That(journal.Targets.Single().Settings.LazyPages, Is.True, "the choice is in the journal");
                Assert.That(journal.Targets.Single().LazyPagesDaemonPid, Is.EqualTo(daemon));
                Assert.That(File.Exists(Path.Combine(UpdateJournal.LogDirectoryOf(store, setId), folder, "lazy-pages.log")), Is.True, "its log is in the work folder");
                Assert.That(verify.ExitCode, Is.Zero, "the set is exactly as sealed, no stray file in the images: " + verify);
                Assert.That(Directory.GetFiles(Path.Combine(store, "sets", setId, "images", folder), "lazy-pages*"), Is.Empty);
            });
        }
        finally
        {
            Syscall.kill(w.RootPid, Signum.SIGKILL);
        }
    }

    [Test]
    public void Bad_input_gets_one_line_on_stderr_a_distinct_exit_code_and_changes_nothing()
    {
        var store = Directory.CreateDirectory(Path.Combine(_dir, "store")).FullName;
        using var sleeper = Process.Start("sleep", "120");
        var pid = sleeper.Id.ToString();
        try
        {
            (string[] Args, int Code)[] cases =
            [
                (["rehearse", "--pid", "999999", "--store", store, "--criu", _testbed.Criu], 6),
                (["rehearse", "--store", store, "--criu", _testbed.Criu], 2),
                (["rehearse", "--pid", pid, "--store", Path.Combine(_dir, "missing"), "--criu", _testbed.Criu], 8),
                (["rehearse", "--pid", pid, "--store", store, "--criu", "/nonexistent/criu"], 4),
                (["update", "--kernel", "/nonexistent/vmlinuz", "--pid", pid, "--store", store, "--criu", _testbed.Criu], 7),
                (["update", "--kernel", "/etc/hostname", "--pid", pid, "--store", store, "--criu", _testbed.Criu], 7),
                (["update", "--kernel", Path.Combine(_testbed.RootFs, "boot", "vmlinuz-" + _testbed.OldKernel), "--pid", pid, "--store", store, "--criu", _testbed.Criu], 9),
                (["resume", "--store", Path.Combine(_dir, "missing"), "--criu", _testbed.Criu], 8),
            ];
            foreach (var (args, code) in cases)
            {
                var r = Run(args);
                TestContext.Out.WriteLine($"{code} <- {string.Join(' ', args)}: {r.Error.Trim()}");
                Assert.That(r.ExitCode, Is.EqualTo(code), r.ToString());
                Assert.That(r.Error.Trim().Split('\n'), Has.Length.EqualTo(1).And.All.StartsWith("rebootless: "));
            }

            var nonRoot = ProcessRunner.Run("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "dotnet", _tool, "rehearse", "--pid", pid, "--store", store, "--criu", _testbed.Criu],
                TimeSpan.FromMinutes(1));
            Assert.That(nonRoot.ExitCode, Is.EqualTo(3), nonRoot.ToString());
            Assert.That(Directory.GetFileSystemEntries(store), Is.Empty, "nothing was written to the store");
            Assert.That(Workload.IsRunning(sleeper.Id), Is.True);
        }
        finally
        {
            sleeper.Kill();
        }
    }

    [Test]
    public void Rehearse_without_a_terminal_writes_plain_progress_lines_without_escape_codes()
    {
        var store = Directory.CreateDirectory(Path.Combine(_dir, "store")).FullName;
        using var w = Workload.Start(Path.Combine(_dir, "shell"));
        var pid = w.RootPid;

        var r = Run("rehearse", "--pid", pid.ToString(), "--store", store, "--criu", _testbed.Criu);
        TestContext.Out.WriteLine(r.ToString());

        Assert.That(r.ExitCode, Is.Zero, r.ToString());
        w.RootPid = int.Parse(RestoredAs().Match(r.Error).Groups[1].Value); // first: Dispose then ends the restored tree
        Assert.That(r.Output + r.Error, Does.Not.Contain("\u001b"), "no escape codes when stderr is not a terminal");
        Assert.That(r.Error, Does.Contain($"[Dump] pid:{pid} frozen, ").And.Contain("[Verify] ").And.Contain(" bytes verified"));
        var before = w.ReadCounter();
        Workload.WaitFor(() => w.ReadCounter() > before + 2 ? 1 : 0, "the rehearsed workload to count on");
    }

    [Test]
    public void Rehearse_on_a_terminal_draws_progress_bars_with_stages_targets_and_bytes()
    {
        var store = Directory.CreateDirectory(Path.Combine(_dir, "store")).FullName;
        using var w = Workload.Start(Path.Combine(_dir, "shell"));
        var pid = w.RootPid;

        // script(1) gives the tool a pseudo-terminal for stdin, stdout and stderr (merged in its output).
        var command = $"stty rows 40 cols 120; exec dotnet {_tool} rehearse --pid {pid} --store {store} --criu {_testbed.Criu}";
        var r = ProcessRunner.Run("env", ["TERM=xterm-256color", "script", "-qec", command, "/dev/null"], TimeSpan.FromMinutes(2));
        TestContext.Out.WriteLine(r.ToString());

        Assert.That(r.ExitCode, Is.Zero, r.ToString());
        w.RootPid = int.Parse(RestoredAs().Match(Ansi().Replace(r.Output, "")).Groups[1].Value); // first: Dispose then ends the restored tree
        Assert.That(r.Output, Does.Contain("\u001b["), "a terminal gets the live display");
        // The terminal ends each line with "\r\n" (the pty's output processing); a '\r' inside a line is a redraw.
        var frame = CursorUp().Split(r.Output.Replace("\r\n", "\n", StringComparison.Ordinal))[^1];
        var rows = Ansi().Replace(frame, "").Split('\n').Select(l => l.Split('\r')[^1].TrimEnd()).Where(l => l.Length > 0).ToList();
        TestContext.Out.WriteLine("--- last frame\n" + string.Join('\n', rows));
        Assert.Multiple(() =>
        {
            foreach (var stage in new[] { "Preflight", "Plan", "Dump", "Seal", "Verify", "Restore", "Cleanup" })
            {
                Assert.That(rows, Has.Some.Match($@"^{stage}\s+done\b"), stage);
            }

            Assert.That(rows, Has.Some.Match($@"^└ pid:{pid}: frozen, \d+ bytes of images in \d+ ms \(\d+\.\d [KMG]iB\)"));
            Assert.That(rows, Has.Some.Match(@"^Verify\s+done \d+ bytes verified \(\d+\.\d [KMG]iB\)"));
            Assert.That(rows.Where(l => l.Contains('━', StringComparison.Ordinal)), Has.All.Length.LessThanOrEqualTo(120), "the bars fit the terminal");
        });
        var before = w.ReadCounter();
        Workload.WaitFor(() => w.ReadCounter() > before + 2 ? 1 : 0, "the rehearsed workload to count on");
    }

    [GeneratedRegex(@"restored as pid (\d+)")]
    private static partial Regex RestoredAs();

    [GeneratedRegex(@"\u001b\[[0-9]+A")]
    private static partial Regex CursorUp();

    [GeneratedRegex(@"\u001b(\[[0-9;?]*[A-Za-z]|[=>])")]
    private static partial Regex Ansi();
}
