using System.Buffers.Binary;
using System.Text;

namespace RebootlessUpdate.Images.Luo;

/// <summary>
/// The facts of the kernel's Live Update Orchestrator interface (<c>include/uapi/linux/liveupdate.h</c>, Linux 7.2):
/// the ioctl numbers of <c>/dev/liveupdate</c> and of a session's descriptor, and the byte layout of each argument.
/// Every argument starts with its own size (a u32), so the kernel can tell the version asked for.
/// </summary>
internal static class LuoAbi
{
    /// <summary>The ioctl type of <c>/dev/liveupdate</c>.</summary>
    internal const uint IoctlType = 0xBA;

    /// <summary>A session's name, with its terminating zero, is at most this many bytes.</summary>
    internal const int SessionNameLength = 64;

    // _IO(type, nr): no direction or size bits, only (type << 8) | nr.
    internal const uint CreateSession = (IoctlType << 8) | 0x00;
    internal const uint RetrieveSession = (IoctlType << 8) | 0x01;
    internal const uint PreserveFd = (IoctlType << 8) | 0x40;
    internal const uint RetrieveFd = (IoctlType << 8) | 0x41;
    internal const uint Finish = (IoctlType << 8) | 0x42;
    internal const uint GetName = (IoctlType << 8) | 0x43;

    /// <summary><c>struct liveupdate_ioctl_create_session</c> and <c>..._retrieve_session</c>: size, fd (out), name.</summary>
    internal const int SessionArgumentSize = 4 + 4 + SessionNameLength;

    /// <summary><c>struct liveupdate_session_preserve_fd</c> and <c>..._retrieve_fd</c>: size, fd, token (u64, 8-aligned).</summary>
    internal const int FdArgumentSize = 4 + 4 + 8;

    /// <summary><c>struct liveupdate_session_finish</c>: size, reserved.</summary>
    internal const int FinishArgumentSize = 4 + 4;

    /// <summary>The argument of create or retrieve session for <paramref name="name"/>.</summary>
    /// <exception cref="ArgumentException">The name is empty, has a zero byte, or is too long.</exception>
    internal static byte[] SessionArgument(string name)
    {
        var bytes = SessionNameBytes(name);
        var a = new byte[SessionArgumentSize];
        BinaryPrimitives.WriteUInt32LittleEndian(a, SessionArgumentSize);
        BinaryPrimitives.WriteInt32LittleEndian(a.AsSpan(4), -1);
        bytes.CopyTo(a.AsSpan(8));
        return a;
    }

    /// <summary>The argument of preserve or retrieve fd: <paramref name="fd"/> (-1 to retrieve) and its token.</summary>
    internal static byte[] FdArgument(int fd, ulong token)
    {
        var a = new byte[FdArgumentSize];
        BinaryPrimitives.WriteUInt32LittleEndian(a, FdArgumentSize);
        BinaryPrimitives.WriteInt32LittleEndian(a.AsSpan(4), fd);
        BinaryPrimitives.WriteUInt64LittleEndian(a.AsSpan(8), token);
        return a;
    }

    /// <summary>The argument of finish.</summary>
    internal static byte[] FinishArgument()
    {
        var a = new byte[FinishArgumentSize];
        BinaryPrimitives.WriteUInt32LittleEndian(a, FinishArgumentSize);
        return a;
    }

    /// <summary>The descriptor the kernel wrote into an argument (its second field).</summary>
    internal static int FdOf(ReadOnlySpan<byte> argument) => BinaryPrimitives.ReadInt32LittleEndian(argument[4..]);

    /// <summary>A session name as the kernel takes it: UTF-8, no zero byte, at most 63 bytes (the 64th is its end).</summary>
    /// <exception cref="ArgumentException">It cannot be one.</exception>
    internal static byte[] SessionNameBytes(string name)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        var bytes = Encoding.UTF8.GetBytes(name);
        if (bytes.Contains((byte)0))
        {
            throw new ArgumentException("a LUO session name cannot hold a zero byte", nameof(name));
        }

        if (bytes.Length > SessionNameLength - 1)
        {
            throw new ArgumentException($"a LUO session name is at most {SessionNameLength - 1} bytes; '{name}' has {bytes.Length}", nameof(name));
        }

        return bytes;
    }
}
