using System.Runtime.InteropServices;
using Mono.Unix.Native;

namespace RebootlessUpdate.Criu.Interop;

/// <summary>Signals a process only while it is the one that started at a known time: a reused pid never gets the signal.</summary>
internal static partial class PidfdSignal
{
    /// <summary>SIGKILLs <paramref name="pid"/> while it is the process that started at <paramref name="startTime"/>.</summary>
    internal static bool Kill(int pid, ulong startTime) => Send(pid, startTime, Signum.SIGKILL);

    /// <summary>
    /// Sends <paramref name="signal"/> to <paramref name="pid"/> only while it is the process that started at
    /// <paramref name="startTime"/> (field 22 of <c>/proc/PID/stat</c>): through a pidfd opened before the check, which
    /// pins the process, so the signal cannot reach a later process that reused the pid.
    /// </summary>
    internal static bool Send(int pid, ulong startTime, Signum signal)
    {
        var pidfd = -1;
        try
        {
            pidfd = PidfdOpen(pid, 0);
        }
        catch (EntryPointNotFoundException)
        {
            // A libc older than 2.36: fall back to kill after the identity check below.
        }

        try
        {
            if (StartTimeOf(pid) != startTime)
            {
                return false;
            }

            return pidfd >= 0
                ? PidfdSendSignal(pidfd, (int)NativeConvert.FromSignum(signal), 0, 0) == 0
                : Syscall.kill(pid, signal) == 0;
        }
        finally
        {
            if (pidfd >= 0)
            {
                _ = Syscall.close(pidfd);
            }
        }
    }

    /// <summary>
    /// A duplicate of descriptor <paramref name="fd"/> of <paramref name="pid"/> (pidfd_getfd), taken only while it is the
    /// process that started at <paramref name="startTime"/> and while its descriptor's link (<c>/proc/PID/fd/FD</c>) is
    /// <paramref name="link"/>: through a pidfd opened before both checks. Close-on-exec; the caller owns it.
    /// </summary>
    /// <exception cref="IOException">Another process, another file, or the kernel refused (errno named).</exception>
    internal static int GetFd(int pid, ulong startTime, int fd, Func<string?, bool> link)
    {
        var pidfd = PidfdOpen(pid, 0);
        if (pidfd < 0)
        {
            throw new IOException($"pidfd_open of pid {pid} failed: {Stdlib.strerror(Stdlib.GetLastError())}");
        }

        try
        {
            if (StartTimeOf(pid) != startTime)
            {
                throw new IOException($"pid {pid} is not the process that started at {startTime} any more");
            }

            string? target;
            try
            {
                target = new FileInfo($"/proc/{pid}/fd/{fd}").LinkTarget;
            }
            catch (IOException)
            {
                target = null;
            }

            if (!link(target))
            {
                throw new IOException($"descriptor {fd} of pid {pid} is {target ?? "not open"}, not the file expected");
            }

            var taken = PidfdGetFd(pidfd, fd, 0);
            if (taken < 0)
            {
                throw new IOException($"pidfd_getfd of descriptor {fd} of pid {pid} failed: {Stdlib.strerror(Stdlib.GetLastError())}");
            }

            return taken;
        }
        finally
        {
            _ = Syscall.close(pidfd);
        }
    }

    /// <summary>The start time of a live process (not a zombie), or null.</summary>
    internal static ulong? StartTimeOf(int pid) => ProcStat.Read(pid) is { State: not ('Z' or 'X') } s ? s.StartTime : null;

    [LibraryImport("libc", EntryPoint = "pidfd_open", SetLastError = true)]
    private static partial int PidfdOpen(int pid, uint flags);

    [LibraryImport("libc", EntryPoint = "pidfd_getfd", SetLastError = true)]
    private static partial int PidfdGetFd(int pidfd, int targetFd, uint flags);

    [LibraryImport("libc", EntryPoint = "pidfd_send_signal", SetLastError = true)]
    private static partial int PidfdSendSignal(int pidfd, int signal, nint info, uint flags);
}
