using System.Diagnostics;
using System.Text;
using Microsoft.Win32.SafeHandles;

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
        var psi = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }

        Process process;
        try
        {
            process = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {file}");
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            return new ToolResult(127, $"cannot run {file}: {e.Message}");
        }

        using (process)
        {
            process.StandardInput.Close();
            var stdout = process.StandardOutput.ReadToEndAsync(cancellationToken);
            var stderr = process.StandardError.ReadToEndAsync(cancellationToken);
            using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            cts.CancelAfter(timeout);
            try
            {
                await process.WaitForExitAsync(cts.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                process.Kill(entireProcessTree: true);
                await process.WaitForExitAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10), CancellationToken.None).ConfigureAwait(false);
                cancellationToken.ThrowIfCancellationRequested();
                return new ToolResult(124, $"{file} did not finish within {timeout} and was killed");
            }

            return new ToolResult(process.ExitCode, ((await stdout.ConfigureAwait(false)) + (await stderr.ConfigureAwait(false))).Trim());
        }
    }

    public void Sync() => _ = Mono.Unix.Native.Syscall.sync(); // sync(2) cannot fail

    public int RebootKexec() => KexecInterop.RebootKexec();
}
