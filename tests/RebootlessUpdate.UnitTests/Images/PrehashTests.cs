using RebootlessUpdate.Images;

namespace RebootlessUpdate.UnitTests.Images;

/// <summary>Hashing a folder ahead of sealing (the pre-dump, while the workloads run) and what the seal does with it.</summary>
public class PrehashTests
{
    private StoreFixture _f = null!;

    [SetUp]
    public void SetUp() => _f = new StoreFixture();

    [TearDown]
    public void TearDown() => _f.Dispose();

    private static SealOptions Seal => new() { CriuVersion = "4.1.1", KernelRelease = "6.12.117+deb13-amd64" };

    [Test]
    public async Task A_prehashed_folder_seals_to_the_same_manifest_and_verifies()
    {
        var plain = _f.FillSet();
        var pre = _f.FillSet();

        await _f.Store.PrehashAsync(pre, "sub");
        var a = await _f.Store.SealAsync(plain, Seal);
        var b = await _f.Store.SealAsync(pre, Seal);
        var verified = await _f.Store.VerifyAsync(pre.Id);

        Assert.Multiple(() =>
        {
            Assert.That(pre.Prehashed.Keys, Is.EquivalentTo(new[] { "sub/fdinfo-2.img" }));
            Assert.That(b.Files, Is.EqualTo(a.Files));
            Assert.That(verified.IsValid, Is.True, verified.Describe());
        });
    }

    [Test]
    public async Task The_seal_takes_a_prehash_of_an_unchanged_file_without_reading_it()
    {
        var set = _f.FillSet();
        await _f.Store.PrehashAsync(set, "sub");
        // Plant a wrong hash under the file's real identity: a seal that re-read the file would not write it.
        var entry = set.Prehashed["sub/fdinfo-2.img"];
        set.Prehashed["sub/fdinfo-2.img"] = entry with { Digest = entry.Digest with { Hash = new string('0', 32) } };

        var manifest = await _f.Store.SealAsync(set, Seal);
        var verified = await _f.Store.VerifyAsync(set.Id);

        Assert.Multiple(() =>
        {
            Assert.That(manifest.Files.Single(f => f.Path == "sub/fdinfo-2.img").Xxh128, Is.EqualTo(new string('0', 32)));
            Assert.That(verified.Issues.Select(i => i.Path), Is.EqualTo(new[] { "sub/fdinfo-2.img" }));
        });
    }

    [Test]
    public async Task A_file_rewritten_after_its_prehash_is_hashed_again_at_seal()
    {
        var set = _f.FillSet();
        var file = Path.Combine(set.ImagesDirectory, "sub", "fdinfo-2.img");
        await _f.Store.PrehashAsync(set, "sub");
        var before = set.Prehashed["sub/fdinfo-2.img"].Digest.Hash;

        // Same size, other content, written at once (within the file system's clock tick if it is coarse).
        using (var stream = new FileStream(file, FileMode.Open, FileAccess.Write))
        {
            stream.Write("FDS"u8);
        }

        var manifest = await _f.Store.SealAsync(set, Seal);
        var verified = await _f.Store.VerifyAsync(set.Id);

        Assert.Multiple(() =>
        {
            Assert.That(manifest.Files.Single(f => f.Path == "sub/fdinfo-2.img").Xxh128, Is.Not.EqualTo(before));
            Assert.That(verified.IsValid, Is.True, verified.Describe());
        });
    }

    [Test]
    public void Bad_folders_are_refused()
    {
        var set = _f.FillSet();
        Assert.Multiple(() =>
        {
            Assert.That(() => _f.Store.PrehashAsync(set, "../outside"), Throws.ArgumentException);
            Assert.That(() => _f.Store.PrehashAsync(set, "missing"), Throws.InstanceOf<DirectoryNotFoundException>());
        });
    }
}

/// <summary>Verifying part of a set (what the resume checks first, and what it checks while restoring).</summary>
public class PartialVerificationTests
{
    private StoreFixture _f = null!;

    [SetUp]
    public void SetUp() => _f = new StoreFixture();

    [TearDown]
    public void TearDown() => _f.Dispose();

    [Test]
    public async Task Include_checks_only_the_chosen_files_and_ReportUnlisted_off_skips_strangers()
    {
        var set = await _f.SealedSet();
        await File.WriteAllTextAsync(Path.Combine(set.ImagesDirectory, "pages-1.img"), "damaged");
        await File.WriteAllTextAsync(Path.Combine(set.ImagesDirectory, "stranger.img"), "x");

        var withoutPages = await _f.Store.VerifyAsync(set.Id, new VerifyOptions { Include = p => !p.EndsWith("pages-1.img", StringComparison.Ordinal) });
        var onlyPages = await _f.Store.VerifyAsync(set.Id, new VerifyOptions { Include = p => p == "pages-1.img", ReportUnlisted = false });
        var all = await _f.Store.VerifyAsync(set.Id);

        Assert.Multiple(() =>
        {
            Assert.That(withoutPages.Issues.Select(i => i.Path), Is.EqualTo(new[] { "stranger.img" }));
            Assert.That(withoutPages.BytesHashed, Is.EqualTo(19 + 4 + 3));
            Assert.That(onlyPages.Issues.Select(i => i.Path), Is.EqualTo(new[] { "pages-1.img" }));
            Assert.That(all.Issues.Select(i => i.Path), Is.EquivalentTo(new[] { "pages-1.img", "stranger.img" }));
        });
    }

    [TestCase("00-pid-1/pages-1.img", true)]
    [TestCase("00-pid-1-pre/pages-12.img", true)]
    [TestCase("pages-3.img", true)]
    [TestCase("00-pid-1/pagemap-1.img", false)]
    [TestCase("00-pid-1/pages-1.img.tmp", false)]
    [TestCase("pages-dir/core-1.img", false)]
    public void Page_images_are_recognised(string path, bool expected) =>
        Assert.That(RebootlessUpdate.Stages.SetFiles.IsPageImage(path), Is.EqualTo(expected));
}
