using System.Buffers.Binary;
using Google.Protobuf;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Criu.Protocol;

namespace RebootlessUpdate.UnitTests.Criu;

/// <summary>CRIU's image framing (magic pair, then u32-size-prefixed messages), over hand-built bytes.</summary>
public class CriuImageReaderTests
{
    private const uint Magic = CriuPagemap.Magic;

    private static byte[] Bytes(params uint[] words)
    {
        var bytes = new byte[words.Length * 4];
        for (var i = 0; i < words.Length; i++)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(i * 4), words[i]);
        }

        return bytes;
    }

    private static byte[] Framed(uint first, params IMessage[] messages)
    {
        var stream = new MemoryStream();
        stream.Write(Bytes(first, Magic));
        foreach (var m in messages)
        {
            var payload = m.ToByteArray();
            stream.Write(Bytes((uint)payload.Length));
            stream.Write(payload);
        }

        return stream.ToArray();
    }

    private static CriuImageReader Reader(byte[] bytes, int max = CriuImageReader.DefaultMaxMessageSize) =>
        new(new MemoryStream(bytes), "test.img", "pagemap", Magic, maxMessageSize: max);

    [TestCase(CriuImageReader.CommonMagic)]
    [TestCase(CriuImageReader.ServiceMagic)]
    public void Messages_come_back_in_order_until_the_end_of_the_file(uint setMagic)
    {
        using var reader = Reader(Framed(setMagic, new pagemap_head { PagesId = 7 }, new pagemap_entry { Vaddr = 0x1000, CompatNrPages = 2 }));

        Assert.Multiple(() =>
        {
            Assert.That(reader.ReadRequired(pagemap_head.Parser).PagesId, Is.EqualTo(7));
            Assert.That(reader.ReadNext(pagemap_entry.Parser)!.Vaddr, Is.EqualTo(0x1000));
            Assert.That(reader.ReadNext(pagemap_entry.Parser), Is.Null);
            Assert.That(reader.Count, Is.EqualTo(2));
        });
    }

    [Test]
    public void The_writer_writes_what_the_reader_reads()
    {
        var stream = new MemoryStream();
        CriuImageWriter.Write(stream, Magic, [new pagemap_head { PagesId = 3 }]);

        Assert.That(stream.ToArray(), Is.EqualTo(Framed(CriuImageReader.CommonMagic, new pagemap_head { PagesId = 3 })));
    }

    [Test]
    public void A_file_with_other_magics_or_too_short_for_them_is_refused()
    {
        Assert.Multiple(() =>
        {
            Assert.That(() => Reader(Bytes(CriuImageReader.CommonMagic, CriuProcessTree.PstreeMagic)),
                Throws.TypeOf<InvalidDataException>().With.Message.EqualTo("test.img: not a CRIU pagemap image (magic 54564319 50273030)"));
            Assert.That(() => Reader(Bytes(0x12345678, Magic)), Throws.TypeOf<InvalidDataException>().With.Message.Contains("not a CRIU pagemap image"));
            Assert.That(() => Reader([0x19, 0x43, 0x56]), Throws.TypeOf<InvalidDataException>().With.Message.Contains("3 bytes is too short"));
        });
    }

    [Test]
    public void A_truncated_size_or_payload_is_refused_with_the_file_and_message_number()
    {
        var whole = Framed(CriuImageReader.CommonMagic, new pagemap_head { PagesId = 7 }, new pagemap_entry { Vaddr = 0x1000, CompatNrPages = 2 });

        using var cutPayload = Reader(whole[..^1]);
        cutPayload.ReadRequired(pagemap_head.Parser);
        using var cutSize = Reader([.. whole, 1, 0]);
        cutSize.ReadRequired(pagemap_head.Parser);
        cutSize.ReadRequired(pagemap_entry.Parser);

        Assert.Multiple(() =>
        {
            Assert.That(() => cutPayload.ReadNext(pagemap_entry.Parser), Throws.TypeOf<InvalidDataException>().With.Message.StartsWith("test.img: truncated pagemap image (message 1 announces"));
            Assert.That(() => cutSize.ReadNext(pagemap_entry.Parser), Throws.TypeOf<InvalidDataException>().With.Message.EqualTo("test.img: truncated pagemap image (2 stray bytes after message 2)"));
        });
    }

    [Test]
    public void A_hostile_size_prefix_is_refused_before_anything_is_allocated_even_on_a_pipe()
    {
        var hostile = Bytes(CriuImageReader.CommonMagic, Magic, 0xffff_fff0);
        var justOverTheBound = Bytes(CriuImageReader.CommonMagic, Magic, 1025);
        using var seekable = Reader(hostile);
        using var pipe = new CriuImageReader(new UnseekableStream(hostile), "pipe", "pagemap", Magic);
        using var small = Reader(justOverTheBound, max: 1024);

        Assert.Multiple(() =>
        {
            Assert.That(() => seekable.ReadNext(pagemap_head.Parser), Throws.TypeOf<InvalidDataException>().With.Message.Contains("announces 4294967280 bytes, more than the 67108864 accepted"));
            Assert.That(() => pipe.ReadNext(pagemap_head.Parser), Throws.TypeOf<InvalidDataException>().With.Message.Contains("more than the 67108864 accepted"));
            Assert.That(() => small.ReadNext(pagemap_head.Parser), Throws.TypeOf<InvalidDataException>().With.Message.Contains("announces 1025 bytes, more than the 1024 accepted"));
        });
    }

    [Test]
    public void A_size_past_the_end_of_a_file_is_refused_as_truncated_without_reading()
    {
        using var reader = Reader(Bytes(CriuImageReader.CommonMagic, Magic, 60 << 20, 0));

        Assert.That(() => reader.ReadNext(pagemap_head.Parser), Throws.TypeOf<InvalidDataException>().With.Message.Contains("message 0 announces 62914560 bytes, 4 present"));
    }

    [Test]
    public void A_corrupt_message_or_one_without_its_required_fields_is_refused()
    {
        using var corrupt = Reader([.. Bytes(CriuImageReader.CommonMagic, Magic, 2), 0xff, 0xff]);
        using var incomplete = Reader(Framed(CriuImageReader.CommonMagic, new pagemap_entry { CompatNrPages = 1 }));
        using var empty = Reader(Framed(CriuImageReader.CommonMagic));

        Assert.Multiple(() =>
        {
            Assert.That(() => corrupt.ReadNext(pagemap_head.Parser), Throws.TypeOf<InvalidDataException>().With.Message.StartsWith("test.img: corrupt pagemap message 0"));
            Assert.That(() => incomplete.ReadNext(pagemap_entry.Parser), Throws.TypeOf<InvalidDataException>().With.Message.EqualTo("test.img: pagemap message 0 lacks required fields"));
            Assert.That(() => empty.ReadRequired(pagemap_head.Parser), Throws.TypeOf<InvalidDataException>().With.Message.EqualTo("test.img: the pagemap image ends after 0 messages, before its pagemap_head"));
        });
    }

    /// <summary>A stream that cannot seek, like a pipe: the reader cannot compare a size with the file's length.</summary>
    private sealed class UnseekableStream(byte[] bytes) : MemoryStream(bytes)
    {
        public override bool CanSeek => false;

        public override long Length => throw new NotSupportedException();

        public override long Position
        {
            get => throw new NotSupportedException();
            set => throw new NotSupportedException();
        }
    }
}
