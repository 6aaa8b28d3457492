using RebootlessUpdate.Images;
using RebootlessUpdate.Images.PramFs;

namespace RebootlessUpdate.UnitTests.PramFs;

/// <summary>The rules that decide whether a region may be formatted, and option validation.</summary>
public class PramFsRegionTests
{
    [Test]
    public void An_all_zero_header_is_empty()
    {
        Assert.That(PramFsTool.Classify(new byte[65536]), Is.EqualTo(RegionContent.Empty));
        Assert.That(PramFsTool.Classify([]), Is.EqualTo(RegionContent.Empty));
    }

    [TestCase(0)]
    [TestCase(4096)]
    public void A_superblock_magic_in_either_slot_is_ours(int offset)
    {
        var head = new byte[65536];
        "PRAMFSSB"u8.CopyTo(head.AsSpan(offset));
        head[30000] = 0x77; // metadata and data are not zero
        Assert.That(PramFsTool.Classify(head), Is.EqualTo(RegionContent.PramFs));
    }

    [TestCase(0)]
    [TestCase(1080)]
    [TestCase(65535)]
    public void Any_other_non_zero_byte_is_foreign(int offset)
    {
        var head = new byte[65536];
        head[offset] = 1;
        Assert.That(PramFsTool.Classify(head), Is.EqualTo(RegionContent.Foreign));
    }

    [Test]
    public void A_region_magic_alone_is_not_taken_for_a_superblock()
    {
        var head = new byte[65536];
        "PRAMFSRG"u8.CopyTo(head);
        Assert.That(PramFsTool.Classify(head), Is.EqualTo(RegionContent.Foreign), "region 1..n headers are only valid with region 0");
    }

    [Test]
    public void A_configured_binary_that_does_not_exist_is_named_with_what_to_do()
    {
        var e = Assert.Throws<ImageStoreException>(() => PramFsTool.Locate("/nonexistent/pramfs"));
        Assert.That(e!.Message, Does.Contain("/nonexistent/pramfs").And.Contain("cmake"));
    }

    [Test]
    public void Options_are_validated_before_anything_runs()
    {
        Assert.Throws<ArgumentException>(() => PramFsImageStore.Open(new PramFsImageStoreOptions { Region = " " }));
        Assert.Throws<ArgumentOutOfRangeException>(() => PramFsImageStore.Open(new PramFsImageStoreOptions { Region = "/dev/null", DaemonTimeout = TimeSpan.Zero }));
    }

    [Test]
    public void Check_results_say_clean_only_for_exit_zero()
    {
        Assert.That(new PramFsCheckResult(0, "clean").IsClean, Is.True);
        Assert.That(new PramFsCheckResult(1, "repaired").IsClean, Is.False);
        Assert.That(new PramFsCheckFailedException("/r", new PramFsCheckResult(2, "error: x\n")).Message,
            Does.Contain("pramfs fsck -r /r").And.Contain("error: x").And.Contain("exit 2"));
    }
}
