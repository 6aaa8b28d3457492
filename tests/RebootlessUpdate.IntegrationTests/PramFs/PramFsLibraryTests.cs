using System.Security.Cryptography;
using RebootlessUpdate.Images;
using RebootlessUpdate.Images.PramFs;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.PramFs;

/// <summary>
/// libpramfs.so through P/Invoke against the real <c>pramfs</c> tool of the same build: info field by
/// field against <c>pramfs info</c>, fsck reports identical to <c>pramfs fsck</c> on a clean region,
/// on damaged metadata (corrupt, then repaired) and on damaged file data. Needs root, /dev/fuse and the
/// built native-pramfs (testbed/run-tests builds it before these run).
/// </summary>
[NonParallelizable]
public class PramFsLibraryTests
{
    private string _dir = null!;
    private string _region = null!;
    private string _tool = null!;
    private readonly byte[] _victim = RandomNumberGenerator.GetBytes(300_000);
    private PramFsInfo _empty = null!;

    [SetUp]
    public void SetUp()
    {
        Testbed.RequireRoot();
        if (!File.Exists("/dev/fuse"))
        {
            Testbed.Missing("/dev/fuse is missing: the PramFS daemon needs FUSE");
        }

        _tool = PramFsTool.Locate(null);
        Assert.That(PramFsNative.TryLoad(_tool, out var reason), Is.True, "libpramfs.so must be built next to the tool: " + reason);
        Assert.That(PramFsNative.LoadedFrom, Is.EqualTo(Path.Combine(Path.GetDirectoryName(_tool)!, "libpramfs.so")));
        _dir = Directory.CreateTempSubdirectory("rebootless-pramfs-lib-").FullName;
        _region = Path.Combine(Directory.Exists("/dev/shm") ? "/dev/shm" : _dir, $"rebootless-pramfs-lib-{Environment.ProcessId}-{Guid.NewGuid():N}.img");
        using (var f = File.Create(_region))
        {
            f.SetLength(64L << 20);
        }

        // Format with the tool; fill it through a real mount (the store's own daemon). The store keeps a
        // folder and a file of its own: the counts of the empty store are the baseline.
        Assert.That(Tool("mkfs", _region).ExitCode, Is.Zero);
        var options = new PramFsImageStoreOptions { Region = _region, MountPoint = Path.Combine(_dir, "mnt") };
        PramFsImageStore.Open(options).Unmount();
        _empty = PramFsImageStore.ReadInfo(_region);
        using var store = PramFsImageStore.Open(options);
        Directory.CreateDirectory(Path.Combine(store.MountPoint, "set"));
        File.WriteAllBytes(Path.Combine(store.MountPoint, "set", "victim.img"), _victim);
        File.WriteAllBytes(Path.Combine(store.MountPoint, "keep.img"), RandomNumberGenerator.GetBytes(50_000));
        File.CreateSymbolicLink(Path.Combine(store.MountPoint, "link"), "set/victim.img");
        store.Unmount();
    }

    [TearDown]
    public void TearDown()
    {
        if (_region is not null)
        {
            File.Delete(_region);
        }

        if (_dir is not null)
        {
            Directory.Delete(_dir, recursive: true);
        }
    }

    [Test]
    public void Info_through_the_library_is_what_pramfs_info_prints()
    {
        var viaLibrary = PramFsImageStore.ReadInfo(_region);
        var (code, output) = Tool("info", _region);

        Assert.That(code, Is.Zero, output);
        Assert.That(viaLibrary, Is.EqualTo(PramFsInfo.Parse(output)), output);
        Assert.That(output, Does.Contain($"uuid: {viaLibrary.Uuid}"));
        Assert.Multiple(() =>
        {
            Assert.That(viaLibrary.FormatVersion, Is.EqualTo(1));
            Assert.That(viaLibrary.SizeBytes, Is.EqualTo(64L << 20));
            Assert.That(viaLibrary.RegionCount, Is.EqualTo(1));
            Assert.That((viaLibrary.Files, viaLibrary.Directories, viaLibrary.Symlinks), Is.EqualTo((_empty.Files + 2, _empty.Directories + 1, _empty.Symlinks + 1)),
                "victim, keep; set; link");
            Assert.That(viaLibrary.FileBytes, Is.EqualTo(_empty.FileBytes + 350_000));
            Assert.That(viaLibrary.Generation, Is.GreaterThan(_empty.Generation));
            Assert.That(viaLibrary.FreeBytes, Is.LessThan(viaLibrary.DataBlocks * 4096 - 350_000));
        });
    }

    [Test]
    public void Info_of_a_mounted_region_says_it_is_in_use()
    {
        using var store = PramFsImageStore.Open(new PramFsImageStoreOptions { Region = _region, MountPoint = Path.Combine(_dir, "mnt") });

        var e = Assert.Throws<ImageStoreException>(() => PramFsImageStore.ReadInfo(_region));

        Assert.That(e!.Message, Does.Contain(_region).And.Contain("in use"));
    }

    [Test]
    public void Fsck_of_a_clean_region_reports_what_the_tool_reports()
    {
        var check = PramFsNative.Check(_region, repair: false);
        var (code, output) = Tool("fsck", _region);

        Assert.That(check.ExitCode, Is.EqualTo(PramFsTool.FsckClean).And.EqualTo(code));
        Assert.That(check.Output, Is.EqualTo(output));
        Assert.That(check.Output, Does.Contain("every checksum verified"));
        Assert.That((check.Problems, check.FirstProblem), Is.EqualTo((0, string.Empty)));
    }

    [Test]
    public void A_flipped_metadata_byte_is_corrupt_through_the_library_and_repaired_where_the_tool_repairs()
    {
        var before = PramFsImageStore.ReadInfo(_region);
        var activeMetadata = (2 + (before.Generation % 2) * (before.MetadataAreaBytes / 4096)) * 4096;
        Flip(activeMetadata + 64 + 20); // inside the first inode record

        var check = PramFsNative.Check(_region, repair: false);
        var (toolCode, toolOutput) = Tool("fsck", _region);

        Assert.That(check.ExitCode, Is.EqualTo(PramFsTool.FsckCorrupt).And.EqualTo(toolCode), check.Output);
        Assert.That(check.Output, Is.EqualTo(toolOutput));
        Assert.That(check.Problems, Is.GreaterThan(0));
        Assert.That(check.FirstProblem, Does.Contain("checksum"));
        var e = Assert.Throws<ImageStoreException>(() => PramFsImageStore.ReadInfo(_region));
        Assert.That(e!.Message, Does.Contain("run fsck"));

        var repaired = PramFsNative.Check(_region, repair: true);

        Assert.That(repaired.ExitCode, Is.EqualTo(PramFsTool.FsckRepaired), repaired.Output);
        Assert.That(repaired.Output, Does.Contain("repaired"));
        Assert.That(PramFsNative.Check(_region, repair: false).ExitCode, Is.EqualTo(PramFsTool.FsckClean));
        Assert.That(Tool("fsck", _region).ExitCode, Is.EqualTo(PramFsTool.FsckClean));
        Assert.That(PramFsImageStore.ReadInfo(_region).Generation, Is.EqualTo(before.Generation), "the previous state, committed again, replaced the damaged one");
    }

    [Test]
    public void A_flipped_data_byte_names_the_file_and_repair_drops_only_that_file()
    {
        var before = PramFsImageStore.ReadInfo(_region);
        var bytes = File.ReadAllBytes(_region);
        var at = bytes.AsSpan().IndexOf(_victim.AsSpan(100_000, 64));
        Assert.That(at, Is.GreaterThan(0), "the file's data is in the region");
        Flip(at + 10);

        var check = PramFsNative.Check(_region, repair: false);

        Assert.That(check.ExitCode, Is.EqualTo(PramFsTool.FsckCorrupt), check.Output);
        Assert.That(check.FirstProblem, Does.Contain("victim.img").And.Contain("data checksum mismatch"));
        Assert.That(check.Output, Is.EqualTo(Tool("fsck", _region).Output));
        Assert.That(PramFsNative.Check(_region, repair: true).ExitCode, Is.EqualTo(PramFsTool.FsckRepaired));
        var after = PramFsImageStore.ReadInfo(_region);
        Assert.That((after.Files, after.FileBytes), Is.EqualTo((before.Files - 1, before.FileBytes - _victim.Length)));
    }

    [TestCase(false, TestName = "Damage found at open: the tool in a child process (default)")]
    [TestCase(true, TestName = "Damage found at open: libpramfs in this process (CheckInProcess)")]
    public void A_damaged_region_is_refused_at_open_with_the_check_s_report_either_way(bool inProcess)
    {
        var bytes = File.ReadAllBytes(_region);
        Flip(bytes.AsSpan().IndexOf(_victim.AsSpan(100_000, 64)) + 10);
        var logger = new ListLogger();
        var options = new PramFsImageStoreOptions { Region = _region, MountPoint = Path.Combine(_dir, "mnt2"), CheckInProcess = inProcess, Logger = logger };

        var e = Assert.Throws<PramFsCheckFailedException>(() => PramFsImageStore.Open(options));
        var direct = PramFsImageStore.CheckRegion(_region);

        Assert.Multiple(() =>
        {
            Assert.That(e!.Message, Does.Contain("victim.img"));
            Assert.That(direct.ExitCode, Is.EqualTo(PramFsTool.FsckCorrupt));
            Assert.That(direct.Output, Is.EqualTo(Tool("fsck", _region).Output), "the public check reports what the tool reports");
            Assert.That(logger.Entries.Any(l => l.Id == 4056), Is.EqualTo(inProcess), "the library is used at open only when asked");
        });
    }

    [Test]
    public void A_region_that_is_not_there_is_named()
    {
        var e = Assert.Throws<ImageStoreException>(() => PramFsNative.Check("/nonexistent/pramfs.img", repair: false));
        Assert.That(e!.Message, Does.Contain("/nonexistent/pramfs.img").And.Contain("No such file"));
    }

    private (int ExitCode, string Output) Tool(params string[] args) => PramFsTool.Run(_tool, args, TimeSpan.FromMinutes(1));

    private void Flip(long at)
    {
        using var f = new FileStream(_region, FileMode.Open, FileAccess.ReadWrite);
        f.Position = at;
        var b = f.ReadByte();
        f.Position = at;
        f.WriteByte((byte)(b ^ 0x5a));
    }
}
