using System.Globalization;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Criu.Protocol;

namespace RebootlessUpdate.TestSupport;

/// <summary>One pagemap entry as a test writes it: the raw fields, so that both CRIU layouts and legacy images can be built.</summary>
/// <param name="Address">vaddr.</param>
/// <param name="Pages">The page count.</param>
/// <param name="Flags">flags (PE_*), or null to leave the field out.</param>
/// <param name="InParent">The legacy in_parent field, or null to leave it out.</param>
public readonly record struct PagemapRecord(ulong Address, ulong Pages, uint? Flags, bool? InParent = null);

/// <summary>Writes CRIU pagemap and pages images for tests, and synthesises pre-dump parent chains out of a real full dump.</summary>
public static class CriuImageFiles
{
    /// <summary>The size of a page.</summary>
    public const int PageSize = ILazyPageSource.PageSize;

    /// <summary>
    /// The bytes of a pagemap image: the magics, the head, then the entries. <paramref name="criu42"/> writes the count
    /// as criu 4.2 does (field 2 = 0, field 5 = the count); otherwise as criu 4.1.1 (field 2).
    /// </summary>
    public static byte[] Pagemap(uint pagesId, IEnumerable<PagemapRecord> entries, bool criu42 = false)
    {
        var stream = new MemoryStream();
        CriuImageWriter.Write(stream, CriuPagemap.Magic, [new pagemap_head { PagesId = pagesId }, .. entries.Select(e => Entry(e, criu42))]);
        return stream.ToArray();
    }

    /// <summary>Writes <c>pagemap-PID.img</c> into <paramref name="folder"/>.</summary>
    public static void WritePagemap(string folder, int pid, uint pagesId, IEnumerable<PagemapRecord> entries, bool criu42 = false) =>
        File.WriteAllBytes(Path.Combine(folder, CriuPagemap.FileName(pid)), Pagemap(pagesId, entries, criu42));

    /// <summary>A page whose every 8 bytes hold <paramref name="tag"/>: tells apart which page a test got.</summary>
    public static byte[] TaggedPage(ulong tag)
    {
        var page = new byte[PageSize];
        for (var i = 0; i < PageSize; i += 8)
        {
            BitConverter.TryWriteBytes(page.AsSpan(i), tag);
        }

        return page;
    }

    /// <summary>
    /// Turns the full dump in <paramref name="folder"/> into a final dump on a pre-dump, as CRIU would have written them
    /// with memory tracking: the present pages <paramref name="move"/> picks (by pid and page address) go to a new sibling
    /// folder <c>FOLDER-pre</c> (its pagemap and pages image, with their original flags), the final dump marks them
    /// PE_PARENT only, and <c>FOLDER/parent</c> links to <c>../FOLDER-pre</c>. Pages ids stay as they were.
    /// </summary>
    /// <returns>The parent folder and how many pages moved into it.</returns>
    public static (string ParentFolder, long PagesMoved) MovePagesToParent(string folder, Func<int, ulong, bool> move)
    {
        folder = Path.TrimEndingDirectorySeparator(Path.GetFullPath(folder));
        if (Path.Exists(Path.Combine(folder, "parent")))
        {
            throw new InvalidOperationException($"{folder} already has a parent");
        }

        var parent = Directory.CreateDirectory(folder + "-pre").FullName;
        long moved = 0;
        foreach (var file in Directory.GetFiles(folder, "pagemap-*.img"))
        {
            // Shared memory has pagemaps too (pagemap-shmem-ID.img); only processes' ones move.
            if (int.TryParse(Path.GetFileName(file)["pagemap-".Length..^".img".Length], NumberStyles.None, CultureInfo.InvariantCulture, out var pid))
            {
                moved += Split(folder, parent, pid, move);
            }
        }

        File.CreateSymbolicLink(Path.Combine(folder, "parent"), "../" + Path.GetFileName(parent));
        return (parent, moved);
    }

    private static long Split(string folder, string parent, int pid, Func<int, ulong, bool> move)
    {
        var pagemap = CriuPagemap.Read(folder, pid);
        var pagesFile = Path.Combine(folder, pagemap.PagesFileName);
        var source = File.ReadAllBytes(pagesFile);
        var keep = new List<PagemapRecord>();
        var up = new List<PagemapRecord>();
        using var keepPages = new MemoryStream();
        using var upPages = new MemoryStream();
        long moved = 0;
        foreach (var e in pagemap.Entries)
        {
            if (e.DataOffset is not { } offset)
            {
                keep.Add(new PagemapRecord(e.Address, e.PageCount, (uint)e.Flags));
                continue;
            }

            // Runs of pages that go the same way: each becomes an entry here or in the parent.
            for (ulong i = 0; i < e.PageCount;)
            {
                var address = e.Address + (i * PageSize);
                var up1 = move(pid, address);
                var n = 1UL;
                while (i + n < e.PageCount && move(pid, address + (n * PageSize)) == up1)
                {
                    n++;
                }

                var bytes = source.AsSpan((int)(offset + (long)(i * PageSize)), (int)(n * PageSize));
                if (up1)
                {
                    up.Add(new PagemapRecord(address, n, (uint)e.Flags));
                    upPages.Write(bytes);
                    keep.Add(new PagemapRecord(address, n, (uint)CriuPageState.Parent));
                    moved += (long)n;
                }
                else
                {
                    keep.Add(new PagemapRecord(address, n, (uint)e.Flags));
                    keepPages.Write(bytes);
                }

                i += n;
            }
        }

        WritePagemap(folder, pid, pagemap.PagesId, keep);
        File.WriteAllBytes(pagesFile, keepPages.ToArray());
        WritePagemap(parent, pid, pagemap.PagesId, up);
        File.WriteAllBytes(Path.Combine(parent, pagemap.PagesFileName), upPages.ToArray());
        return moved;
    }

    private static pagemap_entry Entry(PagemapRecord e, bool criu42)
    {
        var entry = new pagemap_entry { Vaddr = e.Address };
        if (criu42)
        {
            entry.CompatNrPages = 0;
            entry.NrPages = e.Pages;
        }
        else
        {
            entry.CompatNrPages = checked((uint)e.Pages);
        }

        if (e.Flags is { } flags)
        {
            entry.Flags = flags;
        }

        if (e.InParent is { } inParent)
        {
            entry.InParent = inParent;
        }

        return entry;
    }
}
