using System.Reflection;
using Microsoft.Win32.SafeHandles;
using RebootlessUpdate.Kexec;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Kexec;

/// <summary>
/// The kexec driver on this host, whose kernel has no kexec (testbed.md). The
/// driver reads the real /proc and /sys; its irreversible calls go through a
/// guard that fails the test if they are ever reached, so no host test can
/// load a kernel or jump.
/// </summary>
[NonParallelizable]
public class KexecHostTests
{
    /// <summary>The real system, except that kexec_file_load and reboot fail the test instead of running.</summary>
    private sealed class NeverJumpSystem : IKexecSystem
    {
        public List<string> Forbidden { get; } = [];

        public int Syncs { get; private set; }

        public string Root => LinuxKexecSystem.Instance.Root;

        public uint EffectiveUserId => LinuxKexecSystem.Instance.EffectiveUserId;

        public int KexecFileLoad(SafeFileHandle? kernel, SafeFileHandle? initrd, string commandLine, ulong flags)
        {
            Forbidden.Add("kexec_file_load");
            throw new AssertionException("kexec_file_load was reached on the host");
        }

        public Task<ToolResult> RunAsync(string file, IReadOnlyList<string> args, TimeSpan timeout, CancellationToken cancellationToken)
        {
            Forbidden.Add($"{file} {string.Join(' ', args)}");
            throw new AssertionException($"{file} was run on the host");
        }

        public void Sync() => Syncs++;

        public int RebootKexec()
        {
            Forbidden.Add("reboot");
            throw new AssertionException("reboot(LINUX_REBOOT_CMD_KEXEC) was reached on the host");
        }
    }

    private sealed class SealedGuard : IJumpGuard
    {
        public bool IsCheckpointSealed(out string reason)
        {
            reason = "";
            return true;
        }
    }

    [OneTimeSetUp]
    public void HostHasNoKexec()
    {
        // The safety premise of this file, checked on reality rather than assumed.
        Assert.That(File.Exists("/sys/kernel/kexec_loaded"), Is.False,
            "this host exposes /sys/kernel/kexec_loaded: it has kexec, and these tests are written for the testbed host that has none");
    }

    [Test]
    public void Probe_reports_no_kexec_in_this_kernel_with_the_reason()
    {
        var caps = KexecCapabilities.Probe();
        TestContext.Out.WriteLine(caps);

        Assert.That(caps.KernelRelease, Is.EqualTo(File.ReadAllText("/proc/sys/kernel/osrelease").Trim()));
        Assert.That(caps.IsPossible, Is.False);
        Assert.That(caps.HasKexecSysfs, Is.False);
        Assert.That(caps.IsLoaded, Is.Null);
        Assert.That(caps.Reasons, Has.Some.Contains("/sys/kernel/kexec_loaded does not exist"));
        Assert.That(caps.ToString(), Does.Contain("NOT possible"));
        if (File.Exists("/proc/config.gz"))
        {
            // This host exposes its configuration, with CONFIG_KEXEC and CONFIG_KEXEC_FILE off.
            Assert.That(caps.ConfigSource, Is.EqualTo("/proc/config.gz"));
            Assert.That(caps.HasKexecLoad, Is.False);
            Assert.That(caps.HasKexecFileLoad, Is.False);
            Assert.That(caps.Reasons, Has.Some.Contains("no kexec in this kernel: CONFIG_KEXEC and CONFIG_KEXEC_FILE are not set in /proc/config.gz"));
        }
        else
        {
            Assert.That(caps.Reasons, Has.Some.Contains("configuration is unknown"));
        }

        // securityfs is not mounted here (/sys/kernel/security is empty), so the lockdown state is unknown.
        Assert.That(caps.Lockdown, Is.EqualTo(File.Exists("/sys/kernel/security/lockdown") ? caps.Lockdown : KernelLockdown.Unknown));
    }

    [Test]
    public void Loading_on_this_host_is_refused_before_any_system_call()
    {
        var testbed = Testbed.Require();
        var system = new NeverJumpSystem();
        var loader = new KexecLoader(new KexecLoaderOptions(), system);

        var ex = Assert.ThrowsAsync<KexecException>(() => loader.LoadAsync(new KexecLoadRequest
        {
            KernelPath = Path.Combine(testbed.RootFs, "boot", "vmlinuz-" + testbed.NewKernel),
            CommandLine = "console=ttyS0",
        }));

        Assert.That(ex!.Reason, Is.EqualTo(KexecFailureReason.NotSupported));
        Assert.That(ex.Message, Does.Contain("kexec is not possible on this machine"));
        Assert.That(loader.IsLoaded, Is.False);
        Assert.That(system.Forbidden, Is.Empty);
        Assert.DoesNotThrowAsync(() => loader.UnloadAsync(), "unloading with no kexec is a no-op");
        Assert.That(system.Forbidden, Is.Empty);
    }

    [Test]
    public void Arming_in_ci_without_the_allowance_is_refused_and_nothing_is_called()
    {
        Testbed.RequireRoot();
        var system = new NeverJumpSystem();
        var jump = new KexecJump(new KexecJumpOptions(), system, k => k == "CI" ? "true" : null, () => false);

        var ex = Assert.Throws<KexecException>(() => jump.Arm(new SealedGuard()));

        Assert.That(ex!.Reason, Is.EqualTo(KexecFailureReason.JumpRefused));
        Assert.That(ex.Message, Does.Contain("in CI (CI is set) without the explicit allowance REBOOTLESS_ALLOW_KEXEC_JUMP=1"));
        Assert.That(ex.Message, Does.Contain("no kernel is loaded"), "the real /sys says so");
        Assert.That(ex.Message, Does.Not.Contain("not running as root"));
        Assert.That(system.Forbidden, Is.Empty);
        Assert.That(system.Syncs, Is.Zero);
    }

    [Test]
    public void Even_with_the_allowance_arming_fails_on_this_host_because_no_kernel_can_be_loaded()
    {
        var system = new NeverJumpSystem();
        var jump = new KexecJump(new KexecJumpOptions(), system,
            k => k switch { "CI" => "true", KexecJumpOptions.AllowanceVariable => "1", _ => null }, () => true);

        var ex = Assert.Throws<KexecException>(() => jump.Arm(new SealedGuard()));

        Assert.That(ex!.Message, Does.Contain("no kernel is loaded"));
        Assert.That(ex.Message, Does.Not.Contain("allowance"));
        Assert.That(system.Forbidden, Is.Empty);
    }

    [Test]
    public void The_public_jump_refuses_in_this_test_process()
    {
        // No injection at all: the real environment, the real test-runner detection, the real system.
        var ex = Assert.Throws<KexecException>(() => new KexecJump().Arm(new SealedGuard()));

        Assert.That(ex!.Reason, Is.EqualTo(KexecFailureReason.JumpRefused));
        Assert.That(ex.Message, Does.Contain("no kernel is loaded"));
        if (Environment.GetEnvironmentVariable(KexecJumpOptions.AllowanceVariable) != "1")
        {
            Assert.That(ex.Message, Does.Contain("allowance"));
        }
    }

    [Test]
    public void There_is_no_way_to_jump_without_arming()
    {
        // The only jump is ArmedKexecJump.JumpAsync, and only Arm creates one.
        Assert.That(typeof(ArmedKexecJump).GetConstructors(BindingFlags.Public | BindingFlags.Instance), Is.Empty);
        Assert.That(typeof(KexecJump).GetMethods(BindingFlags.Public | BindingFlags.Instance | BindingFlags.Static)
            .Where(m => m.Name.Contains("Jump", StringComparison.Ordinal)), Is.Empty);
        Assert.That(typeof(ArmedKexecJump).IsSealed, Is.True);
    }
}
