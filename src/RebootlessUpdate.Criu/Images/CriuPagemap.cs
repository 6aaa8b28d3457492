using System.Globalization;
using RebootlessUpdate.Criu.Protocol;

namespace RebootlessUpdate.Criu;

/// <summary>The flags of a pagemap entry: CRIU's <c>PE_*</c> bits (criu/include/pagemap.h, pycriu <c>pmap_flags_map</c>).</summary>
[Flags]
public enum CriuPageState
{
    /// <summary>No flag: pages recorded as neither here, in the parent nor lazy.</summary>
    None = 0,

    /// <summary><c>PE_PARENT</c>: the pages are in the parent dump (the images folder's <c>parent</c> link).</summary>
    Parent = 1,

    /// <summary><c>PE_LAZY</c>: a lazy restore leaves the pages to the lazy-pages daemon.</summary>
    Lazy = 2,

    /// <summary><c>PE_PRESENT</c>: the pages' bytes are in this folder's pages image.</summary>
    Present = 4,
}

/// <summary>One entry of a pagemap: a run of pages of a process's memory and where they are.</summary>
/// <param name="Address">The first page's address in the process, page-aligned.</param>
/// <param name="PageCount">How many pages it covers, one at least.</param>
/// <param name="Flags">Where the pages are.</param>
/// <param name="DataOffset">
/// Where the pages' bytes start in the folder's pages image when <paramref name="Flags"/> has
/// <see cref="CriuPageState.Present"/>; null otherwise.
/// </param>
public readonly record struct CriuPagemapEntry(ulong Address, ulong PageCount, CriuPageState Flags, long? DataOffset)
{
    /// <summary>The address just past the last page.</summary>
    public ulong End => Address + (PageCount * ILazyPageSource.PageSize);

    /// <summary>Whether <paramref name="address"/> lies in the entry.</summary>
    /// <param name="address">An address in the process.</param>
    public bool Covers(ulong address) => address >= Address && address < End;
}

/// <summary>
/// A process's pagemap image (<c>pagemap-PID.img</c>): the pages a dump recorded, sorted by address, and where each run's
/// bytes are: in this folder's <c>pages-ID.img</c>, in the parent dump, or with a lazy-pages daemon.
/// </summary>
public sealed class CriuPagemap
{
    /// <summary>The magic of a pagemap image (after the common set magic).</summary>
    public const uint Magic = 0x56084025;

    private const string Kind = "pagemap";
    private const CriuPageState KnownFlags = CriuPageState.Parent | CriuPageState.Lazy | CriuPageState.Present;

    /// <summary>The largest page count an entry may have: one whose end still fits in 64 bits.</summary>
    private const ulong MaxPageCount = ulong.MaxValue / ILazyPageSource.PageSize;

    private readonly CriuPagemapEntry[] _entries;

    private CriuPagemap(string path, uint pagesId, CriuPagemapEntry[] entries, bool wideCounts)
    {
        Path = path;
        PagesId = pagesId;
        _entries = entries;
        WideCounts = wideCounts;
    }

    /// <summary>The file this pagemap was read from.</summary>
    public string Path { get; }

    /// <summary>The id of the pages image that holds the present pages' bytes.</summary>
    public uint PagesId { get; }

    /// <summary>The file name of the pages image, <c>pages-ID.img</c>, in the same folder.</summary>
    public string PagesFileName => PagesFileNameOf(PagesId);

    /// <summary>The entries, sorted by address and not overlapping.</summary>
    public IReadOnlyList<CriuPagemapEntry> Entries => _entries;

    /// <summary>Whether the entries carry their page counts as criu 4.2 writes them (u64 field 5), so a rewrite can do the same.</summary>
    internal bool WideCounts { get; }

    /// <summary>The file name of the pagemap image of process <paramref name="pid"/>.</summary>
    /// <param name="pid">The process's pid as the images name it.</param>
    public static string FileName(int pid) => string.Create(CultureInfo.InvariantCulture, $"pagemap-{pid}.img");

    /// <summary>Reads the pagemap of process <paramref name="pid"/> in <paramref name="imagesDirectory"/>.</summary>
    /// <param name="imagesDirectory">The images folder of a dump.</param>
    /// <param name="pid">The process's pid as the images name it.</param>
    /// <exception cref="FileNotFoundException">The folder has no pagemap for that pid.</exception>
    /// <exception cref="InvalidDataException">
    /// The file is not a readable pagemap, or its entries are unsorted, overlapping, unaligned or carry unknown flags.
    /// </exception>
    public static CriuPagemap Read(string imagesDirectory, int pid)
    {
        ArgumentException.ThrowIfNullOrEmpty(imagesDirectory);
        using var image = CriuImageReader.Open(System.IO.Path.Combine(imagesDirectory, FileName(pid)), Kind, Magic);
        return Parse(image);
    }

    /// <summary>Returns the index of the entry that covers <paramref name="address"/>, or -1 when none does.</summary>
    /// <param name="address">An address in the process.</param>
    public int IndexOf(ulong address)
    {
        int low = 0, high = _entries.Length - 1;
        while (low <= high)
        {
            var mid = low + ((high - low) / 2);
            if (address < _entries[mid].Address)
            {
                high = mid - 1;
            }
            else if (address >= _entries[mid].End)
            {
                low = mid + 1;
            }
            else
            {
                return mid;
            }
        }

        return -1;
    }

    /// <summary>
    /// Writes a pagemap image of <paramref name="entries"/> (their addresses, counts and flags) to <paramref name="stream"/>,
    /// the counts in criu 4.2's u64 field when <paramref name="wideCounts"/>, else in 4.1.1's u32 one.
    /// </summary>
    /// <exception cref="OverflowException">An entry has more pages than 4.1.1's field holds.</exception>
    internal static void Write(Stream stream, uint pagesId, IEnumerable<CriuPagemapEntry> entries, bool wideCounts) =>
        CriuImageWriter.Write(stream, Magic, [new pagemap_head { PagesId = pagesId }, .. entries.Select(e => ToMessage(e, wideCounts))]);

    internal static string PagesFileNameOf(uint pagesId) => string.Create(CultureInfo.InvariantCulture, $"pages-{pagesId}.img");

    internal static CriuPagemap Parse(Stream stream, string name)
    {
        using var image = new CriuImageReader(stream, name, Kind, Magic, leaveOpen: true);
        return Parse(image);
    }

    private static CriuPagemap Parse(CriuImageReader image)
    {
        var head = image.ReadRequired(pagemap_head.Parser);
        var entries = new List<CriuPagemapEntry>();
        var offset = 0L;
        var wide = false;
        while (image.ReadNext(pagemap_entry.Parser) is { } e)
        {
            wide |= e.HasNrPages;
            var entry = ToEntry(e, image.Name, entries.Count, offset);
            if (entries.Count > 0 && entry.Address < entries[^1].End)
            {
                throw new InvalidDataException(
                    $"{image.Name}: pagemap entry {entries.Count} at {entry.Address:x} starts before the end of the one before it ({entries[^1].End:x}): entries must be sorted and not overlap");
            }

            if (entry.DataOffset is not null)
            {
                // The running sum over present entries (criu/pagemap.c advances pi_off only for them).
                offset += (long)(entry.PageCount * ILazyPageSource.PageSize);
            }

            entries.Add(entry);
        }

        return new CriuPagemap(image.Name, head.PagesId, [.. entries], wide);
    }

    private static pagemap_entry ToMessage(CriuPagemapEntry e, bool wideCounts)
    {
        var message = new pagemap_entry { Vaddr = e.Address, Flags = (uint)e.Flags };
        if (wideCounts)
        {
            message.CompatNrPages = 0;
            message.NrPages = e.PageCount;
        }
        else
        {
            message.CompatNrPages = checked((uint)e.PageCount);
        }

        return message;
    }

    private static CriuPagemapEntry ToEntry(pagemap_entry e, string name, int index, long offset)
    {
        // criu 4.2 moved the count to a u64 field 5 and writes field 2 as 0; 4.1.1 has only field 2.
        var pages = e.HasNrPages ? e.NrPages : e.HasCompatNrPages ? e.CompatNrPages : 0;
        if (pages is 0 or > MaxPageCount || e.Vaddr > ulong.MaxValue - (pages * ILazyPageSource.PageSize))
        {
            throw new InvalidDataException($"{name}: pagemap entry {index} at {e.Vaddr:x} has an impossible page count {pages}");
        }

        if (e.Vaddr % ILazyPageSource.PageSize != 0)
        {
            throw new InvalidDataException($"{name}: pagemap entry {index} at {e.Vaddr:x} is not page-aligned");
        }

        // Images older than the flags say in_parent; without either the pages are here (criu init_compat_pagemap_entry).
        var flags = e.HasFlags ? (CriuPageState)e.Flags
            : e.HasInParent && e.InParent ? CriuPageState.Parent
            : CriuPageState.Present;
        if ((flags & ~KnownFlags) != 0)
        {
            throw new InvalidDataException($"{name}: pagemap entry {index} at {e.Vaddr:x} has unknown flags {e.Flags:x}");
        }

        var present = (flags & CriuPageState.Present) != 0;
        if (present && pages * ILazyPageSource.PageSize > (ulong)(long.MaxValue - offset))
        {
            throw new InvalidDataException($"{name}: pagemap entry {index} at {e.Vaddr:x} lies past any file's end");
        }

        return new CriuPagemapEntry(e.Vaddr, pages, flags, present ? offset : null);
    }
}
