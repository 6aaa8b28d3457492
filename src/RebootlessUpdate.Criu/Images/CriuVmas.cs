using System.Globalization;
using RebootlessUpdate.Criu.Protocol;

namespace RebootlessUpdate.Criu;

/// <summary>One VMA of a dumped process, as <c>mm-PID.img</c> records it.</summary>
/// <param name="Start">Its first address.</param>
/// <param name="End">The address just past it.</param>
/// <param name="Protection">Its mmap protection (PROT_*); 0 is PROT_NONE.</param>
/// <param name="Flags">Its mmap flags (MAP_PRIVATE, MAP_ANONYMOUS, MAP_LOCKED, ...).</param>
/// <param name="Status">CRIU's VMA_* status bits (criu/include/image.h: regular, vdso, vsyscall, aio ring, ...).</param>
internal readonly record struct CriuVma(ulong Start, ulong End, uint Protection, uint Flags, uint Status);

/// <summary>
/// Reads the VMAs of a dumped process (<c>mm-PID.img</c>): what a pagemap rewrite needs to tell which pages may be
/// left lazy (criu/include/vma.h <c>vma_entry_can_be_lazy</c>).
/// </summary>
internal static class CriuVmas
{
    /// <summary>The magic of an mm image (after the common set magic).</summary>
    public const uint Magic = 0x57492820;

    private const string Kind = "mm";

    /// <summary>The file name of the mm image of process <paramref name="pid"/>.</summary>
    public static string FileName(int pid) => string.Create(CultureInfo.InvariantCulture, $"mm-{pid}.img");

    /// <summary>Reads the VMAs of process <paramref name="pid"/> in <paramref name="imagesDirectory"/>, sorted by address.</summary>
    /// <exception cref="FileNotFoundException">The folder has no mm image for that pid.</exception>
    /// <exception cref="InvalidDataException">The file is not a readable mm image, or its VMAs are empty, unsorted or overlapping.</exception>
    public static IReadOnlyList<CriuVma> Read(string imagesDirectory, int pid)
    {
        using var image = CriuImageReader.Open(Path.Combine(imagesDirectory, FileName(pid)), Kind, Magic);
        return Parse(image);
    }

    internal static IReadOnlyList<CriuVma> Parse(Stream stream, string name)
    {
        using var image = new CriuImageReader(stream, name, Kind, Magic, leaveOpen: true);
        return Parse(image);
    }

    private static List<CriuVma> Parse(CriuImageReader image)
    {
        var mm = image.ReadRequired(mm_entry.Parser);
        var vmas = new List<CriuVma>(mm.Vmas.Count);
        foreach (var v in mm.Vmas)
        {
            if (v.End <= v.Start || (vmas.Count > 0 && v.Start < vmas[^1].End))
            {
                throw new InvalidDataException($"{image.Name}: VMA {vmas.Count} [{v.Start:x}, {v.End:x}) is empty or not after the one before it");
            }

            vmas.Add(new CriuVma(v.Start, v.End, v.Prot, v.Flags, v.Status));
        }

        return vmas;
    }
}
