using System.Buffers.Binary;

namespace RebootlessUpdate.Criu;

/// <summary>
/// CRIU's <c>struct page_server_iov</c> (criu/page-xfer.c), the header of every page-server message: 24 bytes,
/// host byte order (little-endian on x86-64), no padding in criu 4.1.1, checked against the binary's
/// <c>request_remote_pages</c> (docs/research/issue-16-page-server.md §1.2).
/// </summary>
internal readonly record struct PageServerIov(uint Command, uint PageCount, ulong Address, ulong DestinationId)
{
    public const int Size = 24;

    /// <summary>PS_IOV_ADD_F: a pagemap entry, pages follow when PE_PRESENT is in the flags.</summary>
    public const uint AddF = 6;

    /// <summary>PS_IOV_GET: the lazy-pages daemon asks for PageCount pages at Address of the pid in DestinationId.</summary>
    public const uint Get = 7;

    /// <summary>PS_IOV_CLOSE: the end of the session, answered with an int32 status.</summary>
    public const uint Close = 0x1023;

    /// <summary>PS_IOV_FORCE_CLOSE: the same, sent when criu was given <c>--ps-socket</c>.</summary>
    public const uint ForceClose = 0x1024;

    /// <summary>PE_PRESENT in a command's high 16 bits (<c>encode_ps_cmd</c>, <c>PS_CMD_BITS 16</c>).</summary>
    public const uint PresentFlag = 4 << 16;

    /// <summary>The header of a reply to a GET, as CRIU's own <c>page_server_get_pages</c> writes it.</summary>
    public static PageServerIov PagesReply(PageServerIov request, int pages) =>
        new(AddF | PresentFlag, (uint)pages, request.Address, request.DestinationId);

    public static PageServerIov Read(ReadOnlySpan<byte> source) => new(
        BinaryPrimitives.ReadUInt32LittleEndian(source),
        BinaryPrimitives.ReadUInt32LittleEndian(source[4..]),
        BinaryPrimitives.ReadUInt64LittleEndian(source[8..]),
        BinaryPrimitives.ReadUInt64LittleEndian(source[16..]));

    public void Write(Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(destination, Command);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[4..], PageCount);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[8..], Address);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[16..], DestinationId);
    }
}
