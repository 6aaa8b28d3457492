using RebootlessUpdate.Images;

namespace RebootlessUpdate.UnitTests.Images;

/// <summary>
/// Chunk hashes of page images (issue 16): sealed with the set, checked by <c>images verify</c> with the offset of the
/// first altered chunk, and checked chunk by chunk for pages served on demand.
/// </summary>
public class ChunkHashTests
{
    private const int Chunk = FileHasher.ChunkSize;
    private StoreFixture _f = null!;

    [SetUp]
    public void SetUp() => _f = new StoreFixture();

    [TearDown]
    public void TearDown() => _f.Dispose();

    private static SealOptions Seal => new() { CriuVersion = "4.1.1", KernelRelease = "6.12.117+deb13-amd64" };

    /// <summary>A set whose page image spans 3.5 chunks, in a dump folder with a pre-dump folder beside it.</summary>
    private async Task<(CheckpointSet Set, CheckpointManifest Manifest, string Pages)> SealedWithPages()
    {
        var set = _f.FillSet();
        var folder = Directory.CreateDirectory(Path.Combine(set.ImagesDirectory, "01-pid-7")).FullName;
        var pages = Path.Combine(folder, "pages-1.img");
        var bytes = new byte[(3 * Chunk) + (Chunk / 2)];
        new Random(7).NextBytes(bytes);
        await File.WriteAllBytesAsync(pages, bytes);
        await File.WriteAllTextAsync(Path.Combine(folder, "pagemap-7.img"), "not a page image");
        var manifest = await _f.Store.SealAsync(set, Seal);
        return (set, manifest, pages);
    }

    [Test]
    public async Task Page_images_and_only_they_are_sealed_with_one_hash_per_mebibyte()
    {
        var (_, manifest, _) = await SealedWithPages();

        var pages = manifest.Files.Single(f => f.Path == "01-pid-7/pages-1.img");
        Assert.Multiple(() =>
        {
            Assert.That(pages.ChunkSize, Is.EqualTo(1 << 20));
            Assert.That(pages.ChunkXxh128, Has.Count.EqualTo(4));
            Assert.That(pages.ChunkXxh128!.Distinct().Count(), Is.EqualTo(4), "each chunk hashed on its own");
            Assert.That(manifest.Files.Single(f => f.Path == "pages-1.img").ChunkXxh128, Has.Count.EqualTo(1), "300 000 bytes: one short chunk");
            Assert.That(manifest.Files.Where(f => !f.Path.EndsWith("pages-1.img", StringComparison.Ordinal)).Select(f => f.ChunkXxh128), Has.All.Null);
        });
    }

    [Test]
    public async Task Verify_names_the_offset_of_the_first_altered_chunk()
    {
        var (set, _, pages) = await SealedWithPages();
        StoreFixture.FlipByte(pages, (2 * Chunk) + 4097);

        var result = await _f.Store.VerifyAsync(set.Id);

        var issue = result.Issues.Single();
        Assert.Multiple(() =>
        {
            Assert.That(issue.Kind, Is.EqualTo(VerificationIssueKind.ContentChanged));
            Assert.That(issue.Detail, Does.Contain($"the first altered chunk starts at offset {2 * Chunk}"));
        });
    }

    [Test]
    public async Task The_verifier_checks_each_chunk_once_and_refuses_only_the_altered_one()
    {
        var (set, manifest, pages) = await SealedWithPages();
        StoreFixture.FlipByte(pages, (2 * Chunk) + 100);
        using var verifier = new PageChunkVerifier(set.ImagesDirectory, manifest);

        verifier.Verify(pages, 0, 4096, CancellationToken.None);
        verifier.Verify(pages, Chunk - 4096, 8192, CancellationToken.None);
        verifier.Verify(pages, 3 * Chunk, Chunk / 2, CancellationToken.None);
        var e = Assert.Throws<PageChunkDamagedException>(() => verifier.Verify(pages, (2 * Chunk) + 8192, 4096, CancellationToken.None))!;
        var again = Assert.Throws<PageChunkDamagedException>(() => verifier.Verify(pages, 2 * Chunk, 4096, CancellationToken.None))!;

        Assert.Multiple(() =>
        {
            Assert.That(verifier.ChunksVerified, Is.EqualTo(4), "chunks 0, 1, 3, then 2: each hashed once");
            Assert.That(e.Offset, Is.EqualTo(2 * Chunk));
            Assert.That(e.File, Is.EqualTo(pages));
            Assert.That(e.Message, Does.Contain($"{pages} at offset {2 * Chunk}: the chunk's hash is").And.Contain("the bytes were altered"));
            Assert.That(again.Message, Is.EqualTo(e.Message), "a damaged chunk stays damaged");
        });
    }

    [Test]
    public async Task The_verifier_refuses_files_and_ranges_the_manifest_does_not_vouch_for()
    {
        var (set, manifest, pages) = await SealedWithPages();
        using var verifier = new PageChunkVerifier(set.ImagesDirectory, manifest);
        var outside = Path.Combine(_f.Dir, "pages-1.img");
        await File.WriteAllBytesAsync(outside, new byte[4096]);

        Assert.Multiple(() =>
        {
            Assert.That(() => verifier.Verify(outside, 0, 4096, CancellationToken.None),
                Throws.TypeOf<PageChunkDamagedException>().With.Message.Contains("not a page image that the set's manifest hashed"));
            Assert.That(() => verifier.Verify(Path.Combine(set.ImagesDirectory, "01-pid-7", "pagemap-7.img"), 0, 4096, CancellationToken.None),
                Throws.TypeOf<PageChunkDamagedException>().With.Message.Contains("not a page image"));
            Assert.That(() => verifier.Verify(pages, (3 * Chunk) + (Chunk / 2) - 4096, 8192, CancellationToken.None),
                Throws.TypeOf<PageChunkDamagedException>().With.Message.Contains("outside the"));
        });
    }

    [Test]
    public async Task A_page_image_cut_short_fails_the_chunk_it_ends_in()
    {
        var (set, manifest, pages) = await SealedWithPages();
        using (var stream = new FileStream(pages, FileMode.Open, FileAccess.Write))
        {
            stream.SetLength((3 * Chunk) + 4096);
        }

        using var verifier = new PageChunkVerifier(set.ImagesDirectory, manifest);

        Assert.That(() => verifier.Verify(pages, 3 * Chunk, 4096, CancellationToken.None),
            Throws.TypeOf<PageChunkDamagedException>().With.Message.Contains($"at offset {3 * Chunk}: the file ends 4096 bytes into this {Chunk / 2}-byte chunk"));
    }
}
