using System.Text.RegularExpressions;
using RebootlessUpdate.Criu;

namespace RebootlessUpdate.Images;

/// <summary>
/// Which files of a set carry chunk hashes (CRIU's page images, <c>pages-N.img</c>, in any dump folder), and
/// what a manifest entry's chunk hashes must look like to be believed.
/// </summary>
internal static partial class ChunkedFiles
{
    /// <summary>The most chunks an entry may list: 64 Ki chunks of 1 MiB is a 64 GiB page image.</summary>
    private const int MaxChunks = 1 << 16;

    [GeneratedRegex(@"^pages-[0-9]+\.img$", RegexOptions.CultureInvariant)]
    private static partial Regex PageImageName();

    /// <summary>Whether the file at <paramref name="relative"/> (a set path) gets chunk hashes when sealed.</summary>
    internal static bool Wanted(string relative) => PageImageName().IsMatch(relative[(relative.LastIndexOf('/') + 1)..]);

    /// <summary>What is wrong with <paramref name="entry"/>'s chunk hashes, or null when it has none or they are well formed.</summary>
    internal static string? Check(ManifestEntry entry)
    {
        if (entry.ChunkXxh128 is null && entry.ChunkSize is null)
        {
            return null;
        }

        if (entry.ChunkXxh128 is not { } chunks || entry.ChunkSize is not { } size || entry.SymlinkTarget is not null)
        {
            return "has chunk hashes without a chunk size, or the other way round, or on a link";
        }

        if (size < ILazyPageSource.PageSize || size > 64 << 20 || (size & (size - 1)) != 0)
        {
            return $"has chunk size {size}, not a power of two from 4 KiB to 64 MiB";
        }

        var expected = (entry.Size + size - 1) / size;
        if (expected > MaxChunks || chunks.Count != expected)
        {
            return $"lists {chunks.Count} chunk hashes for {entry.Size} bytes in chunks of {size} (expected {expected})";
        }

        return chunks.All(ManifestFormat.IsHash) ? null : "has a chunk hash that is not 32 lowercase hex digits";
    }

    /// <summary>The index of the first chunk whose hash differs between the two lists (a length difference counts), or -1.</summary>
    internal static int FirstMismatch(IReadOnlyList<string> recorded, IReadOnlyList<string> actual)
    {
        var n = Math.Min(recorded.Count, actual.Count);
        for (var i = 0; i < n; i++)
        {
            if (!string.Equals(recorded[i], actual[i], StringComparison.Ordinal))
            {
                return i;
            }
        }

        return recorded.Count == actual.Count ? -1 : n;
    }
}
