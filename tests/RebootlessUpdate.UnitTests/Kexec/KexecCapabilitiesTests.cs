using RebootlessUpdate.Kexec;

namespace RebootlessUpdate.UnitTests.Kexec;

public class KexecCapabilitiesTests
{
    [Test]
    public void Kernel_with_kexec_file_load_and_no_lockdown_can_use_both_methods()
    {
        using var fake = new FakeKexecSystem().WithKexec();

        var caps = KexecCapabilities.Probe(fake.Root);

        Assert.That(caps.IsPossible, Is.True, caps.ToString());
        Assert.That(caps.CanUseKexecFileLoad, Is.True);
        Assert.That(caps.CanUseKexecLoad, Is.True);
        Assert.That(caps.ConfigSource, Is.EqualTo("/boot/config-6.12.0-test"));
        Assert.That(caps.VerifiesSignatures, Is.True);
        Assert.That(caps.ForcesSignatures, Is.False);
        Assert.That(caps.SignatureRequired, Is.False);
        Assert.That(caps.Lockdown, Is.EqualTo(KernelLockdown.None));
        Assert.That(caps.IsLoaded, Is.False);
        Assert.That(caps.Reasons, Is.Empty);
        Assert.That(caps.ToString(), Does.StartWith("kexec on kernel 6.12.0-test: possible (kexec_file_load, kexec_load)"));
    }

    [Test]
    public void Proc_config_gz_is_preferred_over_boot_config()
    {
        using var fake = new FakeKexecSystem().WithKexec(loaded: true);
        fake.WriteGzip("proc/config.gz", "# CONFIG_KEXEC is not set\nCONFIG_KEXEC_FILE=y\nCONFIG_KEXEC_SIG_FORCE=y\n");

        var caps = KexecCapabilities.Probe(fake.Root);

        Assert.That(caps.ConfigSource, Is.EqualTo("/proc/config.gz"));
        Assert.That(caps.HasKexecLoad, Is.False);
        Assert.That(caps.CanUseKexecLoad, Is.False);
        Assert.That(caps.CanUseKexecFileLoad, Is.True);
        Assert.That(caps.SignatureRequired, Is.True);
        Assert.That(caps.IsLoaded, Is.True);
        Assert.That(caps.Reasons, Has.Some.Contains("CONFIG_KEXEC_SIG_FORCE"));
        Assert.That(caps.Reasons, Has.None.Contains("only the classic kexec_load"));
    }

    [Test]
    public void Kernel_built_without_kexec_is_reported_impossible_with_the_reason()
    {
        using var fake = new FakeKexecSystem();
        fake.WriteGzip("proc/config.gz", "# CONFIG_KEXEC is not set\n# CONFIG_KEXEC_FILE is not set\nCONFIG_ARCH_SUPPORTS_KEXEC=y\n");

        var caps = KexecCapabilities.Probe(fake.Root);

        Assert.That(caps.IsPossible, Is.False);
        Assert.That(caps.HasKexecSysfs, Is.False);
        Assert.That(caps.IsLoaded, Is.Null);
        Assert.That(caps.Reasons, Has.Some.Contains("no kexec in this kernel: CONFIG_KEXEC and CONFIG_KEXEC_FILE are not set in /proc/config.gz"));
        Assert.That(caps.Reasons, Has.Some.Contains("/sys/kernel/kexec_loaded does not exist"));
        Assert.That(caps.ToString(), Does.Contain("NOT possible"));
    }

    [Test]
    public void Without_any_configuration_the_verdict_rests_on_sysfs_and_says_so()
    {
        using var fake = new FakeKexecSystem();
        fake.Write("sys/kernel/kexec_loaded", "0\n");

        var caps = KexecCapabilities.Probe(fake.Root);

        Assert.That(caps.ConfigSource, Is.Null);
        Assert.That(caps.HasKexecFileLoad, Is.Null);
        Assert.That(caps.IsPossible, Is.True);
        Assert.That(caps.Lockdown, Is.EqualTo(KernelLockdown.Unknown));
        Assert.That(caps.Reasons, Has.Some.Contains("configuration is unknown"));
    }

    [TestCase("none integrity [confidentiality]", KernelLockdown.Confidentiality)]
    [TestCase("none [integrity] confidentiality", KernelLockdown.Integrity)]
    public void Lockdown_forbids_kexec_load_and_requires_signatures(string text, KernelLockdown expected)
    {
        using var fake = new FakeKexecSystem().WithKexec();
        fake.Write("sys/kernel/security/lockdown", text + "\n");

        var caps = KexecCapabilities.Probe(fake.Root);

        Assert.That(caps.Lockdown, Is.EqualTo(expected));
        Assert.That(caps.CanUseKexecLoad, Is.False);
        Assert.That(caps.CanUseKexecFileLoad, Is.True);
        Assert.That(caps.SignatureRequired, Is.True);
        Assert.That(caps.Reasons, Has.Some.Contains("lockdown"));
    }

    [Test]
    public void Kexec_load_disabled_makes_it_impossible()
    {
        using var fake = new FakeKexecSystem().WithKexec();
        fake.Write("proc/sys/kernel/kexec_load_disabled", "1\n");

        var caps = KexecCapabilities.Probe(fake.Root);

        Assert.That(caps.IsPossible, Is.False);
        Assert.That(caps.Reasons, Has.Some.Contains("kexec_load_disabled is 1"));
    }

    [Test]
    public void Only_classic_kexec_when_kexec_file_is_not_configured()
    {
        using var fake = new FakeKexecSystem().WithKexec();
        fake.Write("boot/config-6.12.0-test", "CONFIG_KEXEC=y\n# CONFIG_KEXEC_FILE is not set\n");

        var caps = KexecCapabilities.Probe(fake.Root);

        Assert.That(caps.CanUseKexecFileLoad, Is.False);
        Assert.That(caps.CanUseKexecLoad, Is.True);
        Assert.That(caps.Reasons, Has.Some.Contains("only the classic kexec_load"));
    }
}
