using Microsoft.Extensions.Logging;
using RebootlessUpdate.Images;
using RebootlessUpdate.Images.PramFs;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.UnitTests.PramFs;

/// <summary>
/// Reading <c>pramfs info</c>'s output, and the fallback from libpramfs to the tool when the library
/// cannot be loaded (a fake tool prints a canned report; no library is loaded in this process).
/// </summary>
public class PramFsInfoTests
{
    private const string Output = """
        format_version: 1
        uuid: 0a1b2c3d-4e5f-4061-8273-94a5b6c7d8e9
        generation: 17
        block_size: 4096
        size: 67108864
        data_blocks: 15872
        free_blocks: 15700
        inodes: 5
        metadata_area_bytes: 1048576
        metadata_bytes: 612
        files: 2
        directories: 2
        symlinks: 1
        file_bytes: 350000
        created_ns: 1795000000123456789
        committed_ns: 1795000100987654321
        regions: 1
        region 0: path=/dev/shm/r.img base=0x0 length=67108864 first_block=0 uuid=11111111-2222-4333-8444-555555555555
        """;

    private string _dir = null!;

    [SetUp]
    public void SetUp() => _dir = Directory.CreateTempSubdirectory("rebootless-pramfs-info-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    [Test]
    public void The_tools_info_report_is_read_field_by_field()
    {
        var info = PramFsInfo.Parse(Output);

        Assert.That(info, Is.EqualTo(new PramFsInfo
        {
            FormatVersion = 1,
            Uuid = Guid.Parse("0a1b2c3d-4e5f-4061-8273-94a5b6c7d8e9"),
            Generation = 17,
            SizeBytes = 64 << 20,
            BlockSize = 4096,
            RegionCount = 1,
            DataBlocks = 15872,
            FreeBlocks = 15700,
            FreeBytes = 15700L * 4096,
            Inodes = 5,
            Files = 2,
            Directories = 2,
            Symlinks = 1,
            FileBytes = 350000,
            MetadataAreaBytes = 1 << 20,
            MetadataBytes = 612,
            CreatedUnixNanoseconds = 1795000000123456789,
            CommittedUnixNanoseconds = 1795000100987654321,
        }));
        Assert.That(info.CommittedAt, Is.EqualTo(DateTimeOffset.FromUnixTimeSeconds(1795000100).AddTicks(9876543)));
    }

    [Test]
    public void A_missing_or_garbled_field_is_named()
    {
        var e = Assert.Throws<FormatException>(() => PramFsInfo.Parse(Output.Replace("symlinks: 1\n", "", StringComparison.Ordinal)));
        Assert.That(e!.Message, Does.Contain("symlinks"));
        e = Assert.Throws<FormatException>(() => PramFsInfo.Parse(Output.Replace("generation: 17", "generation: -3", StringComparison.Ordinal)));
        Assert.That(e!.Message, Does.Contain("generation").And.Contain("-3"));
    }

    [Test]
    public void A_library_that_is_not_libpramfs_is_refused_with_every_place_tried()
    {
        var tool = FakeTool();
        File.WriteAllText(Path.Combine(_dir, "libpramfs.so"), "not an ELF file");

        Assert.That(PramFsNative.TryLoad(tool, out var reason), Is.False);

        Assert.That(reason, Does.Contain(Path.Combine(_dir, "libpramfs.so"))
            .And.Contain(Path.Combine(Path.GetDirectoryName(_dir)!, "lib", "libpramfs.so.1") + ": no such file")
            .And.Contain("libpramfs.so.1:"));
    }

    [Test]
    public void Without_the_library_info_runs_the_tool_and_says_so_in_a_warning()
    {
        var tool = FakeTool();
        var logger = new ListLogger();

        var info = PramFsImageStore.ReadInfo("/dev/shm/r.img", tool, logger);

        Assert.That(info, Is.EqualTo(PramFsInfo.Parse(Output)));
        Assert.That(File.ReadAllText(Path.Combine(_dir, "args")).Trim(), Is.EqualTo("info /dev/shm/r.img"));
        var warning = logger.Entries.Single(e => e.Id == 4055);
        Assert.That(warning.Level, Is.EqualTo(LogLevel.Warning));
        Assert.That(warning.Message, Does.Contain("libpramfs cannot be loaded").And.Contain(tool).And.Contain("libpramfs.so"));
    }

    [Test]
    public void Without_the_library_a_failing_info_is_reported_with_what_the_tool_said()
    {
        var tool = FakeTool(exitCode: 1, text: "pramfs info: /dev/shm/r.img: failed: Device or resource busy");

        var e = Assert.Throws<ImageStoreException>(() => PramFsImageStore.ReadInfo("/dev/shm/r.img", tool));

        Assert.That(e!.Message, Does.Contain("exit 1").And.Contain("Device or resource busy").And.Contain("/dev/shm/r.img"));
    }

    /// <summary>A pramfs stand-in that records its arguments and prints <paramref name="text"/>.</summary>
    private string FakeTool(int exitCode = 0, string text = Output)
    {
        var tool = Path.Combine(_dir, "pramfs");
        File.WriteAllText(Path.Combine(_dir, "out"), text + "\n");
        File.WriteAllText(tool, $"#!/bin/sh\necho \"$@\" >'{_dir}/args'\ncat '{_dir}/out'\nexit {exitCode}\n");
        File.SetUnixFileMode(tool, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        return tool;
    }
}
