using System.Buffers.Binary;
using System.Net.Sockets;
using RebootlessUpdate.Criu;

namespace RebootlessUpdate.UnitTests.Criu;

/// <summary>
/// The <c>criu lazy-pages --page-server</c> side of the page-server protocol, driven step by step by a test
/// over a real TCP connection: write requests (whole, pipelined or in pieces), read replies, hang up.
/// </summary>
public sealed class FakeLazyPagesDaemon : IDisposable
{
    public const uint Get = 7;
    public const uint Close = 0x1023;
    public const int PageSize = ILazyPageSource.PageSize;

    private readonly TcpClient _client;
    private readonly NetworkStream _stream;

    private FakeLazyPagesDaemon(TcpClient client)
    {
        _client = client;
        _stream = client.GetStream();
    }

    public static async Task<FakeLazyPagesDaemon> ConnectAsync(CriuPageServerEndpoint endpoint)
    {
        var client = new TcpClient();
        await client.ConnectAsync(endpoint.Address, endpoint.Port);
        return new FakeLazyPagesDaemon(client);
    }

    public static byte[] Header(uint command, uint pages, ulong address, ulong pid)
    {
        var header = new byte[24];
        BinaryPrimitives.WriteUInt32LittleEndian(header, command);
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(4), pages);
        BinaryPrimitives.WriteUInt64LittleEndian(header.AsSpan(8), address);
        BinaryPrimitives.WriteUInt64LittleEndian(header.AsSpan(16), pid);
        return header;
    }

    public async Task WriteAsync(params byte[][] messages)
    {
        await _stream.WriteAsync(messages.SelectMany(m => m).ToArray());
        await _stream.FlushAsync();
    }

    public Task SendGetAsync(int pid, ulong address, uint pages) => WriteAsync(Header(Get, pages, address, (ulong)pid));

    /// <summary>Reads one reply to a GET: its header fields and the pages it carries.</summary>
    public async Task<(uint Command, uint Pages, ulong Address, ulong Pid, byte[] Data)> ReadReplyAsync()
    {
        var header = new byte[24];
        await _stream.ReadExactlyAsync(header);
        var pages = BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan(4));
        var data = new byte[pages * PageSize];
        await _stream.ReadExactlyAsync(data);
        return (BinaryPrimitives.ReadUInt32LittleEndian(header), pages, BinaryPrimitives.ReadUInt64LittleEndian(header.AsSpan(8)),
            BinaryPrimitives.ReadUInt64LittleEndian(header.AsSpan(16)), data);
    }

    /// <summary>Sends PS_IOV_CLOSE and returns the int32 status the server answers.</summary>
    public async Task<int> CloseAsync()
    {
        await WriteAsync(Header(Close, 0, 0, 0));
        var status = new byte[4];
        await _stream.ReadExactlyAsync(status);
        return BinaryPrimitives.ReadInt32LittleEndian(status);
    }

    /// <summary>Reads until the server closes the connection; returns how many bytes came before.</summary>
    public async Task<int> ReadUntilClosedAsync()
    {
        var total = 0;
        var buffer = new byte[64 * 1024];
        try
        {
            int n;
            while ((n = await _stream.ReadAsync(buffer)) > 0)
            {
                total += n;
            }
        }
        catch (IOException)
        {
            // A reset is a close too.
        }

        return total;
    }

    /// <summary>Hangs up the way a dying daemon does: no PS_IOV_CLOSE.</summary>
    public void HangUp() => _client.Client.Shutdown(SocketShutdown.Send);

    public void Dispose() => _client.Dispose();
}

/// <summary>
/// Pages whose every byte says where it comes from: the first 8 bytes are the page's address, the next 4 the pid,
/// the rest a byte derived from both. <see cref="PagesPerRead"/> caps what one read gives.
/// </summary>
internal sealed class PatternPageSource : ILazyPageSource
{
    public int? PagesPerRead { get; init; }

    public Func<int, ulong, CancellationToken, Task>? BeforeRead { get; init; }

    public static byte[] Expected(int pid, ulong address, int pages)
    {
        var data = new byte[pages * ILazyPageSource.PageSize];
        Fill(pid, address, data);
        return data;
    }

    public async ValueTask<int> ReadPagesAsync(int pid, ulong address, Memory<byte> destination, CancellationToken cancellationToken)
    {
        if (BeforeRead is { } before)
        {
            await before(pid, address, cancellationToken);
        }

        var pages = Math.Min(destination.Length / ILazyPageSource.PageSize, PagesPerRead ?? int.MaxValue);
        Fill(pid, address, destination.Span[..(pages * ILazyPageSource.PageSize)]);
        return pages;
    }

    private static void Fill(int pid, ulong address, Span<byte> data)
    {
        for (var page = 0; page * ILazyPageSource.PageSize < data.Length; page++)
        {
            var at = address + ((ulong)page * ILazyPageSource.PageSize);
            var span = data.Slice(page * ILazyPageSource.PageSize, ILazyPageSource.PageSize);
            span.Fill((byte)((at >> 12) ^ (ulong)pid));
            BinaryPrimitives.WriteUInt64LittleEndian(span, at);
            BinaryPrimitives.WriteInt32LittleEndian(span[8..], pid);
        }
    }
}
