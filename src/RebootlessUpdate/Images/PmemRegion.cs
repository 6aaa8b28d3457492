using System.Globalization;

namespace RebootlessUpdate.Images;

/// <summary>
/// A legacy persistent-memory region (kernel booted with <c>memmap=SIZE!START</c>)
/// and the block device that exposes it.
/// </summary>
/// <param name="Device">The block device, e.g. <c>/dev/pmem0</c>.</param>
/// <param name="PhysicalStart">Physical start address of the region.</param>
/// <param name="Size">Size of the region in bytes.</param>
public sealed record PmemRegion(string Device, ulong PhysicalStart, ulong Size)
{
    /// <summary>
    /// The <c>memmap=</c> value that describes the region, e.g. <c>64M!512M</c>:
    /// the next kernel must get it again for the region (and the store in it) to
    /// survive kexec.
    /// </summary>
    public string MemmapFragment => $"{FormatSize(Size)}!{FormatSize(PhysicalStart)}";

    /// <summary>
    /// Formats with the largest of G, M, K that divides exactly (the kernel's
    /// memparse suffixes), so the fragment reads the way an operator wrote it.
    /// </summary>
    internal static string FormatSize(ulong bytes)
    {
        foreach (var (suffix, unit) in new[] { ("G", 1UL << 30), ("M", 1UL << 20), ("K", 1UL << 10) })
        {
            if (bytes != 0 && bytes % unit == 0)
            {
                return (bytes / unit).ToString(CultureInfo.InvariantCulture) + suffix;
            }
        }

        return bytes.ToString(CultureInfo.InvariantCulture);
    }

    /// <summary>
    /// Finds the legacy-pmem regions: "Persistent Memory (legacy)" ranges of
    /// <c>/proc/iomem</c> (needs root: others see zeros), matched with
    /// <c>/sys/block/pmemN</c> through its namespace's <c>resource</c> (start) and
    /// <c>size</c>.
    /// </summary>
    /// <exception cref="ImageStoreException">/proc/iomem cannot be read.</exception>
    public static IReadOnlyList<PmemRegion> Discover() => Discover("/proc/iomem", "/sys/block", "/dev");

    internal static IReadOnlyList<PmemRegion> Discover(string iomem, string sysBlock, string dev)
    {
        var ranges = ParseIomem(File.ReadAllLines(iomem));
        var regions = new List<PmemRegion>();
        if (!Directory.Exists(sysBlock))
        {
            return regions;
        }

        foreach (var block in Directory.EnumerateDirectories(sysBlock, "pmem*").Order(StringComparer.Ordinal))
        {
            var name = Path.GetFileName(block);
            var device = Path.Combine(block, "device");
            var start = ReadNumber(Path.Combine(device, "resource"));
            var size = ReadNumber(Path.Combine(device, "size"))
                ?? (ReadNumber(Path.Combine(block, "size")) is { } sectors ? sectors * 512 : null);
            if (size is null)
            {
                continue;
            }

            // Older kernels lack the namespace's resource file: match by size then.
            var match = ranges.FirstOrDefault(r => start is { } s ? s >= r.Start && s + size <= r.End + 1 : r.End - r.Start + 1 == size);
            if (match != default)
            {
                regions.Add(new PmemRegion(Path.Combine(dev, name), start ?? match.Start, size.Value));
            }
        }

        return regions;
    }

    /// <summary>The "Persistent Memory (legacy)" ranges (inclusive ends) of an iomem listing.</summary>
    internal static List<(ulong Start, ulong End)> ParseIomem(IEnumerable<string> lines)
    {
        var ranges = new List<(ulong, ulong)>();
        foreach (var line in lines)
        {
            var colon = line.IndexOf(" : ", StringComparison.Ordinal);
            if (colon < 0 || !line[(colon + 3)..].Trim().Equals("Persistent Memory (legacy)", StringComparison.Ordinal))
            {
                continue;
            }

            var range = line[..colon].Trim().Split('-');
            if (range.Length == 2
                && ulong.TryParse(range[0], NumberStyles.HexNumber, CultureInfo.InvariantCulture, out var start)
                && ulong.TryParse(range[1], NumberStyles.HexNumber, CultureInfo.InvariantCulture, out var end)
                && end > start)
            {
                ranges.Add((start, end));
            }
        }

        return ranges;
    }

    private static ulong? ReadNumber(string file)
    {
        if (!File.Exists(file))
        {
            return null;
        }

        var text = File.ReadAllText(file).Trim();
        return text.StartsWith("0x", StringComparison.OrdinalIgnoreCase)
            ? ulong.TryParse(text[2..], NumberStyles.HexNumber, CultureInfo.InvariantCulture, out var hex) ? hex : null
            : ulong.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var dec) ? dec : null;
    }
}
