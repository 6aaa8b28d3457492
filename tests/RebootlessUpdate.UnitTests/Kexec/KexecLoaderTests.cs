using RebootlessUpdate.Kexec;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.UnitTests.Kexec;

/// <summary>The loader's own logic against a recording fake; the real system calls are proven in the VM tier.</summary>
public class KexecLoaderTests
{
    private FakeKexecSystem _fake = null!;
    private string _kernel = null!;

    [SetUp]
    public void SetUp()
    {
        _fake = new FakeKexecSystem().WithKexec();
        _kernel = Path.Combine(_fake.Root, "boot", "vmlinuz-dummy");
        File.WriteAllText(_kernel, "not judged by us when VerifyImage is off");
    }

    [TearDown]
    public void TearDown() => _fake.Dispose();

    private KexecLoader Loader(KexecLoaderOptions? options = null) => new(options ?? new KexecLoaderOptions(), _fake);

    private KexecLoadRequest Unverified(string cmdline = "console=ttyS0") =>
        new() { KernelPath = _kernel, NoInitrd = true, CommandLine = cmdline, VerifyImage = false };

    [Test]
    public async Task System_call_load_passes_the_files_the_command_line_and_no_initramfs_flag()
    {
        var result = await Loader().LoadAsync(Unverified("a=1 b"));

        Assert.That(_fake.KexecFileLoadCalls, Has.Count.EqualTo(1));
        var call = _fake.KexecFileLoadCalls[0];
        Assert.That(call.Kernel, Is.EqualTo(_kernel));
        Assert.That(call.Initrd, Is.Null);
        Assert.That(call.CommandLine, Is.EqualTo("a=1 b"));
        Assert.That(call.Flags, Is.EqualTo(KexecInterop.KexecFileNoInitramfs));
        Assert.That(result.Method, Is.EqualTo(KexecLoadMethod.SystemCall));
        Assert.That(Loader().IsLoaded, Is.True);
        Assert.That(_fake.RebootCalls, Is.Zero);
    }

    [Test]
    public async Task Verified_load_of_a_real_kernel_finds_its_initrd()
    {
        var testbed = Testbed.Require();
        var kernel = Path.Combine(testbed.RootFs, "boot", "vmlinuz-" + testbed.NewKernel);

        var result = await Loader().LoadAsync(new KexecLoadRequest { KernelPath = kernel, CommandLine = "console=ttyS0" });

        Assert.That(result.Image!.Release, Is.EqualTo(testbed.NewKernel));
        Assert.That(result.InitrdPath, Is.EqualTo(Path.Combine(testbed.RootFs, "boot", $"rebootless-initrd-{testbed.NewKernel}.img")));
        Assert.That(_fake.KexecFileLoadCalls.Single().Initrd, Is.EqualTo(result.InitrdPath));
        Assert.That(_fake.KexecFileLoadCalls.Single().Flags, Is.Zero);
    }

    [Test]
    public void Verified_load_refuses_a_non_kernel_before_any_system_call()
    {
        var ex = Assert.ThrowsAsync<KexecException>(() => Loader().LoadAsync(new KexecLoadRequest { KernelPath = "/bin/true", CommandLine = "x" }));

        Assert.That(ex!.Reason, Is.EqualTo(KexecFailureReason.NotAKernel));
        Assert.That(_fake.KexecFileLoadCalls, Is.Empty);
    }

    [Test]
    public void Verified_load_refuses_a_command_line_longer_than_the_kernels_header_allows()
    {
        var testbed = Testbed.Require();
        var kernel = Path.Combine(testbed.RootFs, "boot", "vmlinuz-" + testbed.OldKernel);

        var ex = Assert.ThrowsAsync<KexecException>(() => Loader().LoadAsync(
            new KexecLoadRequest { KernelPath = kernel, NoInitrd = true, CommandLine = "x=" + new string('a', 2046) }));

        Assert.That(ex!.Reason, Is.EqualTo(KexecFailureReason.CommandLineTooLong));
        Assert.That(_fake.KexecFileLoadCalls, Is.Empty);
    }

    [Test]
    public void Load_on_a_kernel_without_kexec_is_refused_before_any_system_call()
    {
        File.Delete(Path.Combine(_fake.Root, "sys/kernel/kexec_loaded"));

        var ex = Assert.ThrowsAsync<KexecException>(() => Loader().LoadAsync(Unverified()));

        Assert.That(ex!.Reason, Is.EqualTo(KexecFailureReason.NotSupported));
        Assert.That(ex.Message, Does.Contain("/sys/kernel/kexec_loaded does not exist"));
        Assert.That(_fake.KexecFileLoadCalls, Is.Empty);
    }

    // Every errno the kernel's kexec_file_load can return, mapped to its typed reason.
    [TestCase(1, KexecFailureReason.NotPermitted, "CAP_SYS_BOOT")]
    [TestCase(129, KexecFailureReason.SignatureRejected, "EKEYREJECTED")]
    [TestCase(74, KexecFailureReason.SignatureRejected, "EBADMSG")]
    [TestCase(126, KexecFailureReason.SignatureRejected, "ENOKEY")]
    [TestCase(128, KexecFailureReason.SignatureRejected, "EKEYREVOKED")]
    [TestCase(127, KexecFailureReason.SignatureRejected, "EKEYEXPIRED")]
    [TestCase(65, KexecFailureReason.SignatureRejected, "ENOPKG")]
    [TestCase(8, KexecFailureReason.NotExecutable, "ENOEXEC")]
    [TestCase(16, KexecFailureReason.Busy, "EBUSY")]
    [TestCase(22, KexecFailureReason.InvalidArgument, "EINVAL")]
    [TestCase(38, KexecFailureReason.NotSupported, "ENOSYS")]
    [TestCase(12, KexecFailureReason.OutOfMemory, "ENOMEM")]
    [TestCase(9, KexecFailureReason.BadDescriptor, "EBADF")]
    [TestCase(14, KexecFailureReason.BadDescriptor, "EFAULT")]
    [TestCase(5, KexecFailureReason.Unknown, "errno 5")]
    public void Errno_from_kexec_file_load_becomes_a_typed_error(int errno, KexecFailureReason reason, string text)
    {
        _fake.KexecFileLoadErrno = errno;

        var ex = Assert.ThrowsAsync<KexecException>(() => Loader().LoadAsync(Unverified()));

        Assert.That(ex!.Reason, Is.EqualTo(reason));
        Assert.That(ex.Errno, Is.EqualTo(errno));
        Assert.That(ex.Message, Does.Contain("kexec_file_load of " + _kernel).And.Contain(text));
        Assert.That(ex.ErrnoDescription, Is.Not.Null);
        Assert.That(_fake.ToolRuns, Is.Empty, "no fallback for an explicit SystemCall");
    }

    [Test]
    public void Eperm_under_lockdown_names_the_lockdown()
    {
        _fake.Write("sys/kernel/security/lockdown", "none [integrity] confidentiality\n");
        _fake.KexecFileLoadErrno = 1;

        var ex = Assert.ThrowsAsync<KexecException>(() => Loader().LoadAsync(Unverified()));

        Assert.That(ex!.Reason, Is.EqualTo(KexecFailureReason.NotPermitted));
        Assert.That(ex.Message, Does.Contain("lockdown (integrity)"));
    }

    [Test]
    public void Eperm_with_loading_disabled_names_kexec_load_disabled()
    {
        _fake.Write("proc/sys/kernel/kexec_load_disabled", "1\n");
        _fake.KexecFileLoadErrno = 1;

        var ex = Assert.ThrowsAsync<KexecException>(() => Loader().LoadAsync(Unverified()));

        Assert.That(ex!.Message, Does.Contain("kexec_load_disabled is 1"));
    }

    [Test]
    public async Task Automatic_falls_back_to_classic_kexec_tools_on_enosys_only()
    {
        _fake.KexecFileLoadErrno = 38;

        var result = await Loader(new KexecLoaderOptions { KexecToolsPath = "/sbin/kexec" }).LoadAsync(Unverified("a b") with { Method = KexecLoadMethod.Automatic });

        Assert.That(result.Method, Is.EqualTo(KexecLoadMethod.KexecToolsClassic));
        Assert.That(_fake.ToolRuns.Single().File, Is.EqualTo("/sbin/kexec"));
        Assert.That(_fake.ToolRuns.Single().Args, Is.EqualTo((string[])["-c", "-l", _kernel, "--command-line=a b"]));

        _fake.KexecFileLoadErrno = 1;
        Assert.ThrowsAsync<KexecException>(() => Loader().LoadAsync(Unverified() with { Method = KexecLoadMethod.Automatic }));
        Assert.That(_fake.ToolRuns, Has.Count.EqualTo(1), "EPERM is not a reason to try another method");
    }

    [Test]
    public async Task Kexec_tools_file_load_passes_initrd_and_command_line()
    {
        var initrd = Path.Combine(_fake.Root, "boot", "initrd.img-x");
        File.WriteAllText(initrd, "x");

        await Loader().LoadAsync(Unverified("a=\"b c\"") with { NoInitrd = false, InitrdPath = initrd, Method = KexecLoadMethod.KexecTools });

        Assert.That(_fake.ToolRuns.Single().Args, Is.EqualTo((string[])["-s", "-l", _kernel, "--command-line=a=\"b c\"", "--initrd=" + initrd]));
        Assert.That(_fake.KexecFileLoadCalls, Is.Empty);
    }

    [Test]
    public void Kexec_tools_failure_carries_its_output()
    {
        _fake.ToolResult = new ToolResult(255, "kexec_file_load failed: Operation not permitted");

        var ex = Assert.ThrowsAsync<KexecException>(() => Loader().LoadAsync(Unverified() with { Method = KexecLoadMethod.KexecTools }));

        Assert.That(ex!.Reason, Is.EqualTo(KexecFailureReason.ToolFailed));
        Assert.That(ex.Message, Does.Contain("exited with 255").And.Contain("Operation not permitted"));
    }

    [Test]
    public void Missing_kexec_tools_says_how_to_fix_it()
    {
        _fake.ToolResult = new ToolResult(127, "cannot run kexec: No such file or directory");

        var ex = Assert.ThrowsAsync<KexecException>(() => Loader().LoadAsync(Unverified() with { Method = KexecLoadMethod.KexecToolsClassic }));

        Assert.That(ex!.Message, Does.Contain("is kexec-tools installed?"));
    }

    [Test]
    public async Task Unload_uses_the_unload_flag_or_kexec_u()
    {
        _fake.Loaded = true;
        await Loader().UnloadAsync();

        Assert.That(_fake.KexecFileLoadCalls.Single(), Is.EqualTo(((string?)null, (string?)null, "", KexecInterop.KexecFileUnload)));
        Assert.That(Loader().IsLoaded, Is.False);

        await Loader().UnloadAsync(KexecLoadMethod.KexecTools);
        Assert.That(_fake.ToolRuns.Single().Args, Is.EqualTo((string[])["-u"]));
    }

    [Test]
    public void Unload_errno_is_typed()
    {
        _fake.KexecFileLoadErrno = 16;

        var ex = Assert.ThrowsAsync<KexecException>(() => Loader().UnloadAsync());

        Assert.That(ex!.Reason, Is.EqualTo(KexecFailureReason.Busy));
        Assert.That(ex.Message, Does.Contain("KEXEC_FILE_UNLOAD"));
    }

    [Test]
    public void Missing_initrd_is_reported_before_any_system_call()
    {
        var ex = Assert.ThrowsAsync<KexecException>(() => Loader().LoadAsync(
            Unverified() with { NoInitrd = false, InitrdPath = Path.Combine(_fake.Root, "missing.img") }));

        Assert.That(ex!.Reason, Is.EqualTo(KexecFailureReason.FileNotFound));
        Assert.That(_fake.KexecFileLoadCalls, Is.Empty);
    }
}
