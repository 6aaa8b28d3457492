using System.Text;
using Mono.Unix.Native;
using RebootlessUpdate.Images;
using RebootlessUpdate.Images.Interop;

namespace RebootlessUpdate.UnitTests.Images;

/// <summary>The one atomic write (<see cref="StoreFiles.WriteAtomically"/>, <see cref="StoreFiles.WriteAtomicallyIn"/>) against what a folder's other writer can plant.</summary>
public class AtomicWriteTests
{
    private string _dir = null!;

    [SetUp]
    public void SetUp() => _dir = Directory.CreateTempSubdirectory("rebootless-atomic-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    private string PathOf(string name) => Path.Combine(_dir, name);

    [Test]
    public void A_write_replaces_the_file_whole_and_leaves_no_temporary_file()
    {
        File.WriteAllText(PathOf("state.json"), "old");

        StoreFiles.WriteAtomically(PathOf("state.json"), "new"u8);

        Assert.That(File.ReadAllText(PathOf("state.json")), Is.EqualTo("new"));
        Assert.That(Directory.GetFiles(_dir), Is.EqualTo(new[] { PathOf("state.json") }));
    }

    [Test]
    public void Without_overwrite_a_taken_name_is_refused_and_kept_as_it_was()
    {
        File.WriteAllText(PathOf("manifest.json"), "first");

        var e = Assert.Throws<IOException>(() => StoreFiles.WriteAtomically(PathOf("manifest.json"), "second"u8, overwrite: false));

        Assert.Multiple(() =>
        {
            Assert.That(e!.HResult, Is.EqualTo(Libc.EExist));
            Assert.That(e.Message, Does.Contain(PathOf("manifest.json")), "the message names the file with its folder");
            Assert.That(File.ReadAllText(PathOf("manifest.json")), Is.EqualTo("first"));
            Assert.That(Directory.GetFiles(_dir), Is.EqualTo(new[] { PathOf("manifest.json") }), "no temporary file left");
        });
    }

    [Test]
    public void A_link_planted_as_the_temporary_file_is_removed_not_followed()
    {
        var victim = PathOf("victim");
        File.WriteAllText(victim, "precious");
        File.CreateSymbolicLink(PathOf("state.json.tmp"), victim);

        StoreFiles.WriteAtomically(PathOf("state.json"), "ours"u8);

        Assert.Multiple(() =>
        {
            Assert.That(File.ReadAllText(victim), Is.EqualTo("precious"));
            Assert.That(File.ReadAllText(PathOf("state.json")), Is.EqualTo("ours"));
            Assert.That(File.Exists(PathOf("state.json.tmp")), Is.False);
        });
    }

    [Test]
    public void A_fifo_planted_as_the_temporary_file_neither_blocks_nor_stays()
    {
        Assert.That(Syscall.mkfifo(PathOf("state.json.tmp"), FilePermissions.S_IRUSR | FilePermissions.S_IWUSR), Is.Zero);

        var write = Task.Run(() => StoreFiles.WriteAtomically(PathOf("state.json"), "ours"u8));

        Assert.That(write.Wait(TimeSpan.FromSeconds(10)), Is.True, "the write did not block on the FIFO");
        Assert.That(File.ReadAllText(PathOf("state.json")), Is.EqualTo("ours"));
    }

    [Test]
    public void A_folder_swapped_for_a_link_after_it_was_opened_still_gets_the_write()
    {
        var folder = Directory.CreateDirectory(PathOf("ctr")).FullName;
        var attacker = Directory.CreateDirectory(PathOf("attacker")).FullName;
        using var dir = Libc.Open(folder, Libc.ORdOnly | Libc.ODirectory);
        Directory.Move(folder, PathOf("ctr.moved"));
        File.CreateSymbolicLink(folder, attacker);

        StoreFiles.WriteAtomicallyIn(dir, folder, "state.json", Encoding.UTF8.GetBytes("ours"));

        Assert.Multiple(() =>
        {
            Assert.That(Directory.GetFileSystemEntries(attacker), Is.Empty, "nothing reached the folder the link points to");
            Assert.That(File.ReadAllText(Path.Combine(PathOf("ctr.moved"), "state.json")), Is.EqualTo("ours"));
        });
    }
}
