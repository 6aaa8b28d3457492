using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using RebootlessUpdate.Images.Interop;

namespace RebootlessUpdate.Images.Luo;

/// <summary>
/// Anonymous memory files (<c>memfd_create</c>), the one kind of file LUO preserves across kexec, with their seals:
/// a sealed memfd can no longer be written, shrunk or grown, by anyone, and the seals cross the kexec with it.
/// </summary>
internal static partial class Memfd
{
    private const uint CloseOnExec = 1;
    private const uint AllowSealing = 2;
    private const int AddSeals = 1033;
    private const int GetSeals = 1034;

    /// <summary>F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW and F_SEAL_WRITE: no change to the contents or the seals.</summary>
    internal const int ReadOnlySeals = 1 | 2 | 4 | 8;

    /// <summary>A new empty memfd named <paramref name="name"/> (a label in /proc, not a path), sealable.</summary>
    /// <exception cref="IOException">memfd_create failed; the message says why.</exception>
    internal static SafeFileHandle Create(string name)
    {
        var fd = MemfdCreateRaw(name, CloseOnExec | AllowSealing);
        return fd >= 0 ? new SafeFileHandle(fd, ownsHandle: true) : throw Libc.Error($"memfd_create {name}", Marshal.GetLastPInvokeError());
    }

    /// <summary>Seals <paramref name="memfd"/> read-only: nothing can write, resize or unseal it any more.</summary>
    /// <exception cref="IOException">The seals could not be added (a writable shared mapping of it exists, or it is no memfd).</exception>
    internal static void SealReadOnly(SafeFileHandle memfd)
    {
        if (FcntlRaw(memfd, AddSeals, ReadOnlySeals) < 0)
        {
            throw Libc.Error("sealing a memfd", Marshal.GetLastPInvokeError());
        }
    }

    /// <summary>The seals on <paramref name="memfd"/> (F_GET_SEALS).</summary>
    /// <exception cref="IOException">It is no memfd.</exception>
    internal static int Seals(SafeFileHandle memfd)
    {
        var seals = FcntlRaw(memfd, GetSeals, 0);
        return seals >= 0 ? seals : throw Libc.Error("reading a memfd's seals", Marshal.GetLastPInvokeError());
    }

    [LibraryImport("libc", EntryPoint = "memfd_create", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int MemfdCreateRaw(string name, uint flags);

    [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    private static partial int FcntlRaw(SafeFileHandle fd, int command, int argument);
}
