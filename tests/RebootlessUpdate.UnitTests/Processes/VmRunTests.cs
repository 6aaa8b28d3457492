using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.UnitTests.Processes;

/// <summary>Which guest kernel crashes a VM test runs once more: only the emulator's, never a panic a test caused.</summary>
public class VmRunTests
{
    [TestCase("[   20.778212] Oops: double fault: 0000 [#1] PREEMPT SMP NOPTI", true)]
    [TestCase("[    3.101010] Oops: int3: 0000 [#2] PREEMPT SMP NOPTI", true)]
    [TestCase("[   12.000000] Kernel panic - not syncing: sysrq triggered crash", false)]
    [TestCase("[   12.000000] Oops: general protection fault, probably for non-canonical address", false)]
    public void A_crash_is_the_emulators_only_for_its_own_signatures(string console, bool emulation)
    {
        Assert.That(VmRun.IsEmulationCrash(new ProcessResult(126, "SeaBIOS\n" + console + "\n", "vm: the guest kernel crashed")), Is.EqualTo(emulation));
    }

    [Test]
    public void Without_the_runners_crash_exit_nothing_is_retried()
    {
        Assert.That(VmRun.IsEmulationCrash(new ProcessResult(1, "Oops: int3: 0000 [#1]", "")), Is.False);
    }
}
