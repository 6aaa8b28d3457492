namespace RebootlessUpdate.Criu;

/// <summary>What <see cref="CriuLazyParentRewrite.Rewrite"/> made of one pagemap.</summary>
/// <param name="Entries">The rewritten entries, sorted and not overlapping, present ones at their original data offsets.</param>
/// <param name="PagesMadeLazy">Parent pages now left to the lazy-pages daemon (PE_LAZY only).</param>
/// <param name="PagesLeftInParent">Parent pages outside lazy-capable VMAs, still PE_PARENT: CRIU restores them itself.</param>
internal sealed record CriuPagemapRewrite(IReadOnlyList<CriuPagemapEntry> Entries, long PagesMadeLazy, long PagesLeftInParent);

/// <summary>
/// Turns the pages a final dump left in its pre-dump parent (PE_PARENT) into pages a lazy restore leaves to its daemon
/// (PE_LAZY only), wherever they lie in a VMA that CRIU registers with userfaultfd. Memo 16 §3.4: PE_LAZY alone is what
/// <c>criu dump --lazy-pages</c> writes for pages it kept out of the image; PE_PARENT|PE_LAZY would reach a parent
/// page_read without <c>io_complete</c> and hang the faulting thread, so it is never written.
/// </summary>
/// <remarks>
/// Only for a restore whose <c>criu lazy-pages</c> runs with <c>--page-server</c> against a server that resolves the
/// parent chain itself: a full restore or a local daemon would read a PE_LAZY-only entry at the pages image's current
/// offset, which holds other pages' bytes. Neither flag set advances that offset (criu/pagemap.c
/// <c>skip_pagemap_pages</c>), so the pages image stays valid byte for byte.
/// </remarks>
internal static class CriuLazyParentRewrite
{
    // Kernel mmap flags (uapi asm-generic/mman-common.h, mman.h; the same on x86-64 and arm64).
    internal const uint MapPrivate = 0x02;
    internal const uint MapAnonymous = 0x20;
    internal const uint MapLocked = 0x2000;
    internal const uint MapHugetlb = 0x40000;

    // CRIU's VMA status bits (criu/include/image.h; pycriu 4.1.1 pb2dict mmap_status_map).
    internal const uint VmaAreaVsyscall = 1 << 2;
    internal const uint VmaAreaVdso = 1 << 3;
    internal const uint VmaAreaVvar = 1 << 12;
    internal const uint VmaAreaAioRing = 1 << 13;
    internal const uint VmaAreaShadowStack = 1 << 15;
    internal const uint VmaUnsupported = 1u << 31;

    private const uint NotLazyStatus = VmaAreaVsyscall | VmaAreaVdso | VmaAreaVvar | VmaAreaAioRing | VmaAreaShadowStack | VmaUnsupported;

    /// <summary>
    /// Whether pages of <paramref name="vma"/> may be left lazy: criu 4.1.1's <c>vma_entry_can_be_lazy</c> (private,
    /// anonymous, not locked, not VDSO or vsyscall), and, to stay on the safe side of it, not huge pages, PROT_NONE, AIO
    /// rings, vvar or shadow stacks. A VMA it rejects keeps its parent pages PE_PARENT, which is never wrong.
    /// </summary>
    internal static bool CanBeLazy(CriuVma vma) =>
        (vma.Flags & MapAnonymous) != 0 && (vma.Flags & MapPrivate) != 0 && (vma.Flags & (MapLocked | MapHugetlb)) == 0
        && vma.Protection != 0 && (vma.Status & NotLazyStatus) == 0;

    /// <summary>
    /// Rewrites <paramref name="entries"/> (a pagemap's, sorted) against the process's <paramref name="vmas"/> (sorted):
    /// each PE_PARENT entry is split at VMA boundaries, and each piece in a lazy-capable VMA becomes PE_LAZY only; every
    /// other entry, and pieces outside lazy-capable VMAs (or outside every VMA), stay as they were.
    /// </summary>
    internal static CriuPagemapRewrite Rewrite(IReadOnlyList<CriuPagemapEntry> entries, IReadOnlyList<CriuVma> vmas)
    {
        if (vmas.FirstOrDefault(m => (m.Start | m.End) % ILazyPageSource.PageSize != 0) is { End: not 0 } odd)
        {
            throw new InvalidDataException($"VMA [{odd.Start:x}, {odd.End:x}) is not page-aligned");
        }

        var result = new List<CriuPagemapEntry>(entries.Count);
        long lazy = 0, parent = 0;
        var v = 0;
        foreach (var e in entries)
        {
            // Only CRIU's holes (PE_PARENT alone); anything else keeps its flags and its place in the pages image.
            if (e.Flags != CriuPageState.Parent)
            {
                result.Add(e);
                continue;
            }

            // Pieces that stay PE_PARENT are merged back within the entry: only what turns lazy changes shape.
            var keepFrom = (ulong?)null;
            for (var at = e.Address; at < e.End;)
            {
                while (v < vmas.Count && vmas[v].End <= at)
                {
                    v++;
                }

                var inside = v < vmas.Count && vmas[v].Start <= at;
                var end = inside ? Math.Min(e.End, vmas[v].End) : v < vmas.Count ? Math.Min(e.End, vmas[v].Start) : e.End;
                var pages = (end - at) / ILazyPageSource.PageSize;
                if (inside && CanBeLazy(vmas[v]))
                {
                    if (keepFrom is { } from)
                    {
                        result.Add(new CriuPagemapEntry(from, (at - from) / ILazyPageSource.PageSize, e.Flags, null));
                        keepFrom = null;
                    }

                    result.Add(new CriuPagemapEntry(at, pages, CriuPageState.Lazy, null));
                    lazy += (long)pages;
                }
                else
                {
                    keepFrom ??= at;
                    parent += (long)pages;
                }

                at = end;
            }

            if (keepFrom is { } last)
            {
                result.Add(new CriuPagemapEntry(last, (e.End - last) / ILazyPageSource.PageSize, e.Flags, null));
            }
        }

        return new CriuPagemapRewrite(result, lazy, parent);
    }
}
