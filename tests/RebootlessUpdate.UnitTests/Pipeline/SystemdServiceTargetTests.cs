using RebootlessUpdate.Targets;

namespace RebootlessUpdate.UnitTests.Pipeline;

/// <summary>
/// The service target's reading of systemd, over a fake systemctl (a script that prints what it
/// is told and records its arguments). The real thing is in the integration tests, against a
/// private systemd manager.
/// </summary>
public class SystemdServiceTargetTests
{
    private string _dir = null!;

    [SetUp]
    public void SetUp() => _dir = Directory.CreateTempSubdirectory("rebootless-systemctl-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    [TestCase("nginx", "nginx.service")]
    [TestCase("nginx.service", "nginx.service")]
    [TestCase("getty@tty1", "getty@tty1.service")]
    [TestCase("my.app", "my.app.service")]
    [TestCase(" a-b_c:d\\x2d ", "a-b_c:d\\x2d.service")]
    public void Unit_names_get_the_service_type_when_they_have_none(string given, string expected) =>
        Assert.That(SystemdServiceTarget.NormalizeUnitName(given), Is.EqualTo(expected));

    [TestCase("user.slice", "not a service")]
    [TestCase("session-1.scope", "not a service")]
    [TestCase("sshd.socket", "not a service")]
    [TestCase("rm -rf", "not a systemd unit name")]
    [TestCase("a/b", "not a systemd unit name")]
    public void Other_unit_types_and_bad_names_are_refused(string given, string why) =>
        Assert.That(() => UpdateTarget.Service(given), Throws.ArgumentException.With.Message.Contains(why));

    [Test]
    public void Parse_knows_service_targets()
    {
        Assert.That(UpdateTarget.Parse("service:nginx").Id, Is.EqualTo("service:nginx.service"));
        Assert.That(() => UpdateTarget.Parse("service:x.slice"), Throws.InstanceOf<FormatException>());
    }

    [Test]
    public void Show_output_is_read_as_properties()
    {
        var p = SystemdServiceTarget.ParseProperties("Id=a.service\nLoadState=loaded\r\nMainPID=42\nControlGroup=/system.slice/a.service\nExecStart={ path=/bin/x ; argv[]=/bin/x a=b }\n\n");

        Assert.That(p["MainPID"], Is.EqualTo("42"));
        Assert.That(p["LoadState"], Is.EqualTo("loaded"));
        Assert.That(p["ControlGroup"], Is.EqualTo("/system.slice/a.service"));
        Assert.That(p["ExecStart"], Is.EqualTo("{ path=/bin/x ; argv[]=/bin/x a=b }"), "only the first = splits");
    }

    private static readonly string[] HybridMountInfo =
    [
        "24 30 0:22 / /sys type sysfs rw,nosuid shared:7 - sysfs sysfs rw",
        "31 24 0:27 / /sys/fs/cgroup rw shared:9 - tmpfs tmpfs rw,mode=755",
        "38 31 0:34 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer",
        "40 31 0:36 / /sys/fs/cgroup/systemd rw,relatime shared:12 - cgroup cgroup rw,xattr,name=systemd",
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw",
    ];

    [Test]
    public void The_cgroup_folder_is_found_under_cgroup2_first_then_name_systemd()
    {
        const string cg = "/system.slice/a.service";

        Assert.That(SystemdServiceTarget.CgroupFolder(HybridMountInfo, cg, _ => true), Is.EqualTo("/sys/fs/cgroup/unified/system.slice/a.service"));
        Assert.That(SystemdServiceTarget.CgroupFolder(HybridMountInfo, cg, p => !p.Contains("unified", StringComparison.Ordinal)), Is.EqualTo("/sys/fs/cgroup/systemd/system.slice/a.service"));
        Assert.That(SystemdServiceTarget.CgroupFolder(HybridMountInfo, cg, _ => false), Is.Null);
        Assert.That(SystemdServiceTarget.CgroupFolder(["29 1 0:26 / /sys/fs/cgroup rw shared:4 - cgroup2 cgroup2 rw,nsdelegate"], cg, _ => true), Is.EqualTo("/sys/fs/cgroup/system.slice/a.service"), "pure v2");
        Assert.That(SystemdServiceTarget.CgroupFolder(["29 1 0:26 /box /sys/fs/cgroup rw - cgroup2 cgroup2 rw"], "/box/app.slice/a.service", _ => true), Is.EqualTo("/sys/fs/cgroup/app.slice/a.service"), "a mount of a sub-tree");
        Assert.That(SystemdServiceTarget.CgroupFolder(["29 1 0:26 /box /sys/fs/cgroup rw - cgroup2 cgroup2 rw"], "/other/a.service", _ => true), Is.Null);
    }

    [Test]
    public void An_unknown_unit_is_not_found()
    {
        var e = Resolve(Fake(0, "Id=nope.service\nLoadState=not-found\nActiveState=inactive\nSubState=dead\nMainPID=0\nControlGroup=\n"), "nope");

        Assert.That(e.Problem, Is.EqualTo(TargetProblem.NotFound));
        Assert.That(e.Message, Does.Contain("systemd knows no unit nope.service"));
    }

    [TestCase("inactive", "dead")]
    [TestCase("failed", "failed")]
    [TestCase("activating", "start")]
    public void A_unit_that_does_not_run_is_inactive(string active, string sub)
    {
        var e = Resolve(Fake(0, $"Id=a.service\nLoadState=loaded\nActiveState={active}\nSubState={sub}\nMainPID=0\nControlGroup=\n"), "a");

        Assert.That(e.Problem, Is.EqualTo(TargetProblem.Inactive));
        Assert.That(e.Message, Does.Contain($"is {active} ({sub}), not running"));
    }

    [Test]
    public void An_active_unit_without_a_main_process_is_refused_as_inactive()
    {
        var e = Resolve(Fake(0, "Id=a.service\nLoadState=loaded\nActiveState=active\nSubState=exited\nMainPID=0\nControlGroup=/system.slice/a.service\n"), "a");

        Assert.That(e.Problem, Is.EqualTo(TargetProblem.Inactive));
        Assert.That(e.Message, Does.Contain("has no main process"));
    }

    [Test]
    public void A_control_group_outside_every_mounted_hierarchy_is_refused()
    {
        var e = Resolve(Fake(0, "Id=a.service\nLoadState=loaded\nActiveState=active\nSubState=running\nMainPID=42\nControlGroup=/no-such-slice-rebootless/a.service\n"), "a");

        Assert.That(e.Problem, Is.EqualTo(TargetProblem.NotFound));
        Assert.That(e.Message, Does.Contain("is not under any mounted cgroup2 or name=systemd hierarchy"));
    }

    [Test]
    public void Systemd_not_running_is_manager_unavailable_with_systemctls_reason()
    {
        var e = Resolve(Fake(1, "", "System has not been booted with systemd as init system (PID 1). Can't operate.\nFailed to connect to bus: Host is down"), "a");

        Assert.That(e.Problem, Is.EqualTo(TargetProblem.ManagerUnavailable));
        Assert.That(e.Message, Does.Contain("System has not been booted with systemd").And.Not.Contain("Host is down").And.Contain("running as init"));
    }

    [Test]
    public void No_systemctl_is_manager_unavailable()
    {
        var e = Resolve(Path.Combine(_dir, "no-such-systemctl"), "a");

        Assert.That(e.Problem, Is.EqualTo(TargetProblem.ManagerUnavailable));
        Assert.That(e.Message, Does.Contain("cannot be run").And.Contain("systemd is not installed"));
    }

    [Test]
    public void The_user_manager_is_asked_with_user_and_the_unit_after_a_double_dash()
    {
        var systemctl = Fake(0, "LoadState=not-found\n");
        _ = Resolve(systemctl, "a", user: true);

        var args = File.ReadAllLines(Path.Combine(_dir, "args"));
        Assert.That(args[0], Is.EqualTo("--user"));
        Assert.That(args[1], Is.EqualTo("show"));
        Assert.That(args[^2..], Is.EqualTo(new[] { "--", "a.service" }));
        Assert.That(UpdateTarget.Service("a", systemd: new SystemdServiceOptions { UserManager = true }).Id, Is.EqualTo("user-service:a.service"));
    }

    private static TargetNotFoundException Resolve(string systemctl, string unit, bool user = false)
    {
        var target = (SystemdServiceTarget)UpdateTarget.Service(unit, systemd: new SystemdServiceOptions { Systemctl = systemctl, UserManager = user });
        return Assert.Throws<TargetNotFoundException>(() => target.Resolve())!;
    }

    /// <summary>A systemctl that records its arguments (one a line), prints <paramref name="stdout"/> and <paramref name="stderr"/>, and exits with <paramref name="exit"/>.</summary>
    private string Fake(int exit, string stdout, string stderr = "")
    {
        File.WriteAllText(Path.Combine(_dir, "stdout"), stdout);
        File.WriteAllText(Path.Combine(_dir, "stderr"), stderr);
        var path = Path.Combine(_dir, "systemctl");
        File.WriteAllText(path, $"#!/bin/sh\nprintf '%s\\n' \"$@\" > '{_dir}/args'\ncat '{_dir}/stdout'\ncat '{_dir}/stderr' >&2\nexit {exit}\n");
        File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        return path;
    }
}
