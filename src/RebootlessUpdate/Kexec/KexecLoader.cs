using Microsoft.Win32.SafeHandles;

namespace RebootlessUpdate.Kexec;

/// <summary>How <see cref="KexecLoader"/> hands the kernel to the running kernel.</summary>
public enum KexecLoadMethod
{
    /// <summary>The <c>kexec_file_load</c> system call from .NET: the kernel reads the files and can check signatures. The default.</summary>
    SystemCall = 0,

    /// <summary>kexec-tools with <c>-s</c> (it also uses <c>kexec_file_load</c>).</summary>
    KexecTools,

    /// <summary>kexec-tools with <c>-c</c>: the classic <c>kexec_load</c> (refused under lockdown).</summary>
    KexecToolsClassic,

    /// <summary><see cref="SystemCall"/>, falling back to <see cref="KexecToolsClassic"/> when the kernel has no <c>kexec_file_load</c> (ENOSYS).</summary>
    Automatic,
}

/// <summary>What to load. Immutable; checked by <see cref="KexecLoader.LoadAsync"/>.</summary>
public sealed record KexecLoadRequest
{
    /// <summary>The bzImage to load (e.g. <c>/boot/vmlinuz-RELEASE</c>). Required.</summary>
    public required string KernelPath { get; init; }

    /// <summary>
    /// The initrd; null (the default) finds the kernel's own next to it
    /// (<see cref="KernelImage.FindInitrd(string?)"/>) unless <see cref="NoInitrd"/> is set.
    /// </summary>
    public string? InitrdPath { get; init; }

    /// <summary>Load without an initrd. Default: false.</summary>
    public bool NoInitrd { get; init; }

    /// <summary>The next kernel's command line, exactly (see <see cref="KexecCommandLine.ComposeNext"/>). Required.</summary>
    public required string CommandLine { get; init; }

    /// <summary>The load method. Default: <see cref="KexecLoadMethod.SystemCall"/>.</summary>
    public KexecLoadMethod Method { get; init; } = KexecLoadMethod.SystemCall;

    /// <summary>
    /// Probe the image (<see cref="KernelImage.Probe"/>) and check the command
    /// line against its limit before the kernel sees them. Default: true.
    /// Turning it off lets the running kernel judge the image itself.
    /// </summary>
    public bool VerifyImage { get; init; } = true;
}

/// <summary>What <see cref="KexecLoader.LoadAsync"/> loaded.</summary>
/// <param name="KernelPath">The kernel image.</param>
/// <param name="Image">The probed image (null when <see cref="KexecLoadRequest.VerifyImage"/> was off).</param>
/// <param name="InitrdPath">The initrd, or null.</param>
/// <param name="CommandLine">The command line the next kernel gets.</param>
/// <param name="Method">The method that loaded it (after any fallback).</param>
public sealed record KexecLoadResult(string KernelPath, KernelImage? Image, string? InitrdPath, string CommandLine, KexecLoadMethod Method);

/// <summary>Settings of <see cref="KexecLoader"/>. Immutable.</summary>
public sealed record KexecLoaderOptions
{
    /// <summary>The kexec-tools program. Default: <c>kexec</c> (found through PATH).</summary>
    public string KexecToolsPath { get; init; } = "kexec";

    /// <summary>The longest a kexec-tools run may take. Default: 2 minutes (loading is slow under emulation).</summary>
    public TimeSpan ToolTimeout { get; init; } = TimeSpan.FromMinutes(2);
}

/// <summary>
/// Loads a kernel for kexec, unloads it, and tells whether one is loaded.
/// Loading is reversible (<see cref="UnloadAsync"/>); the jump is not and lives
/// in <see cref="KexecJump"/>.
/// </summary>
public sealed class KexecLoader
{
    private readonly IKexecSystem _system;

    /// <summary>Creates a loader for this machine.</summary>
    public KexecLoader(KexecLoaderOptions? options = null)
        : this(options ?? new KexecLoaderOptions(), LinuxKexecSystem.Instance)
    {
    }

    internal KexecLoader(KexecLoaderOptions options, IKexecSystem system)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentException.ThrowIfNullOrEmpty(options.KexecToolsPath);
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(options.ToolTimeout, TimeSpan.Zero);
        Options = options;
        _system = system;
    }

    /// <summary>The settings.</summary>
    public KexecLoaderOptions Options { get; }

    /// <summary>True when a kernel is loaded (<c>/sys/kernel/kexec_loaded</c> reads 1).</summary>
    public bool IsLoaded => KexecCapabilities.ReadTrimmed(Path.Combine(_system.Root, "sys/kernel/kexec_loaded")) == "1";

    /// <summary>
    /// Loads the kernel: checks that this machine can kexec, probes the image,
    /// finds the initrd, checks the command line's length, then loads. A kernel
    /// loaded before is replaced.
    /// </summary>
    /// <exception cref="KexecException">Every failure, with a <see cref="KexecFailureReason"/> and the errno when the kernel refused.</exception>
    public async Task<KexecLoadResult> LoadAsync(KexecLoadRequest request, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentException.ThrowIfNullOrEmpty(request.KernelPath);
        ArgumentNullException.ThrowIfNull(request.CommandLine);
        if (request.NoInitrd && request.InitrdPath is not null)
        {
            throw new ArgumentException("give either InitrdPath or NoInitrd, not both", nameof(request));
        }

        var caps = KexecCapabilities.Probe(_system.Root);
        if (!caps.HasKexecSysfs)
        {
            // Refuse before any system call: on a kernel without kexec there is nothing to ask.
            throw new KexecException(KexecFailureReason.NotSupported,
                $"cannot load {request.KernelPath}: kexec is not possible on this machine. {string.Join("; ", caps.Reasons)}", KexecErrno.ENOSYS);
        }

        var image = request.VerifyImage ? KernelImage.Probe(request.KernelPath) : null;
        var initrd = request.NoInitrd ? null : request.InitrdPath ?? (image ?? KernelImage.Probe(request.KernelPath)).FindInitrd();
        if (image is not null)
        {
            KexecCommandLine.Parse(request.CommandLine).EnsureFits(image.MaxCommandLineBytes);
            if (request.Method is KexecLoadMethod.SystemCall or KexecLoadMethod.KexecTools && !image.SupportsKexecFileLoad)
            {
                throw new KexecException(KexecFailureReason.NotAKernel,
                    $"{image} cannot be loaded with kexec_file_load: its header lacks a 64-bit entry point loadable above 4 GiB (boot protocol 2.12+); use KexecLoadMethod.KexecToolsClassic");
            }
        }

        var method = request.Method;
        if (method is KexecLoadMethod.SystemCall or KexecLoadMethod.Automatic)
        {
            var errno = LoadWithSystemCall(request.KernelPath, initrd, request.CommandLine);
            if (errno == 0)
            {
                return new KexecLoadResult(request.KernelPath, image, initrd, request.CommandLine, KexecLoadMethod.SystemCall);
            }

            if (!(errno == KexecErrno.ENOSYS && method == KexecLoadMethod.Automatic))
            {
                throw MapErrno(errno, $"kexec_file_load of {request.KernelPath}" + (initrd is null ? "" : $" with initrd {initrd}"), caps);
            }

            method = KexecLoadMethod.KexecToolsClassic;
        }

        List<string> args = [method == KexecLoadMethod.KexecTools ? "-s" : "-c", "-l", request.KernelPath, "--command-line=" + request.CommandLine];
        if (initrd is not null)
        {
            args.Add("--initrd=" + initrd);
        }

        await RunToolAsync(args, $"loading {request.KernelPath}", cancellationToken).ConfigureAwait(false);
        return new KexecLoadResult(request.KernelPath, image, initrd, request.CommandLine, method);
    }

    /// <summary>Unloads the loaded kernel (nothing happens when none is loaded).</summary>
    /// <param name="method">
    /// <see cref="KexecLoadMethod.SystemCall"/> (the default and <see cref="KexecLoadMethod.Automatic"/>):
    /// <c>kexec_file_load</c> with KEXEC_FILE_UNLOAD; the kexec-tools methods run <c>kexec -u</c>.
    /// </param>
    /// <param name="cancellationToken">Cancels a kexec-tools run.</param>
    /// <exception cref="KexecException">The kernel or kexec-tools refused.</exception>
    public async Task UnloadAsync(KexecLoadMethod method = KexecLoadMethod.SystemCall, CancellationToken cancellationToken = default)
    {
        var caps = KexecCapabilities.Probe(_system.Root);
        if (!caps.HasKexecSysfs)
        {
            return; // no kexec in this kernel: nothing can be loaded
        }

        if (method is KexecLoadMethod.SystemCall or KexecLoadMethod.Automatic)
        {
            var errno = _system.KexecFileLoad(null, null, "", KexecInterop.KexecFileUnload);
            if (errno != 0)
            {
                throw MapErrno(errno, "kexec_file_load(KEXEC_FILE_UNLOAD)", caps);
            }

            return;
        }

        await RunToolAsync(["-u"], "unloading the kexec kernel", cancellationToken).ConfigureAwait(false);
    }

    private int LoadWithSystemCall(string kernelPath, string? initrdPath, string commandLine)
    {
        using var kernel = OpenForKernel(kernelPath);
        using var initrd = initrdPath is null ? null : OpenForKernel(initrdPath);
        return _system.KexecFileLoad(kernel, initrd, commandLine, initrd is null ? KexecInterop.KexecFileNoInitramfs : 0);
    }

    private static SafeFileHandle OpenForKernel(string path)
    {
        try
        {
            return File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new KexecException(KexecFailureReason.FileNotFound, $"cannot open '{path}' for kexec: {e.Message}", 0, e);
        }
    }

    private async Task RunToolAsync(IReadOnlyList<string> args, string what, CancellationToken cancellationToken)
    {
        var result = await _system.RunAsync(Options.KexecToolsPath, args, Options.ToolTimeout, cancellationToken).ConfigureAwait(false);
        if (result.ExitCode != 0)
        {
            var hint = result.ExitCode == 127 ? " (is kexec-tools installed? set KexecLoaderOptions.KexecToolsPath)" : "";
            throw new KexecException(KexecFailureReason.ToolFailed,
                $"{what} with kexec-tools failed: `{Options.KexecToolsPath} {string.Join(' ', args)}` exited with {result.ExitCode}{hint}: {result.Output}");
        }
    }

    /// <summary>Turns the kernel's errno into a typed error that says what to do.</summary>
    internal static KexecException MapErrno(int errno, string what, KexecCapabilities caps)
    {
        var errText = KexecErrno.Describe(errno);
        (KexecFailureReason reason, string why) = errno switch
        {
            KexecErrno.EPERM => (KexecFailureReason.NotPermitted, caps switch
            {
                { LoadDisabled: true } => "kexec loading is disabled until the next boot (/proc/sys/kernel/kexec_load_disabled is 1)",
                { Lockdown: KernelLockdown.Integrity or KernelLockdown.Confidentiality } =>
                    $"kernel lockdown ({caps.Lockdown.ToString().ToLowerInvariant()}) admits only a kernel signed with a key the running kernel trusts; sign the image or lift the lockdown",
                _ => "the caller lacks CAP_SYS_BOOT (run as root), or lockdown or kexec_load_disabled forbids loading",
            }),
            KexecErrno.EKEYREJECTED or KexecErrno.EBADMSG or KexecErrno.ENOKEY or KexecErrno.EKEYREVOKED or KexecErrno.EKEYEXPIRED or KexecErrno.ENOPKG =>
                (KexecFailureReason.SignatureRejected,
                    "the kernel's signature is missing, malformed or not trusted and signatures are enforced (CONFIG_KEXEC_SIG_FORCE or lockdown); use a kernel signed with a trusted key"),
            KexecErrno.ENOEXEC => (KexecFailureReason.NotExecutable,
                "the running kernel has no loader that accepts this file: it is not an x86-64 bzImage, or it is truncated or damaged"),
            KexecErrno.EBUSY => (KexecFailureReason.Busy, "another kexec load or unload is in progress; retry when it has finished"),
            KexecErrno.EINVAL => (KexecFailureReason.InvalidArgument,
                "the kernel rejected an argument: the command line (too long, or not NUL-terminated), the flags, or a file that is not a regular file"),
            KexecErrno.ENOSYS => (KexecFailureReason.NotSupported,
                "the running kernel has no kexec_file_load (built without CONFIG_KEXEC_FILE); use KexecLoadMethod.KexecToolsClassic or Automatic if it has kexec_load"),
            KexecErrno.ENOMEM => (KexecFailureReason.OutOfMemory,
                "the kernel found no (contiguous) memory for the kernel and initrd segments; free memory or use a smaller initrd"),
            KexecErrno.EBADF or KexecErrno.EFAULT => (KexecFailureReason.BadDescriptor,
                "a file descriptor or buffer given to the kernel was invalid (a bug: please report it)"),
            _ => (KexecFailureReason.Unknown, "unexpected error"),
        };
        return new KexecException(reason, $"{what} failed with {errText}: {why}", errno);
    }
}
