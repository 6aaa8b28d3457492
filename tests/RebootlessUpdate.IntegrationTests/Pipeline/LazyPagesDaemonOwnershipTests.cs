using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using Mono.Unix.Native;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Pipeline;

/// <summary>
/// Lazy-pages daemons belong to their set, with the real tool and the testbed's criu: an orphan left by a
/// killed lazy restore holds no later run up and is stopped by `resume`; a daemon serving a live target still blocks.
/// </summary>
[NonParallelizable]
public class LazyPagesDaemonOwnershipTests
{
    private Testbed _testbed = null!;
    private string _dir = null!;
    private string _tool = null!;
    private readonly List<Workload> _workloads = [];
    private readonly List<CriuLazyPagesDaemon> _daemons = [];

    [SetUp]
    public void SetUp()
    {
        _testbed = Testbed.Require();
        Testbed.RequireRoot();
        _dir = Directory.CreateTempSubdirectory("rebootless-daemons-it-").FullName;
        _tool = BuiltTool.Path;
    }

    [TearDown]
    public async Task TearDown()
    {
        foreach (var d in _daemons)
        {
            await d.DisposeAsync();
        }

        foreach (var w in _workloads)
        {
            w.Dispose();
        }

        _daemons.Clear(); // one fixture instance serves every test
        _workloads.Clear();

        Directory.Delete(_dir, recursive: true);
    }

    private ProcessResult Tool(params string[] args) => ProcessRunner.Run("dotnet", [_tool, .. args], TimeSpan.FromMinutes(2));

    private ProcessResult ToolCrashingAt(string crashAt, params string[] args) =>
        ProcessRunner.Run("env", [$"REBOOTLESS_CRASH_AT={crashAt}", "REBOOTLESS_TEST_HOOKS=1", "dotnet", _tool, .. args], TimeSpan.FromMinutes(2));

    private Workload Track(Workload w)
    {
        _workloads.Add(w);
        return w;
    }

    /// <summary>A store whose rehearsal of a workload was killed once CRIU had ended the tree: the set is sealed, the workload down.</summary>
    private (string Store, JournalRecord Journal, Workload Workload, string AppDir) InterruptedRehearsal(string name)
    {
        var store = Directory.CreateDirectory(Path.Combine(_dir, name)).FullName;
        var appDir = Path.Combine(_dir, name + "-app");
        var workload = Track(Workload.StartProgram(appDir, 16));
        var crashed = ToolCrashingAt("sealed/dumped", "rehearse", "--pid", Pid(workload.RootPid), "--store", store, "--criu", _testbed.Criu);
        Assert.That(crashed.ExitCode, Is.EqualTo(137), crashed.ToString());
        return (store, UpdateJournal.List(store).Single(), workload, appDir);
    }

    [Test]
    public void A_lazy_resume_killed_mid_way_leaves_an_orphan_that_holds_no_later_run_up_and_the_next_resume_stops_it()
    {
        var (store, journal, workload, appDir) = InterruptedRehearsal("store");
        var work = Path.Combine(UpdateJournal.LogDirectoryOf(store, journal.SetId), journal.Targets[0].Folder);
        var pidFile = Path.Combine(work, "lazy-pages.pid");

        // A lazy resume, SIGKILLed as soon as its daemon is up (before CRIU's restore reaches it).
        var psi = new ProcessStartInfo("dotnet") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { _tool, "resume", "--lazy-restore", "--store", store, "--criu", _testbed.Criu })
        {
            psi.ArgumentList.Add(a);
        }

        using (var resume = Process.Start(psi)!)
        {
            var watch = Stopwatch.StartNew();
            while (!File.Exists(pidFile) && !resume.HasExited && watch.Elapsed < TimeSpan.FromSeconds(60))
            {
                Thread.Sleep(1);
            }

            resume.Kill(); // this tool process only, by its pid: the daemon is detached, CRIU's worker sees its client gone
            resume.WaitForExit();
            Assert.That(resume.ExitCode, Is.EqualTo(137), "killed, not finished: " + resume.StandardError.ReadToEnd());
        }

        var daemon = 0;
        Workload.WaitFor(() => (daemon = ReadPid(pidFile)) > 0 && Workload.IsRunning(daemon) ? 1 : 0, "the daemon's pid file");
        Thread.Sleep(500); // let CRIU's worker notice its client is gone
        var found = CriuLazyPagesDaemon.FindRunningDaemons().Single(d => d.Pid == daemon);
        if (found.HoldsUserfaultfd || Instances(appDir) > 0)
        {
            Assert.Inconclusive("the kill came after CRIU's restore reached the daemon; this test needs a daemon no restore reached");
        }

        Assert.That(found.WorkDirectory, Is.EqualTo(work), "the daemon names its set's logs folder");

        // Another run on the host (another store, so the interrupted journal does not stop it) is not held up by the orphan.
        var other = Directory.CreateDirectory(Path.Combine(_dir, "other-store")).FullName;
        using var shell = Workload.Start(Path.Combine(_dir, "shell"));
        var plan = Tool("rehearse", "--pid", Pid(shell.RootPid), "--store", other, "--criu", _testbed.Criu);
        TestContext.Out.WriteLine($"--- rehearse elsewhere\n{plan}");
        Assert.Multiple(() =>
        {
            Assert.That(plan.ExitCode, Is.Zero, plan.ToString());
            Assert.That(plan.Error, Does.Contain($"criu lazy-pages (pid {daemon}) of set {journal.SetId}").And.Contain("does not hold this run up")
                .And.Contain($"rebootless resume --store {store}"));
            Assert.That(Workload.IsRunning(daemon), Is.True, "a plan never kills anything");
        });
        shell.RootPid = RehearsedPid(other);

        var resumed = Tool("resume", "--store", store, "--criu", _testbed.Criu);
        TestContext.Out.WriteLine($"--- resume\n{resumed}");
        Assert.That(resumed.ExitCode, Is.Zero, resumed.ToString());
        Assert.That(resumed.Error, Does.Contain($"stopped criu lazy-pages (pid {daemon})"));
        Workload.WaitFor(() => Workload.IsRunning(daemon) ? 0 : 1, "the orphaned daemon to be gone");
        var after = UpdateJournal.List(store).Single();
        workload.RootPid = after.Targets[0].RestoredPid!.Value;
        Assert.That(workload.Check(), Does.StartWith("ok"), "the workload came back with its memory");
        Assert.That(Instances(appDir), Is.EqualTo(1));
    }

    [Test]
    public async Task A_daemon_still_serving_a_live_restored_target_blocks_a_plan_and_resume_leaves_it_alone()
    {
        var (store, journal, workload, _) = InterruptedRehearsal("store");
        // The recovered rehearsal's set is deleted: keep a copy of the target's images for the daemon to serve from.
        var folder = journal.Targets[0].Folder;
        var images = Directory.CreateDirectory(Path.Combine(_dir, "images-copy")).FullName;
        foreach (var f in Directory.GetFiles(Path.Combine(store, "sets", journal.SetId, "images", folder)))
        {
            File.Copy(f, Path.Combine(images, Path.GetFileName(f)));
        }

        var resumed = Tool("resume", "--store", store, "--criu", _testbed.Criu);
        Assert.That(resumed.ExitCode, Is.Zero, resumed.ToString());
        var target = UpdateJournal.List(store).Single().Targets[0];
        workload.RootPid = target.RestoredPid!.Value;

        // The state a lazy resume leaves while its daemon still delivers pages: the journal records the daemon
        // as serving the restored target. A real daemon, in that target's work folder over the set's images.
        var work = Path.Combine(UpdateJournal.LogDirectoryOf(store, journal.SetId), target.Folder);
        var daemon = await CriuLazyPagesDaemon.StartAsync(new CriuClientOptions { CriuPath = _testbed.Criu },
            new CriuLazyPagesOptions { ImagesDirectory = images, WorkDirectory = work });
        _daemons.Add(daemon);
        RecordDaemon(store, journal.SetId, daemon.Pid);

        using var shell = Workload.Start(Path.Combine(_dir, "shell"));
        var other = Directory.CreateDirectory(Path.Combine(_dir, "other-store")).FullName;
        // A checkpoint of the tree it serves would miss the pages not delivered yet: refused, from any store.
        var refused = Tool("rehearse", "--pid", Pid(workload.RootPid), "--store", other, "--criu", _testbed.Criu);
        TestContext.Out.WriteLine($"--- rehearse the served tree elsewhere\n{refused}");
        Assert.Multiple(() =>
        {
            Assert.That(refused.ExitCode, Is.Not.Zero, refused.ToString());
            Assert.That(refused.Error, Does.Contain($"criu lazy-pages (pid {daemon.Pid}) of set {journal.SetId}")
                .And.Contain($"still delivers the memory of {target.Id}").And.Contain("nothing was frozen"));
            Assert.That(workload.IsAlive, Is.True);
        });

        // Another workload's checkpoint loses nothing of it: not held up.
        var third = Directory.CreateDirectory(Path.Combine(_dir, "third-store")).FullName;
        var unrelated = Tool("rehearse", "--pid", Pid(shell.RootPid), "--store", third, "--criu", _testbed.Criu);
        TestContext.Out.WriteLine($"--- rehearse an unrelated tree\n{unrelated}");
        Assert.That(unrelated.ExitCode, Is.Zero, unrelated.ToString());
        shell.RootPid = RehearsedPid(third);

        var again = Tool("resume", "--store", store, "--criu", _testbed.Criu);
        Assert.That(again.ExitCode, Is.Zero, again.ToString());
        Assert.That(daemon.HasExited, Is.False, "a daemon serving a live target is never stopped");

        // Once its tree is gone it serves nothing: the next plan goes ahead and resume stops it.
        _ = Syscall.kill(workload.RootPid, Signum.SIGKILL); // the restored workload this test started
        Workload.WaitFor(() => Workload.IsRunning(target.RestoredPid!.Value) ? 0 : 1, "the restored workload to end");
        // Retention through the tool, by the way: a logs folder no journal accounts for, older than the grace period, goes.
        var stale = Directory.CreateDirectory(Path.Combine(UpdateJournal.LogDirectoryOf(other, "20200101T000000Z-deadbeef"), "00-pid-1")).FullName;
        await File.WriteAllTextAsync(Path.Combine(stale, "dump.log"), "left by a run whose journal is gone");
        var planned = Tool("rehearse", "--pid", Pid(shell.RootPid), "--store", other, "--criu", _testbed.Criu);
        Assert.That(planned.ExitCode, Is.Zero, planned.ToString());
        shell.RootPid = RehearsedPid(other);
        Assert.That(planned.Error, Does.Contain("is gone").And.Contain("retention deleted 0 set(s), 0 journal(s), 1 logs folder(s)"));
        Assert.That(Directory.Exists(Path.GetDirectoryName(stale)), Is.False);
        Assert.That(Directory.Exists(UpdateJournal.LogDirectoryOf(other, UpdateJournal.List(other).Single().SetId)), Is.True, "the run's own logs stay");
        var recovered = Tool("resume", "--store", store, "--criu", _testbed.Criu);
        Assert.That(recovered.ExitCode, Is.Zero, recovered.ToString());
        Workload.WaitFor(() => daemon.HasExited ? 1 : 0, "resume to stop the daemon whose tree is gone");
    }

    [Test]
    public async Task A_daemon_a_lazy_restore_reached_holds_the_trees_userfaultfd_and_one_waiting_holds_none()
    {
        var client = new CriuClient(new CriuClientOptions { CriuPath = _testbed.Criu });
        if (!(await client.CheckFeaturesAsync()).LazyPages)
        {
            Testbed.Missing("userfaultfd lazy pages on this kernel");
        }

        var workload = Track(Workload.StartProgram(Path.Combine(_dir, "app"), 256));
        var images = Directory.CreateDirectory(Path.Combine(_dir, "images")).FullName;
        var work = Directory.CreateDirectory(Path.Combine(_dir, "work")).FullName;
        await client.DumpAsync(new CriuDumpOptions { ImagesDirectory = images, WorkDirectory = work, Pid = workload.RootPid });
        Workload.WaitFor(() => workload.IsAlive ? 0 : 1, "the dumped tree to be gone");
        var daemon = await client.StartLazyPagesDaemonAsync(new CriuLazyPagesOptions { ImagesDirectory = images, WorkDirectory = work });
        _daemons.Add(daemon);

        var waiting = CriuLazyPagesDaemon.FindRunningDaemons().Single(d => d.Pid == daemon.Pid);
        var restore = await client.RestoreAsync(new CriuRestoreOptions { ImagesDirectory = images, WorkDirectory = work, LazyPages = true });
        workload.RootPid = restore.Pid;
        var serving = CriuLazyPagesDaemon.FindRunningDaemons().SingleOrDefault(d => d.Pid == daemon.Pid);

        Assert.Multiple(() =>
        {
            Assert.That(waiting, Is.EqualTo(new RunningLazyPagesDaemon(daemon.Pid, daemon.StartTime, work, HoldsUserfaultfd: false)));
            Assert.That(LazyPagesDaemons.Judge(waiting).BlocksCheckpoint, Is.False, "serves no tree (and no set)");
            Assert.That(serving, Is.Not.Null, "256 MiB take a while to deliver");
            Assert.That(serving?.HoldsUserfaultfd, Is.True, "the restore handed it the tree's memory");
            Assert.That(serving is null || LazyPagesDaemons.Judge(serving).BlocksCheckpoint, Is.True, "a tree of no set still blocks while served");
        });
        Assert.That(workload.Check(), Does.StartWith("ok"));
        await daemon.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(60));
    }

    /// <summary>Writes <paramref name="daemonPid"/> into the journal as the lazy-pages daemon of its (only) restored target.</summary>
    private static void RecordDaemon(string store, string setId, int daemonPid)
    {
        var path = Path.Combine(UpdateJournal.DirectoryOf(store), setId + ".json");
        var json = JsonNode.Parse(File.ReadAllText(path))!;
        json["targets"]![0]!["lazyPagesDaemonPid"] = daemonPid;
        File.WriteAllText(path, json.ToJsonString());
    }

    /// <summary>The pid the newest rehearsal in <paramref name="store"/> restored its (only) target as.</summary>
    private static int RehearsedPid(string store) => UpdateJournal.List(store).MaxBy(j => j.SetId, StringComparer.Ordinal)!.Targets[0].RestoredPid!.Value;

    private static int ReadPid(string pidFile)
    {
        try
        {
            return int.TryParse(File.ReadAllText(pidFile).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var pid) ? pid : 0;
        }
        catch (IOException)
        {
            return 0;
        }
    }

    private static string Pid(int pid) => pid.ToString(CultureInfo.InvariantCulture);

    /// <summary>Running copies of a workload: roots of a PID namespace whose command line names its folder.</summary>
    private static int Instances(string appDir) =>
        Directory.GetDirectories("/proc").Select(d => int.TryParse(Path.GetFileName(d), out var p) ? p : 0)
            .Count(p => p > 0 && Workload.IsRunning(p) && CommandLineNames(p, appDir) && NamespacePidOrZero(p) == 1);

    private static bool CommandLineNames(int pid, string appDir)
    {
        try
        {
            return File.ReadAllText($"/proc/{pid}/cmdline").Contains(appDir, StringComparison.Ordinal);
        }
        catch (IOException)
        {
            return false;
        }
    }

    private static int NamespacePidOrZero(int pid)
    {
        try
        {
            return Workload.NamespacePid(pid);
        }
        catch (Exception e) when (e is IOException or InvalidOperationException)
        {
            return 0;
        }
    }
}
