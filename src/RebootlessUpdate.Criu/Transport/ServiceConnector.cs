using Mono.Unix.Native;

namespace RebootlessUpdate.Criu.Transport;

/// <summary>Connects to a running <c>criu service --address PATH</c> (one worker per connection).</summary>
internal static class ServiceConnector
{
    public static CriuConnection Connect(string address)
    {
        var fd = Syscall.socket(UnixAddressFamily.AF_UNIX, UnixSocketType.SOCK_SEQPACKET, UnixSocketFlags.SOCK_CLOEXEC, 0);
        if (fd < 0)
        {
            throw SeqpacketSocket.Error("socket(AF_UNIX, SOCK_SEQPACKET)");
        }

        var socket = new SeqpacketSocket(fd);
        if (Syscall.connect(fd, new SockaddrUn(address)) != 0)
        {
            var errno = Stdlib.GetLastError();
            socket.Dispose();
            var hint = errno is Errno.ENOENT or Errno.ECONNREFUSED
                ? " Is `criu service --address " + address + "` running?"
                : string.Empty;
            throw new CriuTransportException(
                $"cannot connect to the criu service at '{address}': {System.Runtime.InteropServices.Marshal.GetPInvokeErrorMessage(NativeConvert.FromErrno(errno))} ({errno}).{hint}",
                NativeConvert.FromErrno(errno));
        }

        return new CriuConnection(socket, null, $"criu service at {address}");
    }
}
