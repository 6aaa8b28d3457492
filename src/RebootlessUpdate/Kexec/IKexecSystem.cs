using System.Text;
using Microsoft.Win32.SafeHandles;
using RebootlessUpdate.Processes;

namespace RebootlessUpdate.Kexec;

/// <summary>The output of a tool the driver ran (kexec-tools, systemctl).</summary>
internal sealed record ToolResult(int ExitCode, string Output);

/// <summary>
/// Everything the driver asks of the operating system: the irreversible calls
/// sit behind this seam so unit tests can record them with a fake and host
/// tests can prove they are never reached.
/// </summary>
internal interface IKexecSystem
{
    /// <summary>The folder that holds <c>proc</c>, <c>sys</c>, <c>boot</c> ("/" on a real system).</summary>
    string Root { get; }

    /// <summary>The effective user id.</summary>
    uint EffectiveUserId { get; }

    /// <summary>kexec_file_load; returns 0 or the errno.</summary>
    int KexecFileLoad(SafeFileHandle? kernel, SafeFileHandle? initrd, string commandLine, ulong flags);

    /// <summary>Runs a program to completion (bounded); a missing program gives exit code 127.</summary>
    Task<ToolResult> RunAsync(string file, IReadOnlyList<string> args, TimeSpan timeout, CancellationToken cancellationToken);

    /// <summary>sync(2): flush every filesystem.</summary>
    void Sync();

    /// <summary>reboot(LINUX_REBOOT_CMD_KEXEC); returns the errno, only on failure.</summary>
    int RebootKexec();
}

/// <summary>The real operating system.</summary>
internal sealed class LinuxKexecSystem : IKexecSystem
{
    public static LinuxKexecSystem Instance { get; } = new();

    public string Root => "/";

    public uint EffectiveUserId => Mono.Unix.Native.Syscall.geteuid();

    public int KexecFileLoad(SafeFileHandle? kernel, SafeFileHandle? initrd, string commandLine, ulong flags)
    {
        var cmdline = commandLine.Length == 0 && (flags & KexecInterop.KexecFileUnload) != 0
            ? []
            : Encoding.UTF8.GetBytes(commandLine + "\0");
        var addedKernel = false;
        var addedInitrd = false;
        try
        {
            kernel?.DangerousAddRef(ref addedKernel);
            initrd?.DangerousAddRef(ref addedInitrd);
            return KexecInterop.KexecFileLoad(
                kernel is null ? -1 : (int)kernel.DangerousGetHandle(),
                initrd is null ? -1 : (int)initrd.DangerousGetHandle(),
                cmdline, flags);
        }
        finally
        {
            if (addedKernel)
            {
                kernel!.DangerousRelease();
            }

            if (addedInitrd)
            {
                initrd!.DangerousRelease();
            }
        }
    }

    public async Task<ToolResult> RunAsync(string file, IReadOnlyList<string> args, TimeSpan timeout, CancellationToken cancellationToken)
    {
        ToolRun run;
        try
        {
            run = await ProcessRunner.RunAsync(file, args, timeout, cancellationToken).ConfigureAwait(false);
        }
        catch (ToolNotStartedException e)
        {
            return new ToolResult(127, e.Message);
        }

        return run.TimedOut ? new ToolResult(124, $"{file} did not finish within {timeout} and was killed") : new ToolResult(run.ExitCode, run.Output);
    }

    public void Sync() => _ = Mono.Unix.Native.Syscall.sync(); // sync(2) cannot fail

    public int RebootKexec() => KexecInterop.RebootKexec();
}
