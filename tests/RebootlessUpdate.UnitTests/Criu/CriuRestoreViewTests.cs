using RebootlessUpdate.Criu;
using RebootlessUpdate.Criu.Protocol;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.UnitTests.Criu;

/// <summary>The restore view folder, built from a hand-built final dump on a pre-dump.</summary>
public class CriuRestoreViewTests
{
    private const uint Parent = (uint)CriuPageState.Parent;
    private const uint Lazy = (uint)CriuPageState.Lazy;
    private const uint Present = (uint)CriuPageState.Present;

    private string _root = null!;
    private string _final = null!;
    private string _pre = null!;

    [SetUp]
    public void SetUp()
    {
        _root = Directory.CreateTempSubdirectory("rebootless-view-").FullName;
        _final = Directory.CreateDirectory(Path.Combine(_root, "set", "final")).FullName;
        _pre = Directory.CreateDirectory(Path.Combine(_root, "set", "final-pre")).FullName;
        // pid 1: anonymous private [0x10000, 0x20000), a private file mapping [0x20000, 0x30000).
        CriuImageFiles.WritePagemap(_final, 1, 5, [new(0x10000, 2, Present | Lazy), new(0x12000, 4, Parent), new(0x16000, 1, Present | Lazy), new(0x1f000, 3, Parent), new(0x23000, 1, Present)]);
        WriteMm(_final, 1, (0x10000, 0x20000, CriuLazyParentRewrite.MapAnonymous | CriuLazyParentRewrite.MapPrivate), (0x20000, 0x30000, CriuLazyParentRewrite.MapPrivate));
        File.WriteAllBytes(Path.Combine(_final, "pages-5.img"), [.. Enumerable.Range(0, 4 * 4096).Select(i => (byte)(i / 4096))]);
        // pid 2 has no parent pages: its pagemap is copied as it is, without an mm image to read.
        CriuImageFiles.WritePagemap(_final, 2, 6, [new(0x10000, 1, Present)]);
        File.WriteAllBytes(Path.Combine(_final, "pages-6.img"), new byte[4096]);
        File.WriteAllBytes(Path.Combine(_final, "pstree.img"), [1, 2, 3]);
        File.WriteAllBytes(Path.Combine(_final, "pagemap-shmem-9.img"), [4, 5]);
        File.CreateSymbolicLink(Path.Combine(_final, "parent"), "../final-pre");
    }

    [TearDown]
    public void TearDown() => Directory.Delete(_root, recursive: true);

    [Test]
    public void The_view_links_the_pages_and_the_parent_copies_the_rest_and_makes_parent_pages_of_lazy_capable_memory_lazy()
    {
        var before = Snapshot(_final);

        var view = CriuRestoreView.Build(_final, Path.Combine(_root, "work", "view"));

        var original = CriuPagemap.Read(_final, 1);
        var rewritten = CriuPagemap.Read(view.Directory, 1);
        Assert.Multiple(() =>
        {
            Assert.That(view.ParentDirectory, Is.EqualTo(_pre));
            Assert.That(new FileInfo(Path.Combine(view.Directory, "parent")).LinkTarget, Is.EqualTo(_pre), "absolute: the view lives elsewhere");
            Assert.That(new FileInfo(Path.Combine(view.Directory, "pages-5.img")).LinkTarget, Is.EqualTo(Path.Combine(_final, "pages-5.img")));
            Assert.That(new FileInfo(Path.Combine(view.Directory, "pages-6.img")).LinkTarget, Is.EqualTo(Path.Combine(_final, "pages-6.img")));
            foreach (var copied in new[] { "pstree.img", "pagemap-shmem-9.img", "mm-1.img", "pagemap-2.img" })
            {
                var file = new FileInfo(Path.Combine(view.Directory, copied));
                Assert.That(file.LinkTarget, Is.Null, copied);
                Assert.That(File.ReadAllBytes(file.FullName), Is.EqualTo(File.ReadAllBytes(Path.Combine(_final, copied))), copied);
            }

            Assert.That(rewritten.PagesId, Is.EqualTo(5));
            Assert.That(rewritten.Entries, Is.EqualTo(new CriuPagemapEntry[]
            {
                new(0x10000, 2, CriuPageState.Present | CriuPageState.Lazy, 0),
                new(0x12000, 4, CriuPageState.Lazy, null),
                new(0x16000, 1, CriuPageState.Present | CriuPageState.Lazy, 2 * 4096),
                new(0x1f000, 1, CriuPageState.Lazy, null),
                new(0x20000, 2, CriuPageState.Parent, null),
                new(0x23000, 1, CriuPageState.Present, 3 * 4096),
            }));
            // The pages image is shared, so every present entry must find its bytes where the original said.
            Assert.That(rewritten.Entries.Where(e => e.DataOffset is not null), Is.EqualTo(original.Entries.Where(e => e.DataOffset is not null)));
            Assert.That(view.PagesMadeLazy, Is.EqualTo(5));
            Assert.That(view.PagesLeftInParent, Is.EqualTo(2));
            Assert.That(Snapshot(_final), Is.EqualTo(before), "the dump's own folder is untouched");
        });
    }

    [Test]
    public void A_second_build_replaces_the_first_and_follows_no_link_while_emptying_it()
    {
        var target = Path.Combine(_root, "work", "view");
        CriuRestoreView.Build(_final, target);
        var before = Snapshot(_final);

        var view = CriuRestoreView.Build(_final, target);

        Assert.Multiple(() =>
        {
            Assert.That(CriuPagemap.Read(view.Directory, 1).Entries, Has.Count.EqualTo(6));
            Assert.That(Snapshot(_final), Is.EqualTo(before));
            Assert.That(Directory.Exists(_pre), Is.True);
        });
    }

    [Test]
    public void A_dump_without_a_parent_or_a_view_inside_the_dump_is_refused()
    {
        var alone = Directory.CreateDirectory(Path.Combine(_root, "alone")).FullName;

        Assert.Multiple(() =>
        {
            Assert.That(() => CriuRestoreView.Build(alone, Path.Combine(_root, "v1")), Throws.InvalidOperationException.With.Message.Contains("no parent link"));
            Assert.That(() => CriuRestoreView.Build(_final, Path.Combine(_final, "view")), Throws.InvalidOperationException.With.Message.Contains("inside the dump"));
        });
    }

    [Test]
    public void An_unreadable_mm_image_fails_the_build()
    {
        File.WriteAllBytes(Path.Combine(_final, "mm-1.img"), [1, 2, 3]);

        Assert.That(() => CriuRestoreView.Build(_final, Path.Combine(_root, "work", "view")), Throws.TypeOf<InvalidDataException>());
    }

    private static void WriteMm(string folder, int pid, params (ulong Start, ulong End, uint Flags)[] vmas)
    {
        var mm = new mm_entry();
        mm.Vmas.AddRange(vmas.Select(v => new vma_entry { Start = v.Start, End = v.End, Pgoff = 0, Shmid = 0, Prot = 3, Flags = v.Flags, Status = 1, Fd = -1 }));
        using var file = File.Create(Path.Combine(folder, CriuVmas.FileName(pid)));
        CriuImageWriter.Write(file, CriuVmas.Magic, [mm]);
    }

    private static Dictionary<string, string> Snapshot(string folder) =>
        new DirectoryInfo(folder).EnumerateFileSystemInfos().ToDictionary(f => f.Name,
            f => f.LinkTarget ?? Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(f.FullName))));
}
