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
    internal const int Mode0711 = 0x1c9;
    internal const int ODirectory = 0x10000;
    internal const int ONoFollow = 0x20000;
    internal const int OCloExec = 0x80000;

    internal const int LockEx = 2;
    internal const int LockNb = 4;

    internal const int ENoEnt = 2;
    internal const int EExist = 17;
    internal const int EAgain = 11;
    internal const int EIntr = 4;
    internal const int EBusy = 16;
    internal const int ENoMem = 12;
    internal const int EAccess = 13;
    internal const int ENoSpc = 28;
    internal const int ENotDir = 20;
    internal const int ELoop = 40;
    internal const int EPerm = 1;
    internal const int EBadF = 9;
    internal const int EInval = 22;
    internal const int ENoSys = 38;
    internal const int EOpNotSupp = 95;
    internal const int OPath = 0x200000;

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int OpenRaw(string path, int flags, int mode);

    [LibraryImport("libc", EntryPoint = "openat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int OpenAtRaw(SafeFileHandle dir, string name, int flags, int mode);

    [LibraryImport("libc", EntryPoint = "mkdirat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int MkdirAtRaw(SafeFileHandle dir, string name, int mode);

    [LibraryImport("libc", EntryPoint = "renameat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int RenameAtRaw(SafeFileHandle fromDir, string from, SafeFileHandle toDir, string to);

    [LibraryImport("libc", EntryPoint = "renameat2", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int RenameAt2Raw(SafeFileHandle fromDir, string from, SafeFileHandle toDir, string to, uint flags);

    [LibraryImport("libc", EntryPoint = "linkat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int LinkAtRaw(SafeFileHandle fromDir, string from, SafeFileHandle toDir, string to, int flags);

    [LibraryImport("libc", EntryPoint = "unlinkat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int UnlinkAtRaw(SafeFileHandle dir, string name, int flags);

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

    /// <summary>
    /// Opens <paramref name="name"/> (one path component) inside the open folder <paramref name="dir"/>, so nothing
    /// swapped in above that folder meanwhile can redirect it.
    /// </summary>
    /// <exception cref="IOException">openat failed; HResult carries errno.</exception>
    internal static SafeFileHandle OpenAt(SafeFileHandle dir, string name, int flags, int mode = 0)
    {
        int fd;
        do
        {
            fd = OpenAtRaw(dir, name, flags | OCloExec, mode);
        }
        while (fd < 0 && Marshal.GetLastPInvokeError() == EIntr);

        return fd >= 0 ? new SafeFileHandle(fd, ownsHandle: true) : throw Error($"openat {name}", Marshal.GetLastPInvokeError());
    }

    /// <summary>mkdirat; false when <paramref name="name"/> exists already.</summary>
    internal static bool MkdirAt(SafeFileHandle dir, string name, int mode) =>
        MkdirAtRaw(dir, name, mode) == 0 || (Marshal.GetLastPInvokeError() is var e && e == EExist ? false : throw Error($"mkdirat {name}", e));

    /// <summary>renameat within one open folder: atomically replaces <paramref name="to"/>.</summary>
    internal static void RenameAt(SafeFileHandle dir, string from, string to)
    {
        if (RenameAtRaw(dir, from, dir, to) != 0)
        {
            throw Error($"renameat {from} {to}", Marshal.GetLastPInvokeError());
        }
    }

    /// <summary>
    /// Renames <paramref name="from"/> to <paramref name="to"/> within one open folder only if <paramref name="to"/> is
    /// free (EEXIST otherwise), leaving one name: renameat2 with RENAME_NOREPLACE; where the filesystem or kernel lacks
    /// that, linkat then unlinkat; where it has no hard links either, a check then renameat (not atomic against
    /// another writer of the name, as File.Move is not).
    /// </summary>
    internal static void RenameAtNoReplace(SafeFileHandle dir, string from, string to)
    {
        const uint NoReplace = 1;
        if (RenameAt2Raw(dir, from, dir, to, NoReplace) == 0)
        {
            return;
        }

        var e = Marshal.GetLastPInvokeError();
        if (e is not (EInval or ENoSys or EOpNotSupp))
        {
            throw Error($"renameat2 {from} {to}", e);
        }

        if (LinkAtRaw(dir, from, dir, to, 0) == 0)
        {
            UnlinkAt(dir, from);
            return;
        }

        e = Marshal.GetLastPInvokeError();
        if (e is not (EPerm or EOpNotSupp))
        {
            throw Error($"linkat {from} {to}", e);
        }

        using (var taken = TryOpenAt(dir, to, OPath | ONoFollow))
        {
            if (taken is not null)
            {
                throw Error($"rename {from} {to}", EExist);
            }
        }

        RenameAt(dir, from, to);
    }

    /// <summary>openat, or null when it fails.</summary>
    private static SafeFileHandle? TryOpenAt(SafeFileHandle dir, string name, int flags)
    {
        var fd = OpenAtRaw(dir, name, flags | OCloExec, 0);
        return fd >= 0 ? new SafeFileHandle(fd, ownsHandle: true) : null;
    }

    /// <summary>unlinkat of a file (never a folder); one that is not there is fine.</summary>
    internal static void UnlinkAt(SafeFileHandle dir, string name)
    {
        if (UnlinkAtRaw(dir, name, 0) != 0 && Marshal.GetLastPInvokeError() is var e && e != ENoEnt)
        {
            throw Error($"unlinkat {name}", e);
        }
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
