using System.Globalization;
using System.Text.Json;
using Mono.Unix.Native;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Pipeline;

/// <summary>
/// The real tool, killed with SIGKILL at every journal point a host can reach
/// (REBOOTLESS_CRASH_AT with REBOOTLESS_TEST_HOOKS=1; no kexec here, so nothing from kernel-loaded on), then the
/// next run: `rebootless resume` either finishes or rolls back, and no workload is lost.
/// </summary>
[NonParallelizable]
public partial class CrashRecoveryTests
{
    private Testbed _testbed = null!;
    private string _dir = null!;
    private string _tool = null!;
    private Workload? _workload;

    [SetUp]
    public void SetUp()
    {
        _testbed = Testbed.Require();
        Testbed.RequireRoot();
        _dir = Directory.CreateTempSubdirectory("rebootless-crash-it-").FullName;
        _tool = BuiltTool.Path;
    }

    [TearDown]
    public void TearDown()
    {
        _workload?.Dispose();
        _workload = null;
        Directory.Delete(_dir, recursive: true);
    }

    private ProcessResult Tool(string? crashAt, params string[] args) => crashAt is null
        ? ProcessRunner.Run("dotnet", [_tool, .. args], TimeSpan.FromMinutes(2))
        : ProcessRunner.Run("env", [$"REBOOTLESS_CRASH_AT={crashAt}", "REBOOTLESS_TEST_HOOKS=1", "dotnet", _tool, .. args], TimeSpan.FromMinutes(2));

    // crash point, journal state on disk at the crash, what the next run finds, the journal's end state
    [TestCase("planned", JournalState.Planned, TargetPhase.Resumed, JournalState.RolledBack, TestName = "Crash after planned: never frozen, resume rolls back")]
    [TestCase("dumping", JournalState.Dumping, TargetPhase.Resumed, JournalState.RolledBack, TestName = "Crash after dumping began: resume rolls back")]
    [TestCase("dumping/frozen", JournalState.Dumping, TargetPhase.Resumed, JournalState.RolledBack, TestName = "Crash while criu holds the tree at post-dump: criu resumes it in place")]
    [TestCase("sealed", JournalState.Sealed, TargetPhase.Resumed, JournalState.RolledBack, TestName = "Crash after sealed, tree still held: criu resumes it in place")]
    [TestCase("sealed/dumped", JournalState.Sealed, TargetPhase.Restored, JournalState.RolledBack, TestName = "Crash after criu ended the tree: resume restores it from the sealed images")]
    [TestCase("resuming", JournalState.Resuming, TargetPhase.Restored, JournalState.RolledBack, TestName = "Crash before the restore: resume restores it")]
    [TestCase("resuming/restoring", JournalState.Resuming, TargetPhase.Restored, JournalState.RolledBack, TestName = "Crash once restoring is journaled, before criu is asked: resume restores it once")]
    [TestCase("restore-answered", JournalState.Resuming, TargetPhase.Restored, JournalState.RolledBack, TestName = "Crash after criu restored the tree, before the run recorded it: resume adopts that tree, no second copy")]
    [TestCase("resuming/restored", JournalState.Resuming, TargetPhase.Restored, JournalState.RolledBack, TestName = "Crash after the restore: resume restores nothing twice")]
    [TestCase("resumed", JournalState.Resumed, TargetPhase.Restored, JournalState.Resumed, TestName = "Crash after resumed: nothing to do")]
    public void Killed_orchestrator_then_resume_loses_no_workload(string crashAt, JournalState atCrash, TargetPhase expectedPhase, JournalState end)
    {
        var store = Directory.CreateDirectory(Path.Combine(_dir, "store")).FullName;
        var appDir = Path.Combine(_dir, "app");
        _workload = Workload.StartProgram(appDir, 16);
        var originalPid = _workload.RootPid;

        var crashed = Tool(crashAt, "rehearse", "--pid", Pid(originalPid), "--store", store, "--criu", _testbed.Criu, "--json");
        TestContext.Out.WriteLine($"--- rehearse, killed at {crashAt}\n{crashed}");
        Assert.That(crashed.ExitCode, Is.EqualTo(128 + 9), "the tool died by SIGKILL");
        Assert.That(crashed.Error, Does.Contain($"killing this process (pid").And.Contain($"at {crashAt}"));
        var journal = UpdateJournal.List(store).Single();
        Assert.That(journal.State, Is.EqualTo(atCrash), "the crash happened where it was asked");

        if (atCrash != JournalState.Resumed)
        {
            // Another run refuses to use the store until the interrupted one is dealt with (any live target will do).
            using var other = System.Diagnostics.Process.Start("sleep", "60");
            try
            {
                var refused = Tool(null, "rehearse", "--pid", Pid(other.Id), "--store", store, "--criu", _testbed.Criu);
                Assert.That(refused.ExitCode, Is.EqualTo(12), "needs attention, not a rollback of its own: " + refused);
                Assert.That(refused.Error, Does.Contain("was interrupted at").And.Contain("run `rebootless resume` first"));
                Assert.That(Workload.IsRunning(other.Id), Is.True, "the refused run touched nothing");
            }
            finally
            {
                other.Kill();
            }
        }

        var resumed = Tool(null, "resume", "--store", store, "--criu", _testbed.Criu, "--json");
        TestContext.Out.WriteLine($"--- resume\n{resumed}");
        Assert.That(resumed.ExitCode, Is.Zero, resumed.ToString());
        using (var json = JsonDocument.Parse(resumed.Output))
        {
            Assert.That(json.RootElement.GetProperty("outcome").GetString(), Is.AnyOf("Succeeded", "NothingToDo"));
        }

        var after = UpdateJournal.List(store).Single();
        TestContext.Out.WriteLine("history: " + string.Join(" -> ", after.History.Select(h => h.State)));
        Assert.That(after.State, Is.EqualTo(end));
        var target = after.Targets.Single();
        Assert.That(target.Phase, Is.EqualTo(expectedPhase), target.Error);
        _workload.RootPid = expectedPhase == TargetPhase.Restored ? target.RestoredPid!.Value : originalPid;
        if (expectedPhase == TargetPhase.Resumed)
        {
            Assert.That(_workload.RootPid, Is.EqualTo(originalPid), "never ended: runs in place");
        }
        else
        {
            Assert.That(Workload.IsRunning(originalPid) && Workload.NamespacePid(originalPid) == 1 && IsInstanceOf(originalPid, appDir), Is.False, "the original ended");
        }

        Assert.That(_workload.Check(), Does.StartWith("ok"), "the workload's memory, files, pipe and socket are intact");
        var before = _workload.ReadCounter();
        Workload.WaitFor(() => _workload.ReadCounter() > before + 2 ? 1 : 0, "the workload to count on");
        Assert.That(Instances(appDir), Is.EqualTo(1), "exactly one copy of the workload runs (nothing restored twice)");

        var again = Tool(null, "resume", "--store", store, "--criu", _testbed.Criu, "--json");
        Assert.That(again.ExitCode, Is.Zero, "resume is idempotent: " + again);
        Assert.That(Instances(appDir), Is.EqualTo(1));
    }

    [Test]
    public void A_tree_criu_restored_and_let_run_that_exited_before_the_resume_is_not_restored_a_second_time()
    {
        var store = Directory.CreateDirectory(Path.Combine(_dir, "store")).FullName;
        var appDir = Path.Combine(_dir, "app");
        _workload = Workload.StartProgram(appDir, 16);

        // The tool dies once CRIU has answered: the journal says "restoring" and names the root post-restore recorded.
        var crashed = Tool("restore-answered", "rehearse", "--pid", Pid(_workload.RootPid), "--store", store, "--criu", _testbed.Criu);
        Assert.That(crashed.ExitCode, Is.EqualTo(128 + 9), crashed.ToString());
        var target = UpdateJournal.List(store).Single().Targets.Single();
        Assert.That(target.Phase, Is.EqualTo(TargetPhase.Restoring));
        var copy = Workload.CopiesOf(appDir).Single();
        Assert.That(target.RestoredPid, Is.EqualTo(copy), "the journal names the tree CRIU let run");

        // That tree runs, then exits before anyone resumes (our test's own restored copy, killed by its pid).
        Assert.That(Mono.Unix.Native.Syscall.kill(copy, Mono.Unix.Native.Signum.SIGKILL), Is.Zero);
        Workload.WaitFor(() => Workload.IsRunning(copy) ? 0 : 1, "the restored copy to exit");

        var resumed = Tool(null, "resume", "--store", store, "--criu", _testbed.Criu);
        TestContext.Out.WriteLine(resumed.ToString());
        Assert.Multiple(() =>
        {
            Assert.That(resumed.ExitCode, Is.EqualTo(12), "needs an operator: " + resumed);
            Assert.That(resumed.Output + resumed.Error, Does.Contain("let it run (its restore log says so), and it has exited since"));
            Assert.That(Instances(appDir), Is.Zero, "its images are older than what it did: not restored a second time");
            Assert.That(UpdateJournal.List(store).Single().Targets.Single().Phase, Is.EqualTo(TargetPhase.Ended));
        });
    }

    [Test]
    public void A_stray_crash_variable_without_the_test_hooks_gate_is_ignored_with_one_warning()
    {
        var store = Directory.CreateDirectory(Path.Combine(_dir, "store")).FullName;
        using var shell = Workload.Start(Path.Combine(_dir, "shell"));

        var r = ProcessRunner.Run("env", ["REBOOTLESS_CRASH_AT=sealed", "dotnet", _tool, "rehearse", "--pid", Pid(shell.RootPid), "--store", store, "--criu", _testbed.Criu, "--json"], TimeSpan.FromMinutes(2));
        TestContext.Out.WriteLine(r.ToString());

        Assert.That(r.ExitCode, Is.Zero, "not killed: " + r);
        Assert.That(r.Error, Does.Contain("REBOOTLESS_CRASH_AT is set but ignored").And.Not.Contain("killing this process"));
        Assert.That(r.Error.Split('\n', StringSplitOptions.RemoveEmptyEntries).Count(l => l.Contains("REBOOTLESS_CRASH_AT", StringComparison.Ordinal)), Is.EqualTo(1));
        using var json = JsonDocument.Parse(r.Output);
        shell.RootPid = json.RootElement.GetProperty("targets")[0].GetProperty("restoredPid").GetInt32();
        var before = shell.ReadCounter();
        Workload.WaitFor(() => shell.ReadCounter() > before + 2 ? 1 : 0, "the rehearsed workload to count on");
    }

    // Two targets: dumped one after the other, each held until both are; restored in parallel.
    [TestCase("dumping/frozen", TargetPhase.Resumed)]
    [TestCase("sealed/dumped", TargetPhase.Restored)]
    public void Two_targets_killed_orchestrator_then_resume_brings_both_back(string crashAt, TargetPhase expectedPhase)
    {
        var store = Directory.CreateDirectory(Path.Combine(_dir, "store")).FullName;
        _workload = Workload.StartProgram(Path.Combine(_dir, "rich"), 16);
        using var shell = Workload.Start(Path.Combine(_dir, "shell"));
        var (richPid, shellPid) = (_workload.RootPid, shell.RootPid);

        var crashed = Tool(crashAt, "rehearse", "--pid", Pid(richPid), "--pid", Pid(shellPid), "--store", store, "--criu", _testbed.Criu);
        TestContext.Out.WriteLine($"--- rehearse, killed at {crashAt}\n{crashed}");
        Assert.That(crashed.ExitCode, Is.EqualTo(137), crashed.ToString());

        var resumed = Tool(null, "resume", "--store", store, "--criu", _testbed.Criu);
        TestContext.Out.WriteLine($"--- resume\n{resumed}");
        Assert.That(resumed.ExitCode, Is.Zero, resumed.ToString());
        var after = UpdateJournal.List(store).Single();
        Assert.That(after.State, Is.EqualTo(JournalState.RolledBack));
        Assert.That(after.Targets.Select(t => t.Phase), Is.All.EqualTo(expectedPhase));
        _workload.RootPid = after.Targets[0].RestoredPid ?? richPid;
        shell.RootPid = after.Targets[1].RestoredPid ?? shellPid;
        Assert.That(_workload.Check(), Does.StartWith("ok"));
        var before = shell.ReadCounter();
        Workload.WaitFor(() => shell.ReadCounter() > before + 2 ? 1 : 0, "the shell workload to count on");
    }

    [Test]
    public void A_page_image_damaged_before_resume_is_caught_while_restoring_and_that_target_never_runs()
    {
        var store = Directory.CreateDirectory(Path.Combine(_dir, "store")).FullName;
        var richDir = Path.Combine(_dir, "rich");
        _workload = Workload.StartProgram(richDir, 16);
        using var shell = Workload.Start(Path.Combine(_dir, "shell"));
        var crashed = Tool("sealed/dumped", "rehearse", "--pid", Pid(_workload.RootPid), "--pid", Pid(shell.RootPid), "--store", store, "--criu", _testbed.Criu);
        Assert.That(crashed.ExitCode, Is.EqualTo(137), crashed.ToString());
        var journal = UpdateJournal.List(store).Single();
        var rich = journal.Targets[0];
        var victim = FlipAByteOfTheLargestPageImage(store, journal, rich);

        var resumed = Tool(null, "resume", "--store", store, "--criu", _testbed.Criu, "--json");
        TestContext.Out.WriteLine($"--- resume\n{resumed}");
        var after = UpdateJournal.List(store).Single();
        Assert.Multiple(() =>
        {
            Assert.That(resumed.ExitCode, Is.EqualTo(12), "not every workload could be put back");
            Assert.That(after.Targets[0].Phase, Is.EqualTo(TargetPhase.Failed));
            Assert.That(after.Targets[0].Error, Does.Contain("failed verification").And.Contain(Path.GetFileName(victim)));
            Assert.That(File.Exists(Path.Combine(UpdateJournal.LogDirectoryOf(store, journal.SetId), rich.Folder, "restore.log")), Is.True,
                "CRIU was already restoring it when its pages failed (the check ran during the restore)");
            Assert.That(Instances(richDir), Is.Zero, "nothing of the damaged target runs");
            Assert.That(after.Targets[1].Phase, Is.EqualTo(TargetPhase.Restored), after.Targets[1].Error);
            Assert.That(File.Exists(victim), Is.True, "the images are kept for inspection");
        });
        shell.RootPid = after.Targets[1].RestoredPid!.Value;
        var before = shell.ReadCounter();
        Workload.WaitFor(() => shell.ReadCounter() > before + 2 ? 1 : 0, "the other target to count on");
    }

    // Lazy restore asked at rehearse (recorded in the journal, resume follows it) or only at resume (--lazy-restore).
    [TestCase(true, false, TestName = "Lazy restore from the journal: a damaged page image is caught at post-restore, nothing runs, the other target is served lazily")]
    [TestCase(false, true, TestName = "Lazy restore asked at resume: a damaged page image is caught at post-restore, nothing runs, the other target is served lazily")]
    public void A_page_image_damaged_before_a_lazy_resume_is_caught_before_anything_runs_and_its_daemon_is_stopped(bool lazyAtRehearse, bool lazyAtResume)
    {
        var store = Directory.CreateDirectory(Path.Combine(_dir, "store")).FullName;
        var richDir = Path.Combine(_dir, "rich");
        _workload = Workload.StartProgram(richDir, 16);
        var checksum = _workload.InitialChecksum;
        using var other = Workload.StartProgram(Path.Combine(_dir, "other"), 16);
        string[] lazyRehearse = lazyAtRehearse ? ["--lazy-restore"] : [];
        var crashed = Tool("sealed/dumped", ["rehearse", "--pid", Pid(_workload.RootPid), "--pid", Pid(other.RootPid), .. lazyRehearse, "--store", store, "--criu", _testbed.Criu]);
        Assert.That(crashed.ExitCode, Is.EqualTo(137), crashed.ToString());
        var journal = UpdateJournal.List(store).Single();
        Assert.That(journal.Targets.Select(t => t.Settings.LazyPages), Is.All.EqualTo(lazyAtRehearse), "the journal records the choice");
        var rich = journal.Targets[0];
        var victim = FlipAByteOfTheLargestPageImage(store, journal, rich);

        string[] lazyResume = lazyAtResume ? ["--lazy-restore"] : [];
        var resumed = Tool(null, ["resume", .. lazyResume, "--store", store, "--criu", _testbed.Criu, "--json"]);
        TestContext.Out.WriteLine($"--- resume\n{resumed}");
        var after = UpdateJournal.List(store).Single();
        other.RootPid = after.Targets[1].RestoredPid ?? other.RootPid;
        var work = Path.Combine(UpdateJournal.LogDirectoryOf(store, journal.SetId), rich.Folder);
        var richDaemon = File.Exists(Path.Combine(work, "lazy-pages.pid")) ? int.Parse(File.ReadAllText(Path.Combine(work, "lazy-pages.pid")).Trim(), CultureInfo.InvariantCulture) : 0;
        Assert.Multiple(() =>
        {
            Assert.That(resumed.ExitCode, Is.EqualTo(12), "not every workload could be put back");
            Assert.That(after.Targets[0].Phase, Is.EqualTo(TargetPhase.Failed));
            Assert.That(after.Targets[0].Error, Does.Contain("failed verification").And.Contain(Path.GetFileName(victim)));
            Assert.That(richDaemon, Is.Positive, "a lazy-pages daemon was started for the damaged target");
            Assert.That(Workload.IsRunning(richDaemon), Is.False, "its daemon was stopped with the refused restore");
            Assert.That(after.Targets[0].LazyPagesDaemonPid, Is.Null);
            Assert.That(Instances(richDir), Is.Zero, "nothing of the damaged target runs");
            Assert.That(after.Targets[1].Phase, Is.EqualTo(TargetPhase.Restored), after.Targets[1].Error);
            Assert.That(after.Targets[1].LazyPagesDaemonPid, Is.Positive, "the intact target was restored lazily");
        });
        Assert.That(other.Check(), Does.StartWith("ok"), "the intact target's memory, served on demand, is intact");
        var before = other.ReadCounter();
        Workload.WaitFor(() => other.ReadCounter() > before + 2 ? 1 : 0, "the other target to count on");
        Workload.WaitFor(() => Workload.IsRunning(after.Targets[1].LazyPagesDaemonPid!.Value) ? 0 : 1, "its daemon to deliver every page and exit", 60);
    }

    /// <summary>Flips one byte in the middle of the target's largest page image (between the dump and the resume); returns the file.</summary>
    private static string FlipAByteOfTheLargestPageImage(string store, JournalRecord journal, JournalTarget target)
    {
        var images = Path.Combine(store, "sets", journal.SetId, "images", target.Folder);
        var victim = Directory.GetFiles(images, "pages-*.img").MaxBy(f => new FileInfo(f).Length)!;
        using var f = new FileStream(victim, FileMode.Open, FileAccess.ReadWrite);
        f.Position = f.Length / 2;
        var b = f.ReadByte();
        f.Position--;
        f.WriteByte((byte)(b ^ 0xFF));
        return victim;
    }

    private static string Pid(int pid) => pid.ToString(CultureInfo.InvariantCulture);

    private static int Instances(string appDir) => Workload.CopiesOf(appDir).Count;

    private static bool IsInstanceOf(int pid, string appDir) => Workload.IsCopyOf(pid, appDir);
}
