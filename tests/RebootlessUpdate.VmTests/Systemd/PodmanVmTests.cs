using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.VmTests.Systemd;

/// <summary>
/// Podman containers on a host whose PID 1 is systemd, updated across the real jump through <c>systemctl kexec</c>
/// with <c>rebootless update --podman</c>: podman checkpoints each into the set and, on the new kernel, the shipped
/// resume unit has podman restore it under its id. An attacker's unit starts one of them afresh through podman before
/// the resume: that one must never be restored a second time (its fresh copy runs alone, the report names it), and
/// the other is restored as podman's same container. The guest side is jobs/scenario-podman.sh, in the boot the systemd host scenarios share (<see cref="SystemdHostBoot"/>).
/// </summary>
[NonParallelizable]
public class PodmanVmTests
{
    [Test]
    public void A_container_started_afresh_before_the_resume_is_never_restored_again_and_the_other_is_podmans_same_container()
    {
        var testbed = Testbed.Require();
        var (job, result) = SystemdHostBoot.Scenario("podman");
        string Read(string name) => GuestTool.Read(job, name);
        var diagnostics = $"\npodman.log:\n{Read("podman.log")}\nupdate.log:\n{Read("update.log")}\nattack.log:\n{Read("attack.log")}\njournal.log:\n{Read("journal.log")}\n{result}";
        Assert.That(result.ExitCode, Is.Zero, "the guest job failed" + diagnostics);
        var Before = GuestTool.Lookup(job, "before.txt");
        var After = GuestTool.Lookup(job, "after.txt");
        var (tokenA, _) = GuestTool.Counter(Read("counter-a-before"));
        var (tokenB, countB) = GuestTool.Counter(Read("counter-b-before"));
        var (tokenAAfter, countAAfter) = GuestTool.Counter(After("ACounter"));
        var (tokenBAfter, countBAfter) = GuestTool.Counter(After("BCounter"));
        var (_, countBLater) = GuestTool.Counter(After("BCounterLater"));
        TestContext.Out.WriteLine($"before:\n{Read("before.txt")}\nafter:\n{Read("after.txt")}\nupdate:\n{Read("update.log")}\njournal:\n{Read("journal.log")}");
        Assert.Multiple(() =>
        {
            Assert.That(Read("kernel1"), Is.EqualTo(testbed.OldKernel));
            Assert.That(Before("AStatus"), Is.EqualTo("running"), diagnostics);
            Assert.That(Before("BStatus"), Is.EqualTo("running"), diagnostics);
            Assert.That(After("Kernel"), Is.EqualTo(testbed.NewKernel), "the jump happened" + diagnostics);

            // a: started afresh by the attacker before the resume; the resume refused to restore it, and named it.
            Assert.That(After("AStatus"), Is.EqualTo("running"), "the attacker's fresh start of a runs" + diagnostics);
            Assert.That(tokenAAfter, Is.Not.EqualTo(tokenA), "a is the fresh start (a new token), not a restore");
            Assert.That(countAAfter, Is.GreaterThan(0));
            Assert.That(After("ACopies"), Is.EqualTo("1"), "one copy of a, never two");
            Assert.That(After("ARestored"), Is.EqualTo("false"));
            Assert.That(Read("journal.log"), Does.Contain("podman runs container a").And.Contain("a second copy is never restored"),
                "the resume names the refused container" + diagnostics);
            Assert.That(After("ResumeExecMainStatus"), Is.Not.EqualTo("0"), "the resume says not everything was restored");

            // b: podman's same container, restored: its id, its token, its count going on; podman stops it.
            Assert.That(After("BId"), Is.EqualTo(Before("BId")), "the same container id" + diagnostics);
            Assert.That(After("BStatus"), Is.EqualTo("running"));
            Assert.That(After("BRestored"), Is.EqualTo("true"), "restored by podman");
            Assert.That(tokenBAfter, Is.EqualTo(tokenB), "the process checkpointed (its in-memory token), not a fresh start");
            Assert.That(countBAfter, Is.GreaterThanOrEqualTo(countB), "its counter continued from where it was");
            Assert.That(countBLater, Is.GreaterThan(countBAfter), "and keeps counting");
            Assert.That(After("BCopies"), Is.EqualTo("1"), "one copy of b");
            Assert.That(After("Ps"), Does.Contain($"{Before("BId")} b Up"), "podman ps lists b up under its id");
            Assert.That(After("AfterStopBStatus"), Is.EqualTo("exited"), "podman stop ends the restored container" + diagnostics);
            Assert.That(After("AfterStopBCopies"), Is.EqualTo("0"));
        });
    }
}
