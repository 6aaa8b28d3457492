using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace RebootlessUpdate.Images.Interop;

/// <summary>
/// The few syscalls the stores need that Mono.Unix lacks or that must act on
/// descriptors .NET did not open: <c>flock</c> (per open file description, so
/// two store instances in one process exclude each other, unlike fcntl locks),
/// <c>fsync</c> of files and folders, <c>mount</c>/<c>umount2</c>.
/// </summary>
internal static partial class Libc
{
    internal const int ORdOnly = 0x0;
    internal const int ORdWr = 0x2;
    internal const int OWrOnly = 0x1;
    internal const int OCreat = 0x40;
    internal const int OExcl = 0x80;
    internal const int ONoCtty = 0x100;
    internal const int ONonBlock = 0x800;
    internal const int Mode0600 = 0x180;
    internal const int Mode0644 = 0x1a4;
    internal const int ODirectory = 0x10000;
    internal const int ONoFollow = 0x20000;
    internal const int OCloExec = 0x80000;

    internal const int LockEx = 2;
    internal const int LockNb = 4;

    internal const int EAgain = 11;
    internal const int EIntr = 4;
    internal const int EBusy = 16;
    internal const int ENoSpc = 28;
    internal const int ELoop = 40;

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int OpenRaw(string path, int flags, int mode);

    [LibraryImport("libc", EntryPoint = "flock", SetLastError = true)]
    internal static partial int Flock(SafeFileHandle fd, int operation);

    [LibraryImport("libc", EntryPoint = "fsync", SetLastError = true)]
    internal static partial int Fsync(SafeFileHandle fd);

    /// <summary>posix_fallocate: returns 0 or the error number (it does not set errno).</summary>
    [LibraryImport("libc", EntryPoint = "posix_fallocate")]
    internal static partial int PosixFallocate(SafeFileHandle fd, long offset, long length);

    [LibraryImport("libc", EntryPoint = "sync")]
    internal static partial void Sync();

    [LibraryImport("libc", EntryPoint = "mount", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int Mount(string source, string target, string fileSystemType, ulong flags, string? data);

    [LibraryImport("libc", EntryPoint = "umount2", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int Umount2(string target, int flags);

    /// <summary>Opens <paramref name="path"/> with raw flags; the handle owns the descriptor.</summary>
    /// <exception cref="IOException">open failed; the message names the path and errno.</exception>
    internal static SafeFileHandle Open(string path, int flags, int mode = 0)
    {
        int fd;
        do
        {
            fd = OpenRaw(path, flags | OCloExec, mode);
        }
        while (fd < 0 && Marshal.GetLastPInvokeError() == EIntr);

        if (fd < 0)
        {
            throw Error($"open {path}", Marshal.GetLastPInvokeError());
        }

        return new SafeFileHandle(fd, ownsHandle: true);
    }

    /// <summary>fsync of a folder, so a rename inside it is durable.</summary>
    internal static void FsyncDirectory(string path)
    {
        using var dir = Open(path, ORdOnly | ODirectory);
        FsyncOrThrow(dir, path);
    }

    /// <summary>fsync of an open file; throws naming <paramref name="what"/>.</summary>
    internal static void FsyncOrThrow(SafeFileHandle handle, string what)
    {
        if (Fsync(handle) != 0)
        {
            throw Error($"fsync {what}", Marshal.GetLastPInvokeError());
        }
    }

    /// <summary>An <see cref="IOException"/> naming the call and errno (HResult carries the errno).</summary>
    internal static IOException Error(string call, int errno) =>
        new($"{call} failed: errno {errno} ({Marshal.GetPInvokeErrorMessage(errno)})", errno);
}
