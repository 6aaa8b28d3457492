using System.Buffers;
using System.Buffers.Binary;
using Google.Protobuf;

namespace RebootlessUpdate.Criu;

/// <summary>
/// Reads CRIU's image framing: a u32 set magic (common or service), the image's own u32 magic, then messages, each a
/// u32 little-endian payload size and that many bytes of protobuf (criu/image.c, pycriu images.py). Sizes are bounded,
/// so a damaged or hostile file costs at most <see cref="MaxMessageSize"/> bytes of memory, never what its prefix claims.
/// </summary>
internal sealed class CriuImageReader : IDisposable
{
    /// <summary>The first magic of CRIU's ordinary images (IMG_COMMON).</summary>
    public const uint CommonMagic = 0x54564319;

    /// <summary>The first magic of CRIU's service images such as the statistics (IMG_SERVICE).</summary>
    public const uint ServiceMagic = 0x55105940;

    /// <summary>
    /// The largest message accepted by default: 64 MiB. The largest message CRIU writes is one process's mm_entry, about
    /// 60 bytes per VMA, so even the kernel's default limit of 65 530 VMAs needs under 4 MiB.
    /// </summary>
    public const int DefaultMaxMessageSize = 64 << 20;

    private readonly Stream _stream;
    private readonly bool _leaveOpen;
    private readonly string _kind;

    /// <summary>Checks the magics at the start of <paramref name="stream"/>.</summary>
    /// <param name="stream">The image, positioned at its start.</param>
    /// <param name="name">What error messages call the file (its path).</param>
    /// <param name="kind">What error messages call the image (e.g. "pagemap").</param>
    /// <param name="magic">The image's own magic (the second u32).</param>
    /// <param name="leaveOpen">Whether disposing leaves <paramref name="stream"/> open.</param>
    /// <param name="maxMessageSize">The largest payload accepted.</param>
    /// <exception cref="InvalidDataException">The stream does not start with the expected magics.</exception>
    public CriuImageReader(Stream stream, string name, string kind, uint magic, bool leaveOpen = false, int maxMessageSize = DefaultMaxMessageSize)
    {
        _stream = stream;
        _leaveOpen = leaveOpen;
        _kind = kind;
        Name = name;
        MaxMessageSize = maxMessageSize;
        Span<byte> head = stackalloc byte[8];
        var got = _stream.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
        if (got < head.Length)
        {
            throw new InvalidDataException($"{name}: {got} bytes is too short for a CRIU {kind} image");
        }

        var magic0 = BinaryPrimitives.ReadUInt32LittleEndian(head);
        var magic1 = BinaryPrimitives.ReadUInt32LittleEndian(head[4..]);
        // crit accepts either set magic in front of an image's own; CRIU writes the service one for stats only.
        if (magic0 is not (CommonMagic or ServiceMagic) || magic1 != magic)
        {
            throw new InvalidDataException($"{name}: not a CRIU {kind} image (magic {magic0:x8} {magic1:x8})");
        }
    }

    /// <summary>What error messages call the file.</summary>
    public string Name { get; }

    /// <summary>The largest payload accepted.</summary>
    public int MaxMessageSize { get; }

    /// <summary>How many messages were read so far.</summary>
    public int Count { get; private set; }

    /// <summary>Opens the image at <paramref name="path"/> and checks its magics.</summary>
    /// <exception cref="FileNotFoundException">There is no such file.</exception>
    /// <exception cref="InvalidDataException">The file does not start with the expected magics.</exception>
    public static CriuImageReader Open(string path, string kind, uint magic, int maxMessageSize = DefaultMaxMessageSize)
    {
        var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 64 * 1024, FileOptions.SequentialScan);
        try
        {
            return new CriuImageReader(stream, path, kind, magic, leaveOpen: false, maxMessageSize);
        }
        catch
        {
            stream.Dispose();
            throw;
        }
    }

    /// <summary>Reads the next message, or returns null at the end of the image.</summary>
    /// <exception cref="InvalidDataException">The image is truncated, a size is out of bounds, or a message is corrupt or lacks required fields.</exception>
    public T? ReadNext<T>(MessageParser<T> parser)
        where T : class, IMessage<T>
    {
        Span<byte> prefix = stackalloc byte[4];
        var got = _stream.ReadAtLeast(prefix, prefix.Length, throwOnEndOfStream: false);
        if (got == 0)
        {
            return null;
        }

        if (got < prefix.Length)
        {
            throw new InvalidDataException($"{Name}: truncated {_kind} image ({got} stray bytes after message {Count})");
        }

        var size = BinaryPrimitives.ReadUInt32LittleEndian(prefix);
        if (size > (uint)MaxMessageSize)
        {
            throw new InvalidDataException($"{Name}: {_kind} message {Count} announces {size} bytes, more than the {MaxMessageSize} accepted");
        }

        // Checked before allocating: a seekable file cannot hold more than what is left of it.
        if (_stream.CanSeek && size > _stream.Length - _stream.Position)
        {
            throw new InvalidDataException($"{Name}: truncated {_kind} image (message {Count} announces {size} bytes, {_stream.Length - _stream.Position} present)");
        }

        var buffer = ArrayPool<byte>.Shared.Rent((int)size);
        try
        {
            var payload = buffer.AsSpan(0, (int)size);
            got = _stream.ReadAtLeast(payload, payload.Length, throwOnEndOfStream: false);
            if (got < payload.Length)
            {
                throw new InvalidDataException($"{Name}: truncated {_kind} image (message {Count} announces {size} bytes, {got} present)");
            }

            T message;
            try
            {
                message = parser.ParseFrom(payload);
            }
            catch (InvalidProtocolBufferException x)
            {
                throw new InvalidDataException($"{Name}: corrupt {_kind} message {Count}: {x.Message}", x);
            }

            // Google.Protobuf does not enforce proto2 `required`.
            if (!message.IsInitialized())
            {
                throw new InvalidDataException($"{Name}: {_kind} message {Count} lacks required fields");
            }

            Count++;
            return message;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Reads the next message, which must be there.</summary>
    /// <exception cref="InvalidDataException">The image ends before it, or <see cref="ReadNext{T}"/> refuses it.</exception>
    public T ReadRequired<T>(MessageParser<T> parser)
        where T : class, IMessage<T> =>
        ReadNext(parser) ?? throw new InvalidDataException($"{Name}: the {_kind} image ends after {Count} messages, before its {typeof(T).Name}");

    /// <summary>Closes the file unless it was left open.</summary>
    public void Dispose()
    {
        if (!_leaveOpen)
        {
            _stream.Dispose();
        }
    }
}

/// <summary>Writes CRIU's image framing, the counterpart of <see cref="CriuImageReader"/>.</summary>
internal static class CriuImageWriter
{
    /// <summary>Writes the common set magic, <paramref name="magic"/>, then each message with its u32 size.</summary>
    public static void Write(Stream stream, uint magic, IEnumerable<IMessage> messages)
    {
        Span<byte> u32 = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(u32, CriuImageReader.CommonMagic);
        stream.Write(u32);
        BinaryPrimitives.WriteUInt32LittleEndian(u32, magic);
        stream.Write(u32);
        foreach (var message in messages)
        {
            var bytes = message.ToByteArray();
            BinaryPrimitives.WriteUInt32LittleEndian(u32, (uint)bytes.Length);
            stream.Write(u32);
            stream.Write(bytes);
        }
    }
}
