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

    [SetUp]
    public void SetUp()
    {
        _testbed = Testbed.Require();
        Testbed.RequireRoot();
        _dir = Directory.CreateTempSubdirectory("rebootless-systemd-it-").FullName;
        _tool = BuiltTool.Path;

        _systemd = PrivateSystemd.Start(Path.Combine(_dir, "systemd"), new Dictionary<string, string>
        {
            ["idle.service"] = "[Service]\nExecStart=/bin/sleep 600\n",
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
    public void Rehearse_of_a_running_service_restores_its_tree_into_the_units_cgroup_where_it_counts_on_and_systemd_no_longer_supervises_it()
    {
        var systemd = _systemd!;
        var app = Directory.CreateDirectory(Path.Combine(_dir, "app")).FullName;
        var mainPid = systemd.StartService("counter", "python3", "-c", CounterProgram, app);
        var cgroup = systemd.CgroupFolder("counter");
        Workload.WaitFor(() => File.Exists(Path.Combine(app, "counter")) && File.Exists(Path.Combine(app, "child")) ? 1 : 0, "the service to count");
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
        var procs = File.ReadAllLines(Path.Combine(cgroup, "cgroup.procs")).Select(l => int.Parse(l, CultureInfo.InvariantCulture)).ToList();
        Assert.That(procs, Does.Contain(restored).And.Count.EqualTo(2), "both processes are back in the unit's cgroup");
        foreach (var file in new[] { "counter", "child" })
        {
            var before = ReadCounter(app, file);
            Workload.WaitFor(() => ReadCounter(app, file) > before + 2 ? 1 : 0, $"the restored {file} to count on");
        }

        // What systemd makes of it (documented on the target): it saw its main process killed at the dump.
        var state = $"{systemd.Property("counter", "ActiveState")} {systemd.Property("counter", "Result")} {systemd.Property("counter", "MainPID")}";
        TestContext.Out.WriteLine("systemd after the rehearsal: " + state);
        Assert.That(state, Is.EqualTo("failed signal 0"));
        _ = systemd.Systemctl("stop", "counter");
        Assert.That(Workload.IsRunning(restored), Is.True, "systemctl stop of the failed unit does not reach the restored processes");
        Syscall.kill(restored, Signum.SIGKILL);
    }

    [Test]
    public void Unknown_inactive_and_mainless_units_and_an_unreachable_systemd_get_one_line_and_their_exit_codes()
    {
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
