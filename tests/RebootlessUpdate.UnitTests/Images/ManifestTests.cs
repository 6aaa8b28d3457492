using System.Text;
using RebootlessUpdate.Images;

namespace RebootlessUpdate.UnitTests.Images;

public class ManifestTests
{
    private static CheckpointManifest Sample() => new()
    {
        SetId = "20261126T063200Z-0a1b2c3d",
        HostMachineId = "0123456789abcdef0123456789abcdef",
        KernelRelease = "6.12.117+deb13-amd64",
        CriuVersion = "4.1.1",
        Targets = ["pid:4242", "container:web"],
        TotalBytes = 12,
        CreatedAt = new DateTimeOffset(2026, 11, 26, 6, 32, 0, TimeSpan.Zero),
        SealedAt = new DateTimeOffset(2026, 11, 26, 6, 32, 1, 500, TimeSpan.Zero),
        Files =
        [
            new ManifestEntry { Path = "00-pid-42/parent", Size = 0, SymlinkTarget = "../00-pid-42-pre" },
            new ManifestEntry { Path = "pages-1.img", Size = 12, Xxh128 = new string('a', 32), ChunkSize = 1 << 20, ChunkXxh128 = [new string('c', 32)] },
        ],
    };

    [Test]
    public void Manifest_round_trips_through_the_file_format()
    {
        var original = Sample();

        var read = ManifestFormat.Read(ManifestFormat.Write(original), "manifest.json");

        Assert.Multiple(() =>
        {
            Assert.That(read with { Targets = [], Files = [] }, Is.EqualTo(original with { Targets = [], Files = [] }));
            Assert.That(read.Targets, Is.EqualTo(original.Targets));
            Assert.That(read.Files, Is.EqualTo(original.Files));
        });
    }

    [Test]
    public void Manifest_file_is_versioned_json_with_a_body_hash()
    {
        var text = Encoding.UTF8.GetString(ManifestFormat.Write(Sample()));

        Assert.That(text, Does.Contain("\"format\": \"rebootless-checkpoint-manifest\"")
            .And.Contain("\"version\": 1").And.Contain("\"bodyXxh128\"").And.Contain("\"hostMachineId\"").And.Contain("\"xxh128\""));
    }

    [TestCase("", "empty")]
    [TestCase("{\"format\": \"rebootless-checkpoint-manifest\", \"vers", "not valid JSON")]
    [TestCase("[1,2,3]", "is not a rebootless-checkpoint-manifest")]
    [TestCase("{\"format\": \"rebootless-checkpoint-manifest\", \"version\": 99, \"bodyXxh128\": \"\", \"body\": {}}", "version 99 is not supported")]
    [TestCase("{\"format\": \"rebootless-checkpoint-manifest\", \"version\": 1}", "lacks")]
    public void Broken_manifests_are_rejected_with_a_clear_reason(string content, string expected)
    {
        Assert.That(() => ManifestFormat.Read(Encoding.UTF8.GetBytes(content), "/store/sets/x/manifest.json"),
            Throws.TypeOf<ManifestCorruptException>().With.Message.Contains(expected).And.Message.Contains("/store/sets/x/manifest.json"));
    }

    [TestCase(1 << 20, 2, "expected 1")]
    [TestCase(1000, 1, "not a power of two")]
    [TestCase(null, 1, "without a chunk size")]
    [TestCase(1 << 20, 1, "not 32 lowercase hex", "ABC")]
    public void Chunk_hashes_that_do_not_fit_the_file_are_rejected(int? chunkSize, int count, string expected, string hash = "")
    {
        var bad = Sample() with
        {
            Files =
            [
                new ManifestEntry
                {
                    Path = "pages-1.img", Size = 12, Xxh128 = new string('a', 32), ChunkSize = chunkSize,
                    ChunkXxh128 = [.. Enumerable.Repeat(hash.Length > 0 ? hash : new string('b', 32), count)],
                },
            ],
        };

        Assert.That(() => ManifestFormat.Read(ManifestFormat.Write(bad), "m"),
            Throws.TypeOf<ManifestCorruptException>().With.Message.Contains("the entry of 'pages-1.img'").And.Message.Contains(expected));
    }

    [Test]
    public void A_truncated_manifest_is_rejected()
    {
        var bytes = ManifestFormat.Write(Sample());

        Assert.That(() => ManifestFormat.Read(bytes.AsSpan(0, bytes.Length * 2 / 3), "m"),
            Throws.TypeOf<ManifestCorruptException>().With.Message.Contains("truncated"));
    }

    [Test]
    public void An_altered_body_that_still_parses_is_caught_by_the_body_hash()
    {
        var text = Encoding.UTF8.GetString(ManifestFormat.Write(Sample())).Replace("\"size\": 12", "\"size\": 13", StringComparison.Ordinal);

        Assert.That(() => ManifestFormat.Read(Encoding.UTF8.GetBytes(text), "m"),
            Throws.TypeOf<ManifestCorruptException>().With.Message.Contains("altered or damaged"));
    }

    [TestCase("../etc/passwd", "escapes the set")]
    [TestCase("/etc/passwd", "absolute")]
    [TestCase("a/../../b", "escapes the set")]
    [TestCase("a//b", "not normalised")]
    [TestCase("./a", "not normalised")]
    [TestCase("a/", "not normalised")]
    public void Manifest_paths_that_escape_or_are_not_normalised_are_rejected(string path, string expected)
    {
        var manifest = Sample() with { Files = [new ManifestEntry { Path = path, Size = 12, Xxh128 = new string('a', 32) }] };

        Assert.That(() => ManifestFormat.Read(ManifestFormat.Write(manifest), "m"),
            Throws.TypeOf<UnsafeSetPathException>().With.Message.Contains(expected));
    }

    [TestCase("00-a/parent", "../00-a-pre", true)]
    [TestCase("00-a/parent", "../pre-1", true)]
    [TestCase("pages-1.img", "00-a", false)]
    [TestCase("00-a/pages-1.img", "../00-a-pre", false)]
    [TestCase("parent", "00-a-pre", false)]
    [TestCase("00-a/b/parent", "../00-a-pre", false)]
    [TestCase("00-a/parent", "/etc", false)]
    [TestCase("00-a/parent", "../..", false)]
    [TestCase("00-a/parent", "../.", false)]
    [TestCase("00-a/parent", "../00-a", false)]
    [TestCase("00-a/parent", "../x/../../etc", false)]
    [TestCase("00-a/parent", "../00-a-pre/", false)]
    [TestCase("00-a/parent", "00-a-pre", false)]
    public void The_only_link_a_set_may_hold_is_CRIUs_parent_link_to_a_sibling_folder(string link, string target, bool allowed)
    {
        Assert.That(SetPaths.CheckParentLink(link, target), allowed ? Is.Null : Is.Not.Null);
    }
}
