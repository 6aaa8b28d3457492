using System.Runtime.InteropServices;

namespace RebootlessUpdate.Images.Luo;

/// <summary>The three syscalls LUO needs; the kernel's by default, a scripted device in unit tests.</summary>
internal interface ILuoSyscalls
{
    /// <summary>open(2): a descriptor, or minus the errno.</summary>
    int Open(string path, int flags);

    /// <summary>ioctl(2) with <paramref name="argument"/> as its in/out structure: 0, or minus the errno.</summary>
    int Ioctl(int fd, uint request, byte[] argument);

    /// <summary>close(2).</summary>
    void Close(int fd);
}

/// <summary>The kernel's syscalls.</summary>
internal sealed partial class KernelLuoSyscalls : ILuoSyscalls
{
    internal static readonly KernelLuoSyscalls Instance = new();

    public int Open(string path, int flags)
    {
        var fd = OpenRaw(path, flags);
        return fd >= 0 ? fd : -Marshal.GetLastPInvokeError();
    }

    public unsafe int Ioctl(int fd, uint request, byte[] argument)
    {
        fixed (byte* p = argument)
        {
            return IoctlRaw(fd, request, p) >= 0 ? 0 : -Marshal.GetLastPInvokeError();
        }
    }

    public void Close(int fd) => _ = CloseRaw(fd);

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int OpenRaw(string path, int flags);

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    private static unsafe partial int IoctlRaw(int fd, nuint request, byte* argument);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    private static partial int CloseRaw(int fd);
}
