using RebootlessUpdate.Kexec;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.UnitTests.Kexec;

public class KernelImageTests
{
    private string _dir = null!;

    [SetUp]
    public void SetUp() => _dir = Directory.CreateTempSubdirectory("rebootless-kimage-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    private static IEnumerable<TestCaseData> TestbedKernels()
    {
        yield return new TestCaseData("old").SetName("Probe_reads_the_real_Debian_old_kernel");
        yield return new TestCaseData("new").SetName("Probe_reads_the_real_Debian_new_kernel");
    }

    [TestCaseSource(nameof(TestbedKernels))]
    public void Probe_reads_the_version_of_a_real_Debian_kernel(string which)
    {
        var testbed = Testbed.Require();
        var release = which == "old" ? testbed.OldKernel : testbed.NewKernel;
        var path = Path.Combine(testbed.RootFs, "boot", "vmlinuz-" + release);

        var image = KernelImage.Probe(path);

        Assert.That(image.Version, Does.StartWith(release + " "));
        Assert.That(image.Release, Is.EqualTo(release));
        Assert.That(image.BootProtocol, Is.GreaterThanOrEqualTo(new Version(2, 12)));
        Assert.That(image.SupportsKexecFileLoad, Is.True);
        Assert.That(image.MaxCommandLineBytes, Is.EqualTo(2048), "x86-64 kernels declare cmdline_size 2047");
        Assert.That(image.FindInitrd(), Is.EqualTo(Path.Combine(testbed.RootFs, "boot", $"rebootless-initrd-{release}.img")));
    }

    [Test]
    public void FindInitrd_falls_back_to_debians_name_and_reports_when_there_is_none()
    {
        var testbed = Testbed.Require();
        var kernel = Path.Combine(_dir, "vmlinuz-" + testbed.OldKernel);
        File.Copy(Path.Combine(testbed.RootFs, "boot", "vmlinuz-" + testbed.OldKernel), kernel);
        var image = KernelImage.Probe(kernel);

        var ex = Assert.Throws<KexecException>(() => image.FindInitrd());
        Assert.That(ex!.Reason, Is.EqualTo(KexecFailureReason.FileNotFound));
        Assert.That(ex.Message, Does.Contain($"initrd.img-{testbed.OldKernel}"));

        File.WriteAllText(Path.Combine(_dir, $"initrd.img-{testbed.OldKernel}"), "x");
        Assert.That(image.FindInitrd(), Is.EqualTo(Path.Combine(_dir, $"initrd.img-{testbed.OldKernel}")));

        File.WriteAllText(Path.Combine(_dir, $"rebootless-initrd-{testbed.OldKernel}.img"), "x");
        Assert.That(KernelImage.FindInitrd(testbed.OldKernel, _dir), Is.EqualTo(Path.Combine(_dir, $"rebootless-initrd-{testbed.OldKernel}.img")));
        Assert.That(KernelImage.FindInitrd("0.0.0-none", _dir), Is.Null);
    }

    [Test]
    public void An_elf_program_is_refused_and_named_as_elf()
    {
        var ex = Assert.Throws<KexecException>(() => KernelImage.Probe("/bin/true"));

        Assert.That(ex!.Reason, Is.EqualTo(KexecFailureReason.NotAKernel));
        Assert.That(ex.Message, Does.Contain("/bin/true").And.Contain("ELF").And.Contain("HdrS"));
    }

    [Test]
    public void A_text_file_is_refused()
    {
        var path = Path.Combine(_dir, "vmlinuz-text");
        File.WriteAllText(path, string.Concat(Enumerable.Repeat("this is not a kernel\n", 100)));

        var ex = Assert.Throws<KexecException>(() => KernelImage.Probe(path));

        Assert.That(ex!.Reason, Is.EqualTo(KexecFailureReason.NotAKernel));
        Assert.That(ex.Message, Does.Contain("no \"HdrS\" setup header"));
    }

    [Test]
    public void An_empty_file_is_refused()
    {
        var path = Path.Combine(_dir, "empty");
        File.WriteAllBytes(path, []);

        var ex = Assert.Throws<KexecException>(() => KernelImage.Probe(path));

        Assert.That(ex!.Reason, Is.EqualTo(KexecFailureReason.NotAKernel));
        Assert.That(ex.Message, Does.Contain("empty"));
    }

    [TestCase(0x100, "too short")]
    [TestCase(0x1000, "outside")]
    [TestCase(20000, "truncated")]
    [TestCase(20480, "truncated")]
    public void A_truncated_real_kernel_is_refused(int length, string expected)
    {
        var testbed = Testbed.Require();
        var bytes = File.ReadAllBytes(Path.Combine(testbed.RootFs, "boot", "vmlinuz-" + testbed.NewKernel));
        var path = Path.Combine(_dir, "truncated");
        File.WriteAllBytes(path, bytes[..length]);

        var ex = Assert.Throws<KexecException>(() => KernelImage.Probe(path));

        Assert.That(ex!.Reason, Is.EqualTo(KexecFailureReason.NotAKernel));
        Assert.That(ex.Message, Does.Contain(expected));
    }

    [Test]
    public void A_kernel_whose_boot_signature_is_damaged_is_refused()
    {
        var testbed = Testbed.Require();
        var bytes = File.ReadAllBytes(Path.Combine(testbed.RootFs, "boot", "vmlinuz-" + testbed.OldKernel));
        bytes[0x1FE] = 0;
        var path = Path.Combine(_dir, "damaged");
        File.WriteAllBytes(path, bytes);

        var ex = Assert.Throws<KexecException>(() => KernelImage.Probe(path));

        Assert.That(ex!.Reason, Is.EqualTo(KexecFailureReason.NotAKernel));
        Assert.That(ex.Message, Does.Contain("0xAA55"));
    }

    [Test]
    public void A_missing_file_is_reported_as_not_found()
    {
        var ex = Assert.Throws<KexecException>(() => KernelImage.Probe(Path.Combine(_dir, "nope")));

        Assert.That(ex!.Reason, Is.EqualTo(KexecFailureReason.FileNotFound));
        Assert.That(ex.Message, Does.Contain("nope"));
    }
}
