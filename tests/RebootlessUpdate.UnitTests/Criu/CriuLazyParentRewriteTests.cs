using RebootlessUpdate.Criu;

namespace RebootlessUpdate.UnitTests.Criu;

/// <summary>The rewrite of a final dump's parent pages into lazy ones, over hand-built pagemaps and VMAs.</summary>
public class CriuLazyParentRewriteTests
{
    private const ulong Page = 4096;
    private const CriuPageState Parent = CriuPageState.Parent;
    private const CriuPageState Lazy = CriuPageState.Lazy;
    private const CriuPageState Present = CriuPageState.Present;
    private const uint AnonPrivate = CriuLazyParentRewrite.MapAnonymous | CriuLazyParentRewrite.MapPrivate;
    private const uint ReadWrite = 3;
    private const uint Regular = 1; // VMA_AREA_REGULAR

    private static CriuVma Anon(ulong startPage, ulong endPage, uint flags = AnonPrivate, uint prot = ReadWrite, uint status = Regular) =>
        new(startPage * Page, endPage * Page, prot, flags, status);

    private static CriuPagemapEntry E(ulong page, ulong pages, CriuPageState flags, long? offset = null) => new(page * Page, pages, flags, offset);

    [Test]
    public void A_parent_entry_across_a_lazy_and_a_non_lazy_VMA_is_split_at_the_boundary_and_only_the_lazy_part_changes()
    {
        // [16, 32) anonymous private, [32, 48) a private file mapping (MAP_PRIVATE only): the entry covers [24, 40).
        var rewrite = CriuLazyParentRewrite.Rewrite([E(24, 16, Parent)], [Anon(16, 32), Anon(32, 48, flags: CriuLazyParentRewrite.MapPrivate)]);

        Assert.Multiple(() =>
        {
            Assert.That(rewrite.Entries, Is.EqualTo(new[] { E(24, 8, Lazy), E(32, 8, Parent) }));
            Assert.That(rewrite.PagesMadeLazy, Is.EqualTo(8));
            Assert.That(rewrite.PagesLeftInParent, Is.EqualTo(8));
        });
    }

    [Test]
    public void Order_present_entries_and_their_offsets_are_kept_and_no_entry_is_both_parent_and_lazy()
    {
        var entries = new[]
        {
            E(16, 2, Present | Lazy, 0),
            E(18, 6, Parent),
            E(24, 1, Present, 2 * (long)Page),
            E(25, 7, Parent),
            E(40, 4, Present | Lazy, 3 * (long)Page),
            E(44, 20, Parent),
        };
        // Two adjacent lazy-capable VMAs meet at 48; [56, 64) is locked.
        var vmas = new[] { Anon(16, 32), Anon(40, 48), Anon(48, 56), Anon(56, 64, flags: AnonPrivate | CriuLazyParentRewrite.MapLocked) };

        var rewrite = CriuLazyParentRewrite.Rewrite(entries, vmas);

        Assert.Multiple(() =>
        {
            Assert.That(rewrite.Entries, Is.EqualTo(new[]
            {
                E(16, 2, Present | Lazy, 0),
                E(18, 6, Lazy),
                E(24, 1, Present, 2 * (long)Page),
                E(25, 7, Lazy),
                E(40, 4, Present | Lazy, 3 * (long)Page),
                E(44, 4, Lazy),
                E(48, 8, Lazy),
                E(56, 8, Parent),
            }));
            Assert.That(rewrite.Entries.Zip(rewrite.Entries.Skip(1)).All(p => p.First.End <= p.Second.Address), "sorted, not overlapping");
            Assert.That(rewrite.Entries.Any(e => e.Flags.HasFlag(Parent) && e.Flags.HasFlag(Lazy)), Is.False);
            Assert.That(rewrite.Entries.Sum(e => (long)e.PageCount), Is.EqualTo(entries.Sum(e => (long)e.PageCount)), "every page still covered once");
            Assert.That(rewrite.PagesMadeLazy, Is.EqualTo(6 + 7 + 4 + 8));
            Assert.That(rewrite.PagesLeftInParent, Is.EqualTo(8));
        });
    }

    [TestCase(CriuLazyParentRewrite.MapPrivate, ReadWrite, Regular, TestName = "a private file mapping")]
    [TestCase(CriuLazyParentRewrite.MapAnonymous | 0x01u, ReadWrite, Regular, TestName = "shared anonymous memory")]
    [TestCase(AnonPrivate | CriuLazyParentRewrite.MapLocked, ReadWrite, Regular, TestName = "locked memory")]
    [TestCase(AnonPrivate | CriuLazyParentRewrite.MapHugetlb, ReadWrite, Regular, TestName = "huge pages")]
    [TestCase(AnonPrivate, 0u, Regular, TestName = "PROT_NONE")]
    [TestCase(AnonPrivate, ReadWrite, Regular | CriuLazyParentRewrite.VmaAreaVdso, TestName = "the vDSO")]
    [TestCase(AnonPrivate, ReadWrite, Regular | CriuLazyParentRewrite.VmaAreaVsyscall, TestName = "vsyscall")]
    [TestCase(AnonPrivate, ReadWrite, Regular | CriuLazyParentRewrite.VmaAreaAioRing, TestName = "an AIO ring")]
    public void Parent_pages_of_a_VMA_that_cannot_be_lazy_stay_parent(uint flags, uint prot, uint status)
    {
        var rewrite = CriuLazyParentRewrite.Rewrite([E(16, 4, Parent)], [Anon(16, 20, flags, prot, status)]);

        Assert.Multiple(() =>
        {
            Assert.That(rewrite.Entries, Is.EqualTo(new[] { E(16, 4, Parent) }));
            Assert.That(rewrite.PagesMadeLazy, Is.Zero);
        });
    }

    [Test]
    public void Parent_pages_outside_every_VMA_stay_parent_and_gaps_split_the_entry()
    {
        // VMAs [8, 12) and [16, 20); the entry [4, 24) crosses both and the gaps around them.
        var rewrite = CriuLazyParentRewrite.Rewrite([E(4, 20, Parent)], [Anon(8, 12), Anon(16, 20)]);

        Assert.That(rewrite.Entries, Is.EqualTo(new[] { E(4, 4, Parent), E(8, 4, Lazy), E(12, 4, Parent), E(16, 4, Lazy), E(20, 4, Parent) }));
    }

    [Test]
    public void A_VMA_that_is_not_page_aligned_is_refused()
    {
        Assert.That(() => CriuLazyParentRewrite.Rewrite([E(16, 4, Parent)], [new CriuVma(16 * Page, (20 * Page) + 1, ReadWrite, AnonPrivate, Regular)]),
            Throws.TypeOf<InvalidDataException>().With.Message.Contains("not page-aligned"));
    }
}
