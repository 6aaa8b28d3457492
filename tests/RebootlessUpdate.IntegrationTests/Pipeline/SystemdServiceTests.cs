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

    [SetUp]
    public void SetUp()
    {
        _testbed = Testbed.Require();
        Testbed.RequireRoot();
        _dir = Directory.CreateTempSubdirectory("rebootless-systemd-it-").FullName;
        _tool = BuiltTool.Path;

        _app = Directory.CreateDirectory(Path.Combine(_dir, "app")).FullName;
        _marks = Path.Combine(_dir, "stop-actions");
        var program = Path.Combine(_dir, "counter.py");
        File.WriteAllText(program, CounterProgram);
        _systemd = PrivateSystemd.Start(Path.Combine(_dir, "systemd"), new Dictionary<string, string>
        {
            ["idle.service"] = "[Service]\nExecStart=/bin/sleep 600\n",
            // A service whose stop actions leave marks and that systemd restarts whenever its main process ends:
            // the tree's end at the dump must trigger neither, and no second copy may start next to the restored one.
            ["counter.service"] = $"[Service]\nExecStart=/usr/bin/python3 {program} {_app}\nRestart=always\nRestartSec=200ms\n"
                + $"ExecStop=/bin/sh -c 'echo stop >> {_marks}'\nExecStopPost=/bin/sh -c 'echo stop-post >> {_marks}'\n",
        });
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

    [Test]
    public void Rehearse_of_a_running_service_hands_the_restored_tree_back_to_its_unit_with_no_stop_action_and_no_second_copy()
    {
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
        Assert.That(systemd.Property("counter", "DropInPaths"), Does.Contain("rebootless-release"), "the release outlives the killed tool");

        var resumed = systemd.Run("dotnet", [_tool, "resume", "--store", store, "--criu", _testbed.Criu]);
        TestContext.Out.WriteLine(resumed.ToString());
        Assert.That(resumed.ExitCode, Is.Zero, resumed.ToString());
        AssertHandedBack(mainPid, cgroup);
        StopEndsTheRestoredTree(mainPid);
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
            Assert.That(systemd.Property("counter", "DropInPaths"), Is.Empty, "rebootless's drop-ins are gone");
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
