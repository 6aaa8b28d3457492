using System.Buffers.Binary;
using System.Collections.Concurrent;
using Google.Protobuf;
using RebootlessUpdate.Criu;

namespace RebootlessUpdate.IntegrationTests;

/// <summary>
/// A minimal <see cref="ILazyPageSource"/> for tests: serves a dump's own PE_LAZY pages from its
/// <c>pagemap-N.img</c> and <c>pages-ID.img</c>, parsed here (criu 4.1.1 layout, docs/research/issue-16-page-server.md
/// §3.1: magic pair, then u32-size-prefixed pagemap_head and pagemap_entry messages). Stands in until the
/// library has its own image reader.
/// </summary>
internal sealed class DumpLazyPageSource(string imagesDirectory) : ILazyPageSource
{
    private const uint ImgCommonMagic = 0x54564319;
    private const uint PagemapMagic = 0x56084025;
    private const uint PeLazy = 1 << 1;
    private const uint PePresent = 1 << 2;
    private const int PageSize = ILazyPageSource.PageSize;

    private readonly ConcurrentDictionary<int, (string PagesFile, List<Entry> Entries)> _pagemaps = new();

    /// <summary>How many pages the dump marked PE_LAZY across every process: what the daemon will ask for.</summary>
    public static long CountLazyPages(string imagesDirectory) =>
        Directory.GetFiles(imagesDirectory, "pagemap-*.img")
            .SelectMany(f => Read(f).Entries)
            .Where(e => (e.Flags & PeLazy) != 0)
            .Sum(e => (long)e.Pages);

    public async ValueTask<int> ReadPagesAsync(int pid, ulong address, Memory<byte> destination, CancellationToken cancellationToken)
    {
        var (pagesFile, entries) = _pagemaps.GetOrAdd(pid, p =>
        {
            var path = Path.Combine(imagesDirectory, $"pagemap-{p}.img");
            if (!File.Exists(path))
            {
                throw new LazyPageSourceException($"no pagemap-{p}.img in {imagesDirectory}");
            }

            var (pagesId, list) = Read(path);
            return (Path.Combine(imagesDirectory, $"pages-{pagesId}.img"), list);
        });
        var entry = entries.Find(e => (e.Flags & PeLazy) != 0 && (e.Flags & PePresent) != 0
            && address >= e.Address && address < e.Address + ((ulong)e.Pages * PageSize))
            ?? throw new LazyPageSourceException($"pid {pid}: no lazy pagemap entry covers 0x{address:x}");
        var skip = (int)((address - entry.Address) / PageSize);
        var pages = Math.Min(destination.Length / PageSize, (int)entry.Pages - skip);
        using var file = File.OpenHandle(pagesFile);
        var read = await RandomAccess.ReadAsync(file, destination[..(pages * PageSize)], entry.Offset + ((long)skip * PageSize), cancellationToken);
        return read == pages * PageSize ? pages : throw new LazyPageSourceException($"{pagesFile} ends before the pages of pid {pid} at 0x{address:x}");
    }

    private static (uint PagesId, List<Entry> Entries) Read(string path)
    {
        var bytes = File.ReadAllBytes(path);
        if (BinaryPrimitives.ReadUInt32LittleEndian(bytes) != ImgCommonMagic || BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(4)) != PagemapMagic)
        {
            throw new InvalidDataException($"{path} is not a pagemap image");
        }

        uint pagesId = 0;
        var entries = new List<Entry>();
        long offset = 0; // in pages-ID.img: only PE_PRESENT entries have their pages there
        var at = 8;
        for (var first = true; at < bytes.Length; first = false)
        {
            var size = (int)BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(at));
            var input = new CodedInputStream(bytes, at + 4, size);
            at += 4 + size;
            ulong vaddr = 0;
            uint nrPages = 0, flags = PePresent; // a missing flags field means PE_PRESENT (init_compat_pagemap_entry)
            uint tag;
            while ((tag = input.ReadTag()) != 0)
            {
                switch (WireFormat.GetTagFieldNumber(tag))
                {
                    case 1 when first: pagesId = input.ReadUInt32(); break;
                    case 1: vaddr = input.ReadUInt64(); break;
                    case 2: nrPages = input.ReadUInt32(); break;
                    case 3: flags = input.ReadBool() ? 1u : flags; break; // legacy in_parent means PE_PARENT
                    case 4: flags = input.ReadUInt32(); break;
                    default: input.SkipLastField(); break;
                }
            }

            if (!first)
            {
                entries.Add(new Entry(vaddr, nrPages, flags, offset));
                offset += (flags & PePresent) != 0 ? (long)nrPages * PageSize : 0;
            }
        }

        return (pagesId, entries);
    }

    private sealed record Entry(ulong Address, uint Pages, uint Flags, long Offset);
}
