using System.Runtime.InteropServices;

namespace RebootlessUpdate.Criu.Interop;

/// <summary>
/// recvmsg(2) with SCM_RIGHTS: CRIU attaches a descriptor to some notifications
/// (orphan-pts-master sends the master of a new pty). Mono.Unix's recvmsg
/// wrapper does not expose the control buffer in a form we can rely on, so this
/// is direct interop with the x86-64 struct layouts.
/// </summary>
internal static unsafe partial class SocketMessages
{
    private const int SolSocket = 1;
    private const int ScmRights = 1;
    private const int MsgCtrunc = 0x8;
    private const int MsgDontwait = 0x40;
    private const int MsgCmsgCloexec = 0x40000000;
    private const int MaxFds = 16;

    [StructLayout(LayoutKind.Sequential)]
    private struct IoVec
    {
        public void* Base;
        public nuint Length;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct MsgHdr
    {
        public void* Name;
        public uint NameLength;
        public IoVec* Iov;
        public nuint IovLength;
        public void* Control;
        public nuint ControlLength;
        public int Flags;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct CmsgHdr
    {
        public nuint Length;
        public int Level;
        public int Type;
    }

    /// <summary>
    /// Receives one datagram of exactly <paramref name="buffer"/>'s size and the
    /// descriptors attached to it (opened close-on-exec). Returns the byte count,
    /// or -1 with errno set.
    /// </summary>
    public static long Receive(int fd, byte[] buffer, List<int> descriptors, out bool controlTruncated)
    {
        var controlSize = sizeof(CmsgHdr) + (MaxFds * sizeof(int)) + 16;
        var control = stackalloc byte[controlSize];
        fixed (byte* data = buffer)
        {
            var iov = new IoVec { Base = data, Length = (nuint)buffer.Length };
            var msg = new MsgHdr { Iov = &iov, IovLength = 1, Control = control, ControlLength = (nuint)controlSize };
            var n = recvmsg(fd, &msg, MsgDontwait | MsgCmsgCloexec);
            controlTruncated = n >= 0 && (msg.Flags & MsgCtrunc) != 0;
            if (n < 0)
            {
                return n;
            }

            // Walk the control messages (CMSG_FIRSTHDR / CMSG_NXTHDR, 8-byte aligned).
            var offset = 0;
            while (offset + sizeof(CmsgHdr) <= (int)msg.ControlLength)
            {
                var header = (CmsgHdr*)(control + offset);
                if (header->Length < (nuint)sizeof(CmsgHdr))
                {
                    break;
                }

                if (header->Level == SolSocket && header->Type == ScmRights)
                {
                    var count = ((int)header->Length - sizeof(CmsgHdr)) / sizeof(int);
                    var fds = (int*)(control + offset + sizeof(CmsgHdr));
                    for (var i = 0; i < count; i++)
                    {
                        descriptors.Add(fds[i]);
                    }
                }

                offset += ((int)header->Length + 7) & ~7;
            }

            return n;
        }
    }

    [LibraryImport("libc", EntryPoint = "recvmsg", SetLastError = true)]
    private static partial nint recvmsg(int fd, MsgHdr* msg, int flags);
}
