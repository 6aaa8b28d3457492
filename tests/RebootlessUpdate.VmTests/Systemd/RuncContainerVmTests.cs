using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.VmTests.Systemd;

/// <summary>
/// A runc container on a host whose PID 1 is systemd, cgroup v2 through runc's systemd cgroup driver, updated across
/// the real jump through <c>systemctl kexec</c> with <c>rebootless update --container</c>. On the new kernel the
/// shipped resume unit restores it, systemd holds it in its scope again, and runc knows it again: <c>runc state</c> shows
/// it running as the restored init, <c>runc exec</c> enters it, <c>systemctl stop</c> of the scope ends it and
/// <c>runc delete</c> forgets it (<c>runc kill</c> of a restored container: ContainerTests, on the host). The guest side is
/// jobs/scenario-runc.sh, in the boot the systemd host scenarios share (<see cref="SystemdHostBoot"/>).
/// </summary>
[NonParallelizable]
public class RuncContainerVmTests
{
    [Test]
    public void A_runc_container_crosses_systemctl_kexec_and_runc_knows_it_again_as_the_restored_init()
    {
        var testbed = Testbed.Require();
        var (job, result) = SystemdHostBoot.Scenario("runc");
        string Read(string name) => GuestTool.Read(job, name);
        var diagnostics = $"\nupdate.log:\n{Read("update.log")}\njournal.log:\n{Read("journal.log")}\n{result}";
        Assert.That(result.ExitCode, Is.Zero, "the guest job failed" + diagnostics);
        var Before = GuestTool.Lookup(job, "before.txt");
        var After = GuestTool.Lookup(job, "after.txt");
        var (token, count) = GuestTool.Counter(Read("counter-before"));
        var (tokenAfter, countAfter) = GuestTool.Counter(After("CtrCounter"));
        var (_, countLater) = GuestTool.Counter(After("CtrCounterLater"));
        TestContext.Out.WriteLine($"before:\n{Read("before.txt")}\nafter:\n{Read("after.txt")}\njournal:\n{Read("journal.log")}");
        Assert.Multiple(() =>
        {
            Assert.That(Read("kernel1"), Is.EqualTo(testbed.OldKernel));
            Assert.That(Read("check-probe.json"), Does.Contain("\"hardware breakpoints fire here, criu uses them: an execution breakpoint stopped a traced process"),
                "the probe finds that TCG fires breakpoints, so criu keeps using them" + $"\n{Read("check-probe.err")}");
            Assert.That(Read("check.json"), Does.Contain("\"criu runs without hardware breakpoints: CRIU_FAULT=130 is set in this environment"),
                "the testbed's own CRIU_FAULT=130 (testbed/vm-init) is what criu gets, unprobed" + $"\n{Read("check.err")}");
            Assert.That(After("Kernel"), Is.EqualTo(testbed.NewKernel), "the jump happened" + diagnostics);
            Assert.That(After("Pid1"), Is.EqualTo("systemd"));
            Assert.That(Before("CtrStatus"), Is.EqualTo("running"));
            Assert.That(Before("CtrCgroup"), Does.EndWith("/system.slice/runc-rebootless-ctr.scope"), "runc's systemd driver put it in its scope");
            // The resume unit ends failed: the shared boot's services and podman scenarios each make one target unrestorable.
            Assert.That(Read("journal.log"), Does.Contain("container:rebootless-ctr: Restored"), "the resume unit restored it" + diagnostics);

            // runc knows the restored container: running, as the restored init, in the cgroup it had.
            Assert.That(After("CtrStatus"), Is.EqualTo("running"), "runc state after the jump" + diagnostics);
            Assert.That(After("CtrPid"), Is.Not.EqualTo(Before("CtrPid")).And.Not.EqualTo("0"), "the restored init, a new host pid");
            Assert.That(After("CtrCgroup"), Is.EqualTo(Before("CtrCgroup")), "restored into the cgroup it had");
            Assert.That(After("CtrCopies"), Is.EqualTo("1"), "one copy, never two");
            Assert.That(tokenAfter, Is.EqualTo(token), "the process checkpointed (its in-memory token), not a fresh start");
            Assert.That(countAfter, Is.GreaterThanOrEqualTo(count), "its counter continued from where it was");
            Assert.That(countLater, Is.GreaterThan(countAfter), "the restored container keeps running");
            Assert.That(After("CtrExec"), Does.StartWith(token), "runc exec enters the restored container");
            Assert.That(After("Failed").Trim(), Is.EqualTo("rebootless-resume.service"), "systemctl --failed lists the resume unit only");

            // systemd holds it in its scope again, as runc's systemd driver had it.
            Assert.That(Before("ScopeActiveState"), Is.EqualTo("active"));
            Assert.That(After("ScopeLoadState"), Is.EqualTo("loaded"), "systemd knows runc-rebootless-ctr.scope again" + diagnostics);
            Assert.That(After("ScopeActiveState"), Is.EqualTo("active"));
            Assert.That(After("ScopeControlGroup"), Is.EqualTo(Before("ScopeControlGroup")), "the scope is the restored tree's cgroup");

            // The limits runc gave the scope, and its device filter, hold the restored container as before.
            Assert.That(Before("Limits"), Does.Contain("MemoryMax=268435456").And.Contain("TasksMax=64").And.Contain("CPUQuotaPerSecUSec=500ms").And.Contain("DevicePolicy=strict"));
            Assert.That(After("Limits"), Is.EqualTo(Before("Limits")), "systemd holds the restored scope to the same limits");
            Assert.That(After("DeviceAllow"), Is.EqualTo(Before("DeviceAllow")).And.Contain("/dev/char/1:3 rwm"), "the same device allow-list");
            Assert.That(After("CgroupFiles"), Is.EqualTo(Before("CgroupFiles")), "the cgroup enforces them");
            Assert.That(Before("Kmsg").Trim(), Is.EqualTo("refused"), "runc's device filter keeps /dev/kmsg closed");
            Assert.That(After("Kmsg").Trim(), Is.EqualTo("refused"), "and still does after the jump");
            Assert.That(Before("Null").Trim(), Is.EqualTo("opened"), "a device on the allow-list opens");
            Assert.That(After("Null").Trim(), Is.EqualTo("opened"), "and still does after the jump");

            // systemd holds the tree: stopping the scope ends every process of it; runc then sees it stopped and forgets it.
            Assert.That(After("StopScope"), Is.EqualTo("ok"));
            Assert.That(After("AfterStop"), Is.EqualTo("inactive 0"), "systemctl stop of the scope ended the restored container");
            Assert.That(After("AfterStopStatus"), Is.EqualTo("stopped"), "runc sees its init gone");
            Assert.That(After("Delete"), Is.EqualTo("ok"));
            Assert.That(After("AfterDelete"), Is.EqualTo("unknown"), "runc forgot it");
        });
    }
}
