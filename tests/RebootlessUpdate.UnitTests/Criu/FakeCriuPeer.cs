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
internal sealed class FakeCriuPeer : IDisposable
{
    private readonly SeqpacketSocket _peer;

    private FakeCriuPeer(SeqpacketSocket peer) => _peer = peer;

    /// <summary>A client whose every connection is a new pair; <paramref name="onConnect"/> receives the peer for each.</summary>
    public static CriuClient Client(Func<FakeCriuPeer, Task> script, List<Task>? scripts = null, List<IReadOnlyCollection<int>>? inherited = null)
    {
        return new CriuClient(new CriuClientOptions(), inheritFds =>
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

    public void Close() => _ = Syscall.shutdown(_peer.Fd, ShutdownOption.SHUT_RDWR);

    public void Dispose() => _peer.Dispose();

    public static criu_resp Ok(criu_req_type type) => new() { Type = type, Success = true };
}
