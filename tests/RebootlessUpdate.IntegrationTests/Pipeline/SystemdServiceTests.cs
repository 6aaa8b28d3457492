using System.Globalization;
using System.Text.Json;
using Mono.Unix.Native;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Pipeline;

/// <summary>
/// `rebootless --service UNIT --systemd-user` against a real systemd (a private
/// <c>systemd --user</c> manager: this host's PID 1 is not systemd; see <see cref="PrivateSystemd"/>).
/// The tool runs in the manager's mount namespace, as it would on a systemd host.
/// </summary>
[NonParallelizable]
public class SystemdServiceTests
{
    // A service of two processes (python3 and a child it forks once) that count in files; no
    // process forks while it runs (a shell's vfork'd `sleep` may be frozen mid-fork, which CRIU cannot seize).
    private const string CounterProgram =
        "import os, sys, time\n" +
        "d = sys.argv[1]\n" +
        "name = 'child' if os.fork() == 0 else 'counter'\n" +
        "i = 0\n" +
        "while True:\n" +
        "    i += 1\n" +
        "    open(f'{d}/{name}.tmp', 'w').write(str(i))\n" +
        "    os.rename(f'{d}/{name}.tmp', f'{d}/{name}')\n" +
        "    time.sleep(0.05)\n";

    private Testbed _testbed = null!;
    private string _dir = null!;
    private string _tool = null!;
    private PrivateSystemd? _systemd;
    private string _app = null!;
    private string _marks = null!;
    private string _program = null!;

    [SetUp]
    public void SetUp()
    {
        _testbed = Testbed.Require();
        Testbed.RequireRoot();
        _dir = Directory.CreateTempSubdirectory("rebootless-systemd-it-").FullName;
        _tool = BuiltTool.Path;

        _app = Directory.CreateDirectory(Path.Combine(_dir, "app")).FullName;
        _marks = Path.Combine(_dir, "stop-actions");
        _program = Path.Combine(_dir, "counter.py");
        File.WriteAllText(_program, CounterProgram);
    }

    /// <summary>
    /// Starts the manager with idle.service and counter.service: a service whose stop actions leave marks and that
    /// systemd restarts whenever its main process ends. The tree's end at the dump must trigger neither, and no second
    /// copy may start next to the restored one. The policy is in the unit file, or in <c>override.conf</c> (what
    /// <c>systemctl edit</c> writes, and a drop-in read after most names); <paramref name="dropIns"/> adds more.
    /// </summary>
    private void StartManager(bool policyInOverride = false, params (string Name, string Content)[] dropIns)
    {
        var policy = $"Restart=always\nRestartSec=200ms\nExecStop=/bin/sh -c 'echo stop >> {_marks}'\nExecStopPost=/bin/sh -c 'echo stop-post >> {_marks}'\n";
        var units = new Dictionary<string, string>
        {
            ["idle.service"] = "[Service]\nExecStart=/bin/sleep 600\n",
            ["counter.service"] = $"[Service]\nExecStart=/usr/bin/python3 {_program} {_app}\n" + (policyInOverride ? "" : policy),
        };
        if (policyInOverride)
        {
            units["counter.service.d/override.conf"] = "[Service]\n" + policy;
        }

        foreach (var (name, content) in dropIns)
        {
            units["counter.service.d/" + name] = content;
        }

        _systemd = PrivateSystemd.Start(Path.Combine(_dir, "systemd"), units);
    }

    [TearDown]
    public void TearDown()
    {
        _systemd?.Dispose();
        _systemd = null;
        Directory.Delete(_dir, recursive: true);
    }

    // plan runs no criu: it takes no --criu.
    private ProcessResult Tool(params string[] args) =>
        _systemd!.Run("dotnet", [_tool, .. args, "--systemd-user", .. args[0] == "plan" ? Array.Empty<string>() : ["--criu", _testbed.Criu]]);

    [TestCase(false, TestName = "Rehearse of a running service hands the restored tree back to its unit, with no stop action and no second copy")]
    [TestCase(true, TestName = "The same when Restart= and the stop actions come from override.conf")]
    public void Rehearse_of_a_running_service_hands_the_restored_tree_back_to_its_unit(bool policyInOverride)
    {
        StartManager(policyInOverride);
        var systemd = _systemd!;
        var mainPid = StartCounter();
        var cgroup = systemd.CgroupFolder("counter");
        var store = Directory.CreateDirectory(Path.Combine(_dir, "store")).FullName;

        var plan = Tool("plan", "--service", "counter", "--store", store, "--json");
        TestContext.Out.WriteLine(plan.ToString());
        Assert.That(plan.ExitCode, Is.Zero, plan.ToString());
        using (var json = JsonDocument.Parse(plan.Output))
        {
            var t = json.RootElement.GetProperty("targets")[0];
            Assert.That(t.GetProperty("target").GetString(), Is.EqualTo("user-service:counter.service"));
            Assert.That(t.GetProperty("rootPid").GetInt32(), Is.EqualTo(mainPid));
            Assert.That(t.GetProperty("processes").GetInt32(), Is.EqualTo(2));
            var freeze = t.TryGetProperty("freezeCgroup", out var f) ? f.GetString() : null;
            Assert.That(freeze, Is.EqualTo(File.Exists(Path.Combine(cgroup, "cgroup.freeze")) ? cgroup : null), "frozen through the unit's cgroup2 freezer when it has one");
        }

        var r = Tool("rehearse", "--service", "counter", "--store", store, "--json");
        TestContext.Out.WriteLine(r.ToString());
        Assert.That(r.ExitCode, Is.Zero, r.ToString());
        int restored;
        using (var json = JsonDocument.Parse(r.Output))
        {
            var t = json.RootElement.GetProperty("targets")[0];
            Assert.That(t.GetProperty("restorable").GetBoolean(), Is.True);
            restored = t.GetProperty("restoredPid").GetInt32();
        }

        // CRIU restores pids: the same main pid, back in the unit's cgroup, counting on.
        Assert.That(restored, Is.EqualTo(mainPid));
        AssertHandedBack(restored, cgroup);
        StopEndsTheRestoredTree(restored);
    }

    [TestCase("sealed", "active", TestName = "A rehearsal killed while its tree is held: resume hands the unit back its own configuration")]
    [TestCase("resuming", "failed", TestName = "A rehearsal killed after its tree ended: resume restores it and the unit gets the restored tree")]
    public void A_rehearsal_killed_midway_is_resumed_and_leaves_the_unit_active_with_its_tree(string point, string stateAfterCrash)
    {
        StartManager();
        var systemd = _systemd!;
        var mainPid = StartCounter();
        var cgroup = systemd.CgroupFolder("counter");
        var store = Directory.CreateDirectory(Path.Combine(_dir, "store")).FullName;

        // Killed while CRIU holds the tree at post-dump (sealed), CRIU resumes it in place; killed once CRIU ended it
        // (resuming), only the runtime drop-in keeps systemd from restarting the unit or running its stop actions.
        var crash = systemd.Run("env", [$"REBOOTLESS_CRASH_AT={point}", "REBOOTLESS_TEST_HOOKS=1", "dotnet", _tool, "rehearse", "--service", "counter",
            "--systemd-user", "--store", store, "--criu", _testbed.Criu]);
        TestContext.Out.WriteLine(crash.ToString());
        Assert.That(crash.ExitCode, Is.EqualTo(137), "killed at the crash point");
        Thread.Sleep(1000); // five times the unit's RestartSec
        Assert.That($"{systemd.Property("counter", "ActiveState")} {systemd.Property("counter", "NRestarts")}", Is.EqualTo($"{stateAfterCrash} 0"),
            "systemd started nothing");
        Assert.That(systemd.Property("counter", "DropInPaths"), Does.Contain("rebootless-1-release"), "the release outlives the killed tool");

        var resumed = systemd.Run("dotnet", [_tool, "resume", "--store", store, "--criu", _testbed.Criu]);
        TestContext.Out.WriteLine(resumed.ToString());
        Assert.That(resumed.ExitCode, Is.Zero, resumed.ToString());
        AssertHandedBack(mainPid, cgroup);
        StopEndsTheRestoredTree(mainPid);
    }

    [Test]
    public void A_unit_started_again_while_its_tree_was_down_is_not_restored_into()
    {
        StartManager();
        var systemd = _systemd!;
        var mainPid = StartCounter();
        var store = Directory.CreateDirectory(Path.Combine(_dir, "store")).FullName;
        var crash = systemd.Run("env", ["REBOOTLESS_CRASH_AT=resuming", "REBOOTLESS_TEST_HOOKS=1", "dotnet", _tool, "rehearse", "--service", "counter",
            "--systemd-user", "--store", store, "--criu", _testbed.Criu]);
        Assert.That(crash.ExitCode, Is.EqualTo(137), crash.ToString());

        // An operator (or a socket, a timer) starts the unit while its checkpointed tree is down.
        var start = systemd.Systemctl("start", "counter");
        Assert.That(start.ExitCode, Is.Zero, start.ToString());
        var fresh = int.Parse(systemd.Property("counter", "MainPID"), CultureInfo.InvariantCulture);

        var resumed = systemd.Run("dotnet", [_tool, "resume", "--store", store, "--criu", _testbed.Criu]);
        TestContext.Out.WriteLine(resumed.ToString());
        var procs = File.ReadAllLines(Path.Combine(systemd.CgroupFolder("counter"), "cgroup.procs")).Select(l => int.Parse(l, CultureInfo.InvariantCulture)).ToList();
        Assert.Multiple(() =>
        {
            Assert.That(resumed.ExitCode, Is.EqualTo(12), "the target is not restored: it needs an operator");
            Assert.That(resumed.Error, Does.Contain("systemd runs counter.service again").And.Contains("would make two copies").And.Contains("images are kept"));
            Assert.That(procs, Has.Count.EqualTo(2).And.Not.Contains(mainPid), "only the copy systemd started runs");
            Assert.That($"{systemd.Property("counter", "ActiveState")} {systemd.Property("counter", "MainPID")}", Is.EqualTo($"active {fresh}"));
            Assert.That(systemd.Property("counter", "DropInPaths"), Does.Not.Contain("zz-rebootless"));
        });
    }

    [Test]
    public void A_drop_in_read_after_rebootless_that_keeps_restart_on_refuses_the_service_before_anything_freezes()
    {
        // Named to sort after rebootless's own drop-ins: its Restart=always would win over the release.
        StartManager(false, ("zzzz-late.conf", "[Service]\nRestart=always\n"));
        var mainPid = StartCounter();
        var store = Directory.CreateDirectory(Path.Combine(_dir, "store")).FullName;

        var r = Tool("rehearse", "--service", "counter", "--store", store);
        TestContext.Out.WriteLine(r.ToString());

        Assert.Multiple(() =>
        {
            Assert.That(r.ExitCode, Is.EqualTo(15), r.ToString());
            Assert.That(r.Error, Does.Contain("rebootless's release drop-in did not take: counter.service still has Restart=always")
                .And.Contains("systemctl --user cat counter.service"));
            Assert.That($"{_systemd!.Property("counter", "ActiveState")} {_systemd.Property("counter", "MainPID")} {_systemd.Property("counter", "NRestarts")}",
                Is.EqualTo($"active {mainPid} 0"), "the workload never froze or ended");
            Assert.That(_systemd.Property("counter", "DropInPaths"), Does.Not.Contain("zz-rebootless"), "the release was taken back");
        });
    }

    [Test]
    public void An_adoption_a_later_drop_in_would_undo_is_not_started_and_the_tree_runs_on()
    {
        // A start command read after rebootless's adoption drop-in would run at the adoption: systemd fails the start
        // and cleans up the cgroup, the restored tree with it. So the adoption is not started at all.
        var marker = Path.Combine(_dir, "no-more-starts");
        StartManager(false, ("zzzz-late.conf", $"[Service]\nExecStartPre=/bin/sh -c 'test ! -e {marker}'\n"));
        var mainPid = StartCounter();
        File.WriteAllText(marker, "");
        var store = Directory.CreateDirectory(Path.Combine(_dir, "store")).FullName;

        var r = Tool("rehearse", "--service", "counter", "--store", store);
        TestContext.Out.WriteLine(r.ToString());

        Assert.Multiple(() =>
        {
            Assert.That(r.ExitCode, Is.Zero, r.ToString());
            Assert.That(r.Output + r.Error, Does.Contain("could not be given it back (rebootless's adoption drop-in did not take: counter.service still has ExecStartPre="));
            Assert.That(Workload.IsRunning(mainPid), Is.True, "the restored tree runs on, unsupervised");
            Assert.That(_systemd!.Property("counter", "DropInPaths"), Does.Not.Contain("zz-rebootless"));
        });
        Syscall.kill(mainPid, Signum.SIGKILL);
    }

    [Test]
    public void Unknown_inactive_and_mainless_units_and_an_unreachable_systemd_get_one_line_and_their_exit_codes()
    {
        StartManager();
        var systemd = _systemd!;
        Assert.That(systemd.Run("systemd-run", ["--user", "--unit", "done", "-p", "RemainAfterExit=yes", "--", "true"]).ExitCode, Is.Zero);
        var store = Directory.CreateDirectory(Path.Combine(_dir, "store")).FullName;
        (string Unit, int Code, string Says)[] cases =
        [
            ("no-such-unit", 6, "systemd knows no unit no-such-unit.service"),
            ("idle", 14, "service idle.service is inactive (dead), not running"),
            ("done", 14, "has no main process"),
            ("x.slice", 2, "not a service"),
        ];
        foreach (var (unit, code, says) in cases)
        {
            var r = Tool("rehearse", "--service", unit, "--store", store);
            TestContext.Out.WriteLine($"{code} <- --service {unit}: {r.Error.Trim()}");
            Assert.That(r.ExitCode, Is.EqualTo(code), r.ToString());
            Assert.That(r.Error.Trim().Split('\n'), Has.Length.EqualTo(1).And.All.StartsWith("rebootless: ").And.All.Contains(says));
        }

        // No manager behind XDG_RUNTIME_DIR: systemctl --user cannot connect.
        var empty = Directory.CreateDirectory(Path.Combine(_dir, "empty-run")).FullName;
        var none = ProcessRunner.Run("env", [$"XDG_RUNTIME_DIR={empty}", "dotnet", _tool, "plan", "--service", "idle", "--systemd-user", "--store", store], TimeSpan.FromMinutes(1));
        TestContext.Out.WriteLine($"15 <- no manager: {none.Error.Trim()}");
        Assert.That(none.ExitCode, Is.EqualTo(15), none.ToString());
        Assert.That(none.Error.Trim().Split('\n'), Has.Length.EqualTo(1).And.All.Contains("systemd cannot be asked about idle.service"));
        Assert.That(Directory.GetFileSystemEntries(store), Is.Empty, "nothing was written to the store");
    }

    /// <summary>Starts counter.service; returns its main pid once it and its child count.</summary>
    private int StartCounter()
    {
        var start = _systemd!.Systemctl("start", "counter");
        Assert.That(start.ExitCode, Is.Zero, start.ToString());
        Workload.WaitFor(() => File.Exists(Path.Combine(_app, "counter")) && File.Exists(Path.Combine(_app, "child")) ? 1 : 0, "the service to count");
        return int.Parse(_systemd.Property("counter", "MainPID"), CultureInfo.InvariantCulture);
    }

    /// <summary>The unit runs the restored tree as its own: active, its main pid, both processes counting in its cgroup, its own configuration, nothing else started or run.</summary>
    private void AssertHandedBack(int restored, string cgroup)
    {
        var systemd = _systemd!;
        foreach (var file in new[] { "counter", "child" })
        {
            var before = ReadCounter(_app, file);
            Workload.WaitFor(() => ReadCounter(_app, file) > before + 2 ? 1 : 0, $"the restored {file} to count on");
        }

        Thread.Sleep(1000); // time for a wrongly triggered restart (RestartSec=200ms) to show
        var state = string.Join(' ', new[] { "ActiveState", "SubState", "MainPID", "NRestarts", "Restart" }.Select(p => systemd.Property("counter", p)));
        TestContext.Out.WriteLine("systemd after the restore: " + state);
        var procs = File.ReadAllLines(Path.Combine(cgroup, "cgroup.procs")).Select(l => int.Parse(l, CultureInfo.InvariantCulture)).ToList();
        Assert.Multiple(() =>
        {
            Assert.That(state, Is.EqualTo($"active running {restored} 0 always"), "active, the restored root as main pid, never restarted, its own Restart= again");
            Assert.That(procs, Does.Contain(restored).And.Count.EqualTo(2), "the two restored processes and no second copy in the unit's cgroup");
            Assert.That(systemd.Property("counter", "DropInPaths"), Does.Not.Contain("zz-rebootless"), "rebootless's drop-ins are gone");
            Assert.That(File.Exists(_marks) ? File.ReadAllText(_marks) : "", Is.Empty, "no stop action ran for the tree's end at the dump");
        });
    }

    /// <summary>systemctl stop reaches the restored processes and runs the unit's stop actions, as for any service.</summary>
    private void StopEndsTheRestoredTree(int restored)
    {
        var procs = File.ReadAllLines(Path.Combine(_systemd!.CgroupFolder("counter"), "cgroup.procs")).Select(l => int.Parse(l, CultureInfo.InvariantCulture)).ToList();
        var stop = _systemd.Systemctl("stop", "counter");
        Assert.That(stop.ExitCode, Is.Zero, stop.ToString());
        Workload.WaitFor(() => procs.All(p => !Workload.IsRunning(p)) ? 1 : 0, "systemctl stop to end the restored processes");
        Assert.That(File.ReadAllText(_marks), Is.EqualTo("stop\nstop-post\n"));
        Assert.That(restored, Is.AnyOf(procs.ToArray()));
    }

    private static int ReadCounter(string dir, string name)
    {
        try
        {
            return int.Parse(File.ReadAllText(Path.Combine(dir, name)), CultureInfo.InvariantCulture);
        }
        catch (Exception e) when (e is IOException or FormatException)
        {
            return 0;
        }
    }
}
