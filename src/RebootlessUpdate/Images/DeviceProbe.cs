using System.Buffers.Binary;
using System.Text;
using RebootlessUpdate.Images.Interop;

namespace RebootlessUpdate.Images;

/// <summary>What a device holds, as far as formatting it is concerned.</summary>
internal enum DeviceContentKind
{
    /// <summary>No signature: safe to format.</summary>
    Empty,

    /// <summary>An ext filesystem with our label: use it as is.</summary>
    Ours,

    /// <summary>Anything else: never format.</summary>
    Foreign,
}

/// <summary>
/// Decides whether a device may be formatted. The ext superblock sits at byte
/// 1024: magic 0xEF53 (little-endian) at 1024+56 = 1080, the 16-byte volume
/// label at 1024+120 = 1144. blkid's low-level probe (<c>blkid -p</c>) catches
/// every other filesystem, partition table or RAID/LUKS signature.
/// </summary>
internal static class DeviceProbe
{
    internal const int MagicOffset = 1080;
    internal const int LabelOffset = 1144;
    internal const ushort ExtMagic = 0xEF53;

    internal static (DeviceContentKind Kind, string Description) Probe(string device, string label, string? blkid = "blkid")
    {
        var head = new byte[4096];
        int n;
        using (var handle = Libc.Open(device, Libc.ORdOnly))
        {
            n = RandomAccess.Read(handle, head, 0);
        }

        var sb = Classify(head.AsSpan(0, n), label);
        if (sb.Kind != DeviceContentKind.Empty)
        {
            return sb;
        }

        if (blkid is not null && BlkidSignature(blkid, device) is { } signature)
        {
            return (DeviceContentKind.Foreign, signature);
        }

        return sb;
    }

    /// <summary>Classifies by the ext superblock alone.</summary>
    internal static (DeviceContentKind Kind, string Description) Classify(ReadOnlySpan<byte> head, string label)
    {
        if (head.Length < LabelOffset + 16 || BinaryPrimitives.ReadUInt16LittleEndian(head[MagicOffset..]) != ExtMagic)
        {
            return (DeviceContentKind.Empty, "no ext superblock");
        }

        var raw = head.Slice(LabelOffset, 16);
        var end = raw.IndexOf((byte)0);
        var found = Encoding.UTF8.GetString(end < 0 ? raw : raw[..end]);
        return found == label
            ? (DeviceContentKind.Ours, $"an ext filesystem labelled '{found}'")
            : (DeviceContentKind.Foreign, $"an ext2/3/4 filesystem labelled '{found}'");
    }

    private static string? BlkidSignature(string blkid, string device)
    {
        var (code, output) = Tools.Run(blkid, ["-p", "-o", "export", device], TimeSpan.FromSeconds(30), throwOnMissing: false);
        if (code == 0)
        {
            var fields = output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            return "a signature blkid recognises (" + string.Join(", ", fields.Where(f => f.StartsWith("TYPE=", StringComparison.Ordinal)
                || f.StartsWith("PTTYPE=", StringComparison.Ordinal) || f.StartsWith("LABEL=", StringComparison.Ordinal))) + ")";
        }

        return null; // 2: nothing found; tool missing: the superblock check stands alone
    }
}
