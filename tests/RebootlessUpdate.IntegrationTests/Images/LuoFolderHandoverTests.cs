using System.Security.Cryptography;
using Mono.Unix.Native;
using RebootlessUpdate.Images.Luo;

namespace RebootlessUpdate.IntegrationTests.Images;

/// <summary>
/// A folder on tmpfs carried in a LUO session, with real files and descriptors (the kernel's side played by
/// <see cref="InProcessLuo"/>; LuoKexecVmTests and the VM tests of the store cross a real kexec): nothing is copied on
/// the way out, everything comes back, a jump that does not happen loses nothing, and what is not carriable or not
/// trustworthy is refused before anything changes.
/// </summary>
public class LuoFolderHandoverTests
{
    private string _root = null!;
    private string _folder = null!;
    private InProcessLuo _luo = null!;

    [SetUp]
    public void SetUp()
    {
        _root = Directory.CreateTempSubdirectory("luo-handover-").FullName;
        _root = Path.Combine("/dev/shm", Path.GetFileName(_root));
        Directory.CreateDirectory(_root);
        _folder = Path.Combine(_root, "store");
        Directory.CreateDirectory(Path.Combine(_folder, "sets", "s1", "images"));
        File.WriteAllBytes(Path.Combine(_folder, "journal.json"), "{\"state\":\"Jumping\"}"u8.ToArray());
        var pages = new byte[(1 << 20) + 123];
        Random.Shared.NextBytes(pages);
        File.WriteAllBytes(Path.Combine(_folder, "sets", "s1", "images", "pages-1.img"), pages);
        File.WriteAllBytes(Path.Combine(_folder, "sets", "s1", "images", "empty.img"), []);
        File.CreateSymbolicLink(Path.Combine(_folder, "sets", "s1", "images", "parent"), "../../s0/images");
        File.SetUnixFileMode(Path.Combine(_folder, "sets", "s1", "images", "pages-1.img"), UnixFileMode.UserRead | UnixFileMode.UserWrite);
        _luo = new InProcessLuo();
    }

    [TearDown]
    public void TearDown() => Directory.Delete(_root, recursive: true);

    private LuoDevice Device() => LuoDevice.Open("/dev/liveupdate", _luo);

    /// <summary>Every entry under a folder: path, kind, mode, and a file's hash or a link's target.</summary>
    private static SortedDictionary<string, string> Tree(string folder)
    {
        var tree = new SortedDictionary<string, string>(StringComparer.Ordinal);
        foreach (var full in Directory.EnumerateFileSystemEntries(folder, "*", SearchOption.AllDirectories))
        {
            var info = new FileInfo(full);
            _ = Syscall.lstat(full, out var st);
            var what = info.LinkTarget is { } target ? "link " + target
                : Directory.Exists(full) ? "folder"
                : (st.st_mode & FilePermissions.S_IFMT) != FilePermissions.S_IFREG ? "special"
                : "file " + Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(full)));
            tree[Path.GetRelativePath(folder, full)] = $"{what} {Convert.ToString((int)st.st_mode & 0x1ff, 8)}";
        }

        return tree;
    }

    [Test]
    public void The_files_leave_without_a_copy_and_come_back_whole_after_the_jump()
    {
        var before = Tree(_folder);
        using var device = Device();
        var sent = LuoFolderHandover.Send(device, "rebootless-s1", _folder);

        Assert.That(sent.Files, Is.EqualTo(3));
        Assert.That(sent.Bytes, Is.EqualTo((1 << 20) + 123 + 19));
        Assert.That(Directory.EnumerateFiles(_folder, "*.img", SearchOption.AllDirectories), Is.Empty, "the files were unlinked, not copied");
        Assert.That(_luo.HeldFiles, Is.EqualTo(4), "three files and the index");

        _luo.Kexec();
        var received = Path.Combine(_root, "received");
        using var after = Device();
        var r = LuoFolderHandover.Receive(after, "rebootless-s1", received);

        Assert.That(r.Problems, Is.Empty);
        Assert.That(r.Files, Is.EqualTo(3));
        Assert.That(r.Bytes, Is.EqualTo(sent.Bytes));
        Assert.That(Tree(received), Is.EqualTo(before), "the same files, bytes, modes and links");
        Assert.That(_luo.HeldFiles, Is.Zero, "the session was finished");
    }

    [Test]
    public void A_jump_that_does_not_happen_puts_every_file_back()
    {
        var before = Tree(_folder);
        using (var device = Device())
        {
            var sent = LuoFolderHandover.Send(device, "rebootless-s1", _folder);
            sent.GiveBack();
        }

        Assert.That(Tree(_folder), Is.EqualTo(before));
        Assert.That(_luo.HeldFiles, Is.Zero, "the session was closed, its files unpreserved");
        _luo.Kexec();
        using var after = Device();
        var e = Assert.Throws<LuoException>(() => LuoFolderHandover.Receive(after, "rebootless-s1", Path.Combine(_root, "received")));
        Assert.That(e!.Errno, Is.EqualTo(2));
    }

    [Test]
    public void A_folder_swapped_for_a_link_after_the_send_never_leads_the_give_back_outside()
    {
        var outside = Path.Combine(_root, "outside");
        Directory.CreateDirectory(Path.Combine(outside, "s1", "images"));
        using var device = Device();
        var sent = LuoFolderHandover.Send(device, "rebootless-s1", _folder);

        // The attacker moves the folder away and puts a link to a folder of their choosing in its place.
        Directory.Move(Path.Combine(_folder, "sets"), Path.Combine(_root, "moved"));
        File.CreateSymbolicLink(Path.Combine(_folder, "sets"), outside);
        sent.GiveBack();

        Assert.That(Directory.EnumerateFiles(outside, "*", SearchOption.AllDirectories), Is.Empty, "nothing written through the link");
        Assert.That(File.Exists(Path.Combine(_root, "moved", "s1", "images", "pages-1.img")), Is.True, "the file went back into the folder it left");
        Assert.That(File.Exists(Path.Combine(_folder, "journal.json")), Is.True);
    }

    [Test]
    public void A_name_taken_while_the_files_were_away_is_not_overwritten()
    {
        var journal = Path.Combine(_folder, "journal.json");
        var original = File.ReadAllText(journal);
        using var device = Device();
        var sent = LuoFolderHandover.Send(device, "rebootless-s1", _folder);
        File.WriteAllText(journal, "someone else's");

        var e = Assert.Throws<IOException>(sent.GiveBack);

        Assert.That(e!.Message, Does.Contain("the name was taken meanwhile"));
        Assert.That(File.ReadAllText(journal), Is.EqualTo("someone else's"));
        Assert.That(File.ReadAllText(journal + ".luo-returned"), Is.EqualTo(original));
        Assert.That(File.Exists(Path.Combine(_folder, "sets", "s1", "images", "pages-1.img")), Is.True, "the others went back");
    }

    [Test]
    public void A_hard_linked_file_is_refused_and_the_files_taken_before_it_are_put_back()
    {
        Assert.That(Syscall.link(Path.Combine(_folder, "sets", "s1", "images", "pages-1.img"), Path.Combine(_root, "second-name")), Is.Zero);
        var before = Tree(_folder);
        using var device = Device();

        var e = Assert.Throws<IOException>(() => LuoFolderHandover.Send(device, "rebootless-s1", _folder));

        Assert.That(e!.Message, Does.Contain("pages-1.img is not a file with one name"));
        Assert.That(Tree(_folder), Is.EqualTo(before), "nothing lost");
        Assert.That(_luo.HeldFiles, Is.Zero);
    }

    [Test]
    public void A_fifo_in_the_folder_is_refused_before_anything_is_taken()
    {
        Assert.That(Syscall.mkfifo(Path.Combine(_folder, "sets", "s1", "images", "fifo"), FilePermissions.S_IRUSR | FilePermissions.S_IWUSR), Is.Zero);
        var before = Tree(_folder);
        using var device = Device();

        var e = Assert.Throws<IOException>(() => LuoFolderHandover.Send(device, "rebootless-s1", _folder));

        Assert.That(e!.Message, Does.Contain("fifo is a special file"));
        Assert.That(Tree(_folder), Is.EqualTo(before));
    }

    [Test]
    public void A_folder_not_on_tmpfs_is_refused()
    {
        var disk = Directory.CreateTempSubdirectory("luo-disk-").FullName;
        try
        {
            File.WriteAllText(Path.Combine(disk, "f"), "x");
            using var device = Device();
            var e = Assert.Throws<IOException>(() => LuoFolderHandover.Send(device, "rebootless-s1", disk));
            Assert.That(e!.Message, Does.Contain("is not on tmpfs"));
            Assert.That(File.ReadAllText(Path.Combine(disk, "f")), Is.EqualTo("x"));
        }
        finally
        {
            Directory.Delete(disk, recursive: true);
        }
    }

    [TestCase("f\t1\t3\t600\t..%2Fescaped\t-\n", "outside the folder")]
    [TestCase("f\t1\t3\t600\t%2Fabsolute\t-\n", "outside the folder")]
    [TestCase("f\t1\t3\t600\tx\t-\nf\t1\t3\t600\ty\t-\n", "token 1 twice")]
    [TestCase("f\t1\t3\t600\tsub%2Fx\t-\n", "before its folder 'sub'")]
    [TestCase("garbage", "malformed")]
    public void A_forged_index_is_refused_and_nothing_is_written(string lines, string why)
    {
        using (var device = Device())
        using (var session = device.CreateSession("forged"))
        using (var index = Memfd.Create("index"))
        using (var file = Memfd.Create("file"))
        {
            RandomAccess.Write(index, System.Text.Encoding.UTF8.GetBytes("rebootless-luo-folder 1\n" + lines), 0);
            RandomAccess.Write(file, "abc"u8.ToArray(), 0);
            session.Preserve((int)index.DangerousGetHandle(), LuoFolderHandover.IndexToken);
            session.Preserve((int)file.DangerousGetHandle(), 1);
            _luo.Kexec();
        }

        using var after = Device();
        var received = Path.Combine(_root, "in", "received");
        var e = Assert.Throws<InvalidDataException>(() => LuoFolderHandover.Receive(after, "forged", received));

        Assert.That(e!.Message, Does.Contain(why));
        Assert.That(Path.Exists(received), Is.False);
        Assert.That(Path.Exists(Path.Combine(_root, "in", "escaped")), Is.False);
    }

    [Test]
    public void A_file_whose_length_is_not_the_indexs_is_left_out_and_named()
    {
        using (var device = Device())
        using (var session = device.CreateSession("short"))
        using (var index = Memfd.Create("index"))
        using (var file = Memfd.Create("file"))
        {
            RandomAccess.Write(index, "rebootless-luo-folder 1\nf\t1\t10\t600\tpages.img\t-\n"u8.ToArray(), 0);
            RandomAccess.Write(file, "abc"u8.ToArray(), 0);
            session.Preserve((int)index.DangerousGetHandle(), LuoFolderHandover.IndexToken);
            session.Preserve((int)file.DangerousGetHandle(), 1);
            _luo.Kexec();
        }

        using var after = Device();
        var received = Path.Combine(_root, "received");
        var r = LuoFolderHandover.Receive(after, "short", received);

        Assert.That(r.Problems, Is.EqualTo(new[] { "pages.img: 3 bytes came across, the index says 10; left out" }));
        Assert.That(File.Exists(Path.Combine(received, "pages.img")), Is.False);
    }

    [Test]
    public void The_receiving_folder_must_be_new_and_the_session_is_kept_when_it_is_not()
    {
        using (var device = Device())
        {
            _ = LuoFolderHandover.Send(device, "rebootless-s1", _folder);
            _luo.Kexec();
        }

        using var after = Device();
        Assert.Throws<IOException>(() => LuoFolderHandover.Receive(after, "rebootless-s1", _folder));
        Assert.That(_luo.HeldFiles, Is.EqualTo(4), "the session was not retrieved");
        var r = LuoFolderHandover.Receive(after, "rebootless-s1", Path.Combine(_root, "received"));
        Assert.That(r.Problems, Is.Empty);
    }
}
