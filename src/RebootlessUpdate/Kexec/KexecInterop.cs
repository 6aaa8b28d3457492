using System.Runtime.InteropServices;

namespace RebootlessUpdate.Kexec;

/// <summary>
/// The system calls of the kexec driver that Mono.Unix lacks. Every call
/// returns 0 or the errno, captured at once. Reached only through
/// <see cref="IKexecSystem"/>, so tests can put a recording fake in its place.
/// </summary>
internal static unsafe partial class KexecInterop
{
    // x86-64 system call number of kexec_file_load (arch/x86/entry/syscalls/syscall_64.tbl).
    private const long SysKexecFileLoad = 320;

    /// <summary>KEXEC_FILE_UNLOAD: free the loaded image instead of loading one.</summary>
    public const ulong KexecFileUnload = 0x1;

    /// <summary>KEXEC_FILE_NO_INITRAMFS: no initrd descriptor is given.</summary>
    public const ulong KexecFileNoInitramfs = 0x4;

    /// <summary>LINUX_REBOOT_CMD_KEXEC: jump into the loaded kernel.</summary>
    public const int RebootCmdKexec = 0x45584543;

    /// <summary>kexec_file_load(kernel_fd, initrd_fd, cmdline_len, cmdline, flags); cmdline_len counts the NUL.</summary>
    public static int KexecFileLoad(int kernelFd, int initrdFd, ReadOnlySpan<byte> cmdlineWithNul, ulong flags)
    {
        fixed (byte* p = cmdlineWithNul)
        {
            var rc = syscall(SysKexecFileLoad, kernelFd, initrdFd, (nint)cmdlineWithNul.Length, cmdlineWithNul.IsEmpty ? null : p, (nint)flags);
            return rc == -1 ? Marshal.GetLastPInvokeError() : 0;
        }
    }

    /// <summary>reboot(LINUX_REBOOT_CMD_KEXEC); glibc supplies the two magic numbers. Returns only on failure.</summary>
    public static int RebootKexec() => reboot(RebootCmdKexec) == -1 ? Marshal.GetLastPInvokeError() : 0;

    // syscall(2) is variadic; on x86-64 integer arguments go in the same registers
    // as for a fixed signature, so a fixed declaration of six longs is exact.
    [LibraryImport("libc", SetLastError = true)]
    private static partial nint syscall(long number, nint a1, nint a2, nint a3, byte* a4, nint a5);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int reboot(int cmd);
}
