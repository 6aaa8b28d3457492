using Google.Protobuf;
using Mono.Unix.Native;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Criu.Protocol;
using RebootlessUpdate.Criu.Transport;

namespace RebootlessUpdate.UnitTests.Criu;

/// <summary>
/// An in-memory CRIU: the other end of a real SOCK_SEQPACKET socketpair, driven
/// step by step by the test (expect a request, write a response, send raw
/// bytes, close), so protocol edge cases are deterministic.
/// </summary>
internal sealed partial class FakeCriuPeer : IDisposable
{
    private readonly SeqpacketSocket _peer;

    private FakeCriuPeer(SeqpacketSocket peer) => _peer = peer;

    /// <summary>A client whose every connection is a new pair; <paramref name="onConnect"/> receives the peer for each.</summary>
    public static CriuClient Client(Func<FakeCriuPeer, Task> script, List<Task>? scripts = null, List<IReadOnlyCollection<int>>? inherited = null,
        CriuClientOptions? options = null)
    {
        return new CriuClient(options ?? new CriuClientOptions(), inheritFds =>
        {
            inherited?.Add(inheritFds);
            var (ours, theirs) = SeqpacketSocket.CreatePair();
            var peer = new FakeCriuPeer(new SeqpacketSocket(theirs));
            var run = Task.Run(async () =>
            {
                using (peer)
                {
                    await script(peer);
                }
            });
            scripts?.Add(run);
            return new CriuConnection(ours, null, "fake criu");
        });
    }

    public async Task<criu_req> ExpectAsync(criu_req_type type)
    {
        var req = await NextAsync();
        return req.Type == type ? req : throw new InvalidOperationException($"expected {type}, got {req.Type}");
    }

    public async Task<criu_req> NextAsync()
    {
        var bytes = await _peer.ReceiveAsync(CancellationToken.None) ?? throw new InvalidOperationException("client closed the connection");
        return criu_req.Parser.ParseFrom(bytes);
    }

    public void Write(criu_resp resp) => _peer.Send(resp.ToByteArray());

    public void WriteRaw(ReadOnlySpan<byte> bytes) => _peer.Send(bytes);

    /// <summary>Sends a response with one descriptor attached (SCM_RIGHTS), as CRIU does for orphan-pts-master.</summary>
    public unsafe void WriteWithDescriptor(criu_resp resp, int fd)
    {
        var data = resp.ToByteArray();
        var control = stackalloc byte[24]; // cmsghdr (16) + one int, padded to 8
        *(ulong*)control = 20;             // cmsg_len = CMSG_LEN(sizeof(int))
        *(int*)(control + 8) = 1;          // SOL_SOCKET
        *(int*)(control + 12) = 1;         // SCM_RIGHTS
        *(int*)(control + 16) = fd;
        fixed (byte* p = data)
        {
            var iov = stackalloc nint[2];
            iov[0] = (nint)p;
            iov[1] = data.Length;
            var msg = stackalloc nint[7];  // struct msghdr on x86-64
            msg[0] = 0; msg[1] = 0; msg[2] = (nint)iov; msg[3] = 1; msg[4] = (nint)control; msg[5] = 24; msg[6] = 0;
            if (sendmsg(_peer.Fd, msg, 0) != data.Length)
            {
                throw new InvalidOperationException($"sendmsg failed: errno {System.Runtime.InteropServices.Marshal.GetLastPInvokeError()}");
            }
        }
    }

    [System.Runtime.InteropServices.LibraryImport("libc", SetLastError = true)]
    private static unsafe partial nint sendmsg(int fd, nint* msg, int flags);

    public void Close() => _ = Syscall.shutdown(_peer.Fd, ShutdownOption.SHUT_RDWR);

    public void Dispose() => _peer.Dispose();

    public static criu_resp Ok(criu_req_type type) => new() { Type = type, Success = true };
}
