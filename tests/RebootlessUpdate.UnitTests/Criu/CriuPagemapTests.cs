using RebootlessUpdate.Criu;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.UnitTests.Criu;

/// <summary>Pagemap images as criu 4.1.1, criu 4.2 and older CRIUs write them, over hand-built bytes.</summary>
public class CriuPagemapTests
{
    private const uint Parent = (uint)CriuPageState.Parent;
    private const uint Lazy = (uint)CriuPageState.Lazy;
    private const uint Present = (uint)CriuPageState.Present;

    private static CriuPagemap Parse(byte[] bytes) => CriuPagemap.Parse(new MemoryStream(bytes), "pagemap-7.img");

    private static CriuPagemap Parse(params PagemapRecord[] entries) => Parse(CriuImageFiles.Pagemap(3, entries));

    [Test]
    public void Entries_of_both_layouts_carry_their_count_flags_and_the_running_offset_of_present_pages([Values] bool criu42)
    {
        var pagemap = Parse(CriuImageFiles.Pagemap(3, [
            new(0x10000, 2, Present | Lazy),
            new(0x20000, 3, Parent),
            new(0x30000, 1, Present),
            new(0x40000, 4, Lazy),
            new(0x50000, 5, Present | Lazy),
        ], criu42));

        Assert.Multiple(() =>
        {
            Assert.That(pagemap.PagesId, Is.EqualTo(3));
            Assert.That(pagemap.PagesFileName, Is.EqualTo("pages-3.img"));
            Assert.That(pagemap.Path, Is.EqualTo("pagemap-7.img"));
            Assert.That(pagemap.Entries, Is.EqualTo(new CriuPagemapEntry[]
            {
                new(0x10000, 2, CriuPageState.Present | CriuPageState.Lazy, 0),
                new(0x20000, 3, CriuPageState.Parent, null),
                new(0x30000, 1, CriuPageState.Present, 2 * 4096),
                new(0x40000, 4, CriuPageState.Lazy, null),
                new(0x50000, 5, CriuPageState.Present | CriuPageState.Lazy, 3 * 4096),
            }));
        });
    }

    [Test]
    public void A_criu_4_2_count_past_32_bits_is_kept()
    {
        var pagemap = Parse(CriuImageFiles.Pagemap(1, [new(0x7f00_0000_0000, 1UL << 33, Parent)], criu42: true));

        Assert.That(pagemap.Entries[0].End, Is.EqualTo(0x7f00_0000_0000 + (1UL << 45)));
    }

    [Test]
    public void A_legacy_entry_in_the_parent_is_parent_and_one_without_flags_is_present()
    {
        var pagemap = Parse(new PagemapRecord(0x1000, 1, null, InParent: true), new(0x2000, 2, null, InParent: false), new(0x4000, 1, null));

        Assert.That(pagemap.Entries.Select(e => (e.Flags, e.DataOffset)),
            Is.EqualTo(new (CriuPageState, long?)[] { (CriuPageState.Parent, null), (CriuPageState.Present, 0), (CriuPageState.Present, 8192) }));
    }

    [Test]
    public void IndexOf_finds_the_entry_covering_an_address_and_minus_one_in_gaps()
    {
        var pagemap = Parse(new PagemapRecord(0x10000, 2, Present), new(0x20000, 1, Parent), new(0x21000, 3, Present));

        Assert.That(new ulong[] { 0xf000, 0x10000, 0x11fff, 0x12000, 0x20000, 0x21000, 0x23fff, 0x24000 }.Select(pagemap.IndexOf),
            Is.EqualTo(new[] { -1, 0, 0, -1, 1, 2, 2, -1 }));
    }

    [Test]
    public void A_head_only_pagemap_has_no_entries()
    {
        Assert.That(Parse().Entries, Is.Empty);
    }

    [TestCase(0x3000UL, "starts before the end of the one before it (4000)")]
    [TestCase(0x1000UL, "starts before the end of the one before it (4000)")]
    public void Unsorted_or_overlapping_entries_are_refused_naming_the_file(ulong second, string why)
    {
        Assert.That(() => Parse(new PagemapRecord(0x2000, 2, Present), new(second, 1, Present)),
            Throws.TypeOf<InvalidDataException>().With.Message.StartsWith($"pagemap-7.img: pagemap entry 1 at {second:x} ").And.Message.Contains(why));
    }

    [Test]
    public void Impossible_entries_are_refused()
    {
        Assert.Multiple(() =>
        {
            Assert.That(() => Parse(new PagemapRecord(0x1000, 0, Present)), Throws.TypeOf<InvalidDataException>().With.Message.Contains("impossible page count 0"));
            Assert.That(() => Parse(new PagemapRecord(0xffff_ffff_ffff_f000, 2, Present)), Throws.TypeOf<InvalidDataException>().With.Message.Contains("impossible page count 2"));
            Assert.That(() => Parse(new PagemapRecord(0x1800, 1, Present)), Throws.TypeOf<InvalidDataException>().With.Message.Contains("1800 is not page-aligned"));
            Assert.That(() => Parse(new PagemapRecord(0x1000, 1, 8)), Throws.TypeOf<InvalidDataException>().With.Message.Contains("unknown flags 8"));
            Assert.That(() => Parse(CriuImageFiles.Pagemap(1, [new(0, 1UL << 50, Present), new(1UL << 62, 1UL << 50, Present)], criu42: true)),
                Throws.TypeOf<InvalidDataException>().With.Message.Contains("lies past any file's end"));
        });
    }

    [Test]
    public void A_truncated_pagemap_is_refused()
    {
        var bytes = CriuImageFiles.Pagemap(3, [new(0x1000, 1, Present), new(0x2000, 1, Present)]);

        Assert.That(() => Parse(bytes[..^3]), Throws.TypeOf<InvalidDataException>().With.Message.StartsWith("pagemap-7.img: truncated pagemap image"));
    }

    [Test]
    public void Read_names_the_file_of_a_pid_and_refuses_a_missing_one()
    {
        var dir = Directory.CreateTempSubdirectory("rebootless-pagemap-").FullName;
        try
        {
            CriuImageFiles.WritePagemap(dir, 42, 9, [new(0x1000, 1, Present)]);

            Assert.Multiple(() =>
            {
                Assert.That(CriuPagemap.Read(dir, 42).Path, Is.EqualTo(Path.Combine(dir, "pagemap-42.img")));
                Assert.That(() => CriuPagemap.Read(dir, 43), Throws.TypeOf<FileNotFoundException>());
            });
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
