using System.Runtime.InteropServices;
using Mono.Unix.Native;

namespace RebootlessUpdate.Criu.Transport;

/// <summary>
/// One end of a SOCK_SEQPACKET unix socket (one message per datagram, as CRIU
/// speaks). Receives are sized by peeking the datagram (MSG_PEEK|MSG_TRUNC
/// returns its real length), so replies of any size arrive whole.
/// </summary>
internal sealed class SeqpacketSocket : IDisposable
{
    private static readonly TimeSpan PollSlice = TimeSpan.FromMilliseconds(100);
    private int _fd;

    public SeqpacketSocket(int fd) => _fd = fd;

    /// <summary>The descriptor, for diagnostics.</summary>
    public int Fd => _fd;

    /// <summary>Creates a close-on-exec socketpair: no other child can inherit either end by accident.</summary>
    public static (SeqpacketSocket Ours, int Theirs) CreatePair()
    {
        if (Syscall.socketpair(UnixAddressFamily.AF_UNIX, UnixSocketType.SOCK_SEQPACKET, UnixSocketFlags.SOCK_CLOEXEC,
                (UnixSocketProtocol)0, out var a, out var b) != 0)
        {
            throw Error("socketpair(AF_UNIX, SOCK_SEQPACKET)");
        }

        return (new SeqpacketSocket(a), b);
    }

    /// <summary>
    /// Sends one datagram. Returns false when the peer has gone (EPIPE,
    /// ECONNRESET): the next receive then reports the end of the connection,
    /// with whatever the peer said before.
    /// </summary>
    public unsafe bool Send(ReadOnlySpan<byte> message)
    {
        ObjectDisposedException.ThrowIf(_fd < 0, this);
        fixed (byte* p = message)
        {
            long n;
            do
            {
                n = Syscall.send(_fd, p, (ulong)message.Length, MessageFlags.MSG_NOSIGNAL);
            }
            while (n < 0 && Stdlib.GetLastError() == Errno.EINTR);

            if (n < 0)
            {
                var errno = Stdlib.GetLastError();
                if (errno is Errno.EPIPE or Errno.ECONNRESET)
                {
                    return false;
                }

                throw Error($"send of a {message.Length}-byte message", errno);
            }
        }

        return true;
    }

    /// <summary>
    /// Waits for and receives one datagram; null when the peer closed the
    /// connection. The wait is cancellable. Descriptors attached to the datagram
    /// are closed (see <see cref="ReceiveWithDescriptorsAsync"/> to keep them).
    /// </summary>
    public async Task<byte[]?> ReceiveAsync(CancellationToken cancellationToken)
    {
        var (data, fds) = await ReceiveWithDescriptorsAsync(cancellationToken).ConfigureAwait(false);
        foreach (var fd in fds)
        {
            _ = Syscall.close(fd);
        }

        return data;
    }

    /// <summary>Like <see cref="ReceiveAsync"/>, and returns the descriptors sent with SCM_RIGHTS (the caller owns them).</summary>
    public Task<(byte[]? Data, IReadOnlyList<int> Descriptors)> ReceiveWithDescriptorsAsync(CancellationToken cancellationToken) =>
        Task.Factory.StartNew(() => Receive(cancellationToken), cancellationToken, TaskCreationOptions.LongRunning, TaskScheduler.Default);

    private unsafe (byte[]? Data, IReadOnlyList<int> Descriptors) Receive(CancellationToken cancellationToken)
    {
        var pfd = new[] { new Pollfd { fd = _fd, events = PollEvents.POLLIN } };
        while (true)
        {
            cancellationToken.ThrowIfCancellationRequested();
            ObjectDisposedException.ThrowIf(_fd < 0, this);
            var ready = Syscall.poll(pfd, 1, (int)PollSlice.TotalMilliseconds);
            if (ready < 0 && Stdlib.GetLastError() != Errno.EINTR)
            {
                throw Error("poll");
            }

            if (ready <= 0)
            {
                continue;
            }

            // Real size of the next datagram without consuming it.
            byte dummy;
            var size = Syscall.recv(_fd, &dummy, 0, MessageFlags.MSG_PEEK | MessageFlags.MSG_TRUNC | MessageFlags.MSG_DONTWAIT);
            if (size < 0)
            {
                var errno = Stdlib.GetLastError();
                if (errno is Errno.EINTR or Errno.EAGAIN)
                {
                    continue;
                }

                if (errno == Errno.ECONNRESET)
                {
                    return (null, []); // the peer closed with our last message unread
                }

                throw Error("recv (peek)", errno);
            }

            if (size == 0)
            {
                // EOF (a zero-length datagram is not something CRIU sends).
                return (null, []);
            }

            var buffer = new byte[size];
            var fds = new List<int>();
            var n = Interop.SocketMessages.Receive(_fd, buffer, fds, out var controlTruncated);
            if (n < 0)
            {
                throw Error("recvmsg");
            }

            if (n != size || controlTruncated)
            {
                foreach (var fd in fds)
                {
                    _ = Syscall.close(fd);
                }

                throw new CriuTransportException(controlTruncated
                    ? "criu sent more descriptors with a message than the client can take (MSG_CTRUNC)"
                    : $"short datagram from criu: {n} of {size} bytes");
            }

            return (buffer, fds);
        }
    }

    public void Dispose()
    {
        var fd = Interlocked.Exchange(ref _fd, -1);
        if (fd >= 0)
        {
            _ = Syscall.close(fd);
        }
    }

    internal static CriuTransportException Error(string what, Errno? errno = null)
    {
        var e = errno ?? Stdlib.GetLastError();
        var code = NativeConvert.FromErrno(e);
        return new CriuTransportException($"{what} failed: {Marshal.GetPInvokeErrorMessage(code)} ({e})", code);
    }
}
