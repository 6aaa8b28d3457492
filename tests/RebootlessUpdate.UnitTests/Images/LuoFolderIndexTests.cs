using System.Text;
using RebootlessUpdate.Images.Luo;

namespace RebootlessUpdate.UnitTests.Images;

/// <summary>The index a carried folder's LUO session holds: written by us, read after the jump trusting nothing in it.</summary>
public class LuoFolderIndexTests
{
    [Test]
    public void What_is_written_reads_back_the_same_names_with_tabs_newlines_and_percents_included()
    {
        LuoFolderEntry[] entries =
        [
            new(LuoEntryKind.Folder, "sets", 0, 0, 0x1c0),
            new(LuoEntryKind.Folder, "sets/a\tb", 0, 0, 0x1c0),
            new(LuoEntryKind.File, "sets/a\tb/pages\n1%2F.img", 1, 1L << 33, 0x180),
            new(LuoEntryKind.Link, "sets/a\tb/parent", 0, 0, 0x1ff, "../x y/images"),
            new(LuoEntryKind.File, "journal.json", 7, 0, 0x1a4),
        ];

        var back = LuoFolderIndex.Parse(LuoFolderIndex.Format(entries));

        Assert.That(back, Is.EqualTo(entries));
    }

    [TestCase("f\t1\t3\t600\t..\t-", "outside the folder")]
    [TestCase("f\t1\t3\t600\ta%2F..%2Fb\t-", "outside the folder")]
    [TestCase("f\t1\t3\t600\ta%2F%2Fb\t-", "outside the folder")]
    [TestCase("f\t1\t3\t600\t.\t-", "outside the folder")]
    [TestCase("f\t1\t3\t600\t\t-", "outside the folder")]
    [TestCase("f\t1\t3\t600\ta%00b\t-", "outside the folder")]
    [TestCase("f\t1\t3\t7777\ta\t-", "bad mode")]
    [TestCase("f\t0\t3\t600\ta\t-", "the index's own")]
    [TestCase("f\t1\t-3\t600\ta\t-", "malformed")]
    [TestCase("f\t1\t3\t689\ta\t-", "no octal mode")]
    [TestCase("x\t1\t3\t600\ta\t-", "unknown kind")]
    [TestCase("f\t1\t3\t-1\ta\t-", "no octal mode")]
    [TestCase("f\t1\t3\t\ta\t-", "bad mode")]
    [TestCase("f\t1\t3\t77777777777\ta\t-", "bad mode")]
    [TestCase("l\t0\t0\t777\ta\t%2Fetc%2Fshadow", "only point somewhere relative")]
    [TestCase("l\t0\t0\t777\ta\t", "only point somewhere relative")]
    [TestCase("l\t0\t0\t777\ta\t-", "only a link has a target")]
    [TestCase("f\t1\t3\t600\ta\tsomewhere", "only a link has a target")]
    [TestCase("d\t0\t0\t700\ta\t-\nf\t1\t3\t600\ta\t-", "names 'a' twice")]
    [TestCase("l\t0\t0\t777\ta\tsub\nf\t1\t3\t600\ta%2Fb\t-", "before its folder 'a'")]
    public void A_forged_line_is_refused(string lines, string why)
    {
        var e = Assert.Throws<InvalidDataException>(() => LuoFolderIndex.Parse(Encoding.UTF8.GetBytes("rebootless-luo-folder 1\n" + lines + "\n")));
        Assert.That(e!.Message, Does.Contain(why));
    }

    [Test]
    public void Anything_else_is_not_an_index()
    {
        Assert.Throws<InvalidDataException>(() => LuoFolderIndex.Parse("rebootless-luo-folder 2\n"u8));
        Assert.Throws<InvalidDataException>(() => LuoFolderIndex.Parse([]));
    }
}
