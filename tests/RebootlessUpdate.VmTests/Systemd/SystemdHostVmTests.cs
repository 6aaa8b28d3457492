using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.VmTests.Systemd;

/// <summary>
/// A host whose PID 1 is systemd (the testbed booted with <c>rebootless.init=systemd</c>): two enabled services are
/// updated across the real jump through <c>systemctl kexec</c>. On the new kernel the boot's start jobs of both wait
/// for the shipped resume unit; it restores service a, whose queued start then takes the restored tree as its main
/// process, while service b cannot be restored (a unit removed a file it held open) and starts afresh the normal
/// way. The guest side is jobs/scenario-services.sh, in the boot the systemd host scenarios share
/// (<see cref="SystemdHostBoot"/>).
/// </summary>
[NonParallelizable]
public class SystemdHostVmTests
{
    [Test]
    public void Enabled_services_cross_systemctl_kexec_one_restored_as_its_unit_the_other_started_afresh()
    {
        var testbed = Testbed.Require();
        var (job, result) = SystemdHostBoot.Scenario("services");
        string Read(string name) => GuestTool.Read(job, name);
        var diagnostics = $"\nupdate.log:\n{Read("update.log")}\njournal.log:\n{Read("journal.log")}\n{result}";
        Assert.That(result.ExitCode, Is.Zero, "the guest job failed" + diagnostics);
        var beforeFields = GuestTool.Fields(Read("before.txt"));
        var afterFields = GuestTool.Fields(Read("after.txt"));
        string Before(string key) => beforeFields.GetValueOrDefault(key, $"({key} missing)");
        string After(string key) => afterFields.GetValueOrDefault(key, $"({key} missing)");
        var (tokenA, countA) = Counter(Read("counter-a-before"));
        var (tokenB, _) = Counter(Read("counter-b-before"));
        var (tokenAAfter, countAAfter) = Counter(After("ACounter"));
        var (_, countALater) = Counter(After("ACounterLater"));
        var (tokenBAfter, _) = Counter(After("BCounter"));
        TestContext.Out.WriteLine($"before:\n{Read("before.txt")}\nafter:\n{Read("after.txt")}\njournal:\n{Read("journal.log")}");
        Assert.Multiple(() =>
        {
            Assert.That(Read("kernel1"), Is.EqualTo(testbed.OldKernel));
            Assert.That(After("Kernel"), Is.EqualTo(testbed.NewKernel), "the jump happened" + diagnostics);
            Assert.That(After("Pid1"), Is.EqualTo("systemd"));
            Assert.That(Before("AActiveState"), Is.EqualTo("active"));
            Assert.That(Before("BActiveState"), Is.EqualTo("active"));

            // a: restored, and its unit again, through the start the boot queued.
            Assert.That(After("AActiveState"), Is.EqualTo("active"), "service a runs again as its unit" + diagnostics);
            Assert.That(After("AMainPID"), Is.Not.EqualTo("0"), "systemd supervises a's restored root" + diagnostics);
            Assert.That(After("ACgroup"), Does.EndWith("/system.slice/rebootless-counter-a.service"), "a's restored root is in its unit's own cgroup");
            Assert.That(After("ANRestarts"), Is.EqualTo("0"), "Restart=always started nothing");
            Assert.That(After("ACopies"), Is.EqualTo("1"), "one copy of a, never two");
            Assert.That(tokenAAfter, Is.EqualTo(tokenA), "a is the process checkpointed (its in-memory token), not a fresh start");
            Assert.That(countAAfter, Is.GreaterThanOrEqualTo(countA), "a's counter continued from where it was");
            Assert.That(countALater, Is.GreaterThan(countAAfter), "the restored a keeps running");
            Assert.That(After("AAfterStop"), Is.EqualTo("inactive 0"), "systemctl stop ended a's restored processes");

            // b: not restored, so started afresh by its queued start; never both.
            Assert.That(After("BActiveState"), Is.EqualTo("active"), "service b started the normal way" + diagnostics);
            Assert.That(After("BCopies"), Is.EqualTo("1"), "one copy of b, never two");
            Assert.That(tokenBAfter, Is.Not.EqualTo(tokenB).And.Not.StartsWith("("), "b is a fresh start (a new token)");
            Assert.That(Read("journal.log"), Does.Contain("service:rebootless-counter-b.service"), "the resume names b");

            // The resume reported b's failure; it removed the order it was given; nothing else failed.
            Assert.That(After("ResumeResult"), Is.EqualTo("exit-code"), "the resume unit fails: b (and podman's a, in the shared boot) were not restored");
            Assert.That(After("Failed").Trim(), Is.EqualTo("rebootless-resume.service"), "systemctl --failed lists the resume unit only");
            Assert.That(After("OrderLeft"), Is.Empty, "the resume removed the order after it");
        });
    }

    private static (string Token, long Count) Counter(string line) =>
        line.Split(' ', StringSplitOptions.RemoveEmptyEntries) is [var token, var n] && long.TryParse(n, out var count) ? (token, count) : ("(unreadable: " + line + ")", -1);
}
