using System.Collections.Concurrent;
using RebootlessUpdate.Criu;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.UnitTests.Criu;

/// <summary>
/// Serving pages from hand-built images folders: a final dump on two pre-dumps, each page tagged with its address and the
/// folder it sits in, so a test sees which copy it got.
/// </summary>
public class CriuImagesPageSourceTests
{
    private const int Page = ILazyPageSource.PageSize;
    private const uint Parent = (uint)CriuPageState.Parent;
    private const uint Lazy = (uint)CriuPageState.Lazy;
    private const uint Present = (uint)CriuPageState.Present;

    private string _root = null!;
    private string _final = null!;

    [SetUp]
    public void SetUp()
    {
        _root = Directory.CreateTempSubdirectory("rebootless-pagesource-").FullName;
        // final: 0x10000-0x14000 here, 0x14000-0x16000 in the parent, 0x16000 here, 0x20000-0x22000 lazy only (never written).
        _final = Folder("final", "final-pre", 0, new(0x10000, 4, Present | Lazy), new(0x14000, 2, Parent), new(0x16000, 1, Present), new(0x20000, 2, Lazy));
        // final-pre: 0x14000 here, 0x15000 one level up; 0x30000 in its parent, though the final dump does not ask for it.
        Folder("final-pre", "final-pre-pre", 1, new(0x13000, 2, Present), new(0x15000, 1, Parent), new(0x30000, 1, Parent));
        // final-pre-pre: 0x15000 here; it has no parent.
        Folder("final-pre-pre", null, 2, new PagemapRecord(0x15000, 1, Present | Lazy));
    }

    [TearDown]
    public void TearDown() => Directory.Delete(_root, recursive: true);

    /// <summary>What a page of <paramref name="level"/> (0: the final dump) at <paramref name="address"/> holds.</summary>
    private static ulong Tag(ulong address, int level) => address + (ulong)level;

    /// <summary>Writes an images folder for pid 1 whose present pages are tagged; returns its path.</summary>
    private string Folder(string name, string? parent, int level, params PagemapRecord[] entries)
    {
        var dir = Directory.CreateDirectory(Path.Combine(_root, name)).FullName;
        CriuImageFiles.WritePagemap(dir, 1, 5, entries);
        using var pages = File.Create(Path.Combine(dir, "pages-5.img"));
        foreach (var e in entries.Where(e => (e.Flags!.Value & Present) != 0))
        {
            for (ulong i = 0; i < e.Pages; i++)
            {
                pages.Write(CriuImageFiles.TaggedPage(Tag(e.Address + (i * Page), level)));
            }
        }

        if (parent is not null)
        {
            File.CreateSymbolicLink(Path.Combine(dir, "parent"), "../" + parent);
        }

        return dir;
    }

    private static ulong[] Tags(ReadOnlySpan<byte> pages)
    {
        var tags = new ulong[pages.Length / Page];
        for (var i = 0; i < tags.Length; i++)
        {
            tags[i] = BitConverter.ToUInt64(pages[(i * Page)..]);
            Assert.That(pages.Slice(i * Page, Page).ToArray(), Is.EqualTo(CriuImageFiles.TaggedPage(tags[i])), $"page {i} is whole");
        }

        return tags;
    }

    [Test]
    public async Task A_read_follows_the_chain_page_by_page_and_stops_where_the_final_dump_ends()
    {
        using var source = new CriuImagesPageSource(_final);
        var buffer = new byte[10 * Page];

        var got = await source.ReadPagesAsync(1, 0x10000, buffer, CancellationToken.None);

        Assert.Multiple(() =>
        {
            Assert.That(got, Is.EqualTo(7), "0x17000 is in no entry of the final dump");
            Assert.That(Tags(buffer.AsSpan(0, got * Page)), Is.EqualTo(new[]
            {
                Tag(0x10000, 0), Tag(0x11000, 0), Tag(0x12000, 0), Tag(0x13000, 0), Tag(0x14000, 1), Tag(0x15000, 2), Tag(0x16000, 0),
            }));
        });
    }

    [TestCase(0x13000UL, 1, 0, 1)]
    [TestCase(0x14000UL, 1, 1, 1)]
    [TestCase(0x15000UL, 1, 2, 1)]
    [TestCase(0x16000UL, 1, 0, 1)]
    [TestCase(0x15000UL, 3, 2, 2)]
    public async Task Each_page_comes_from_the_folder_that_holds_it(ulong address, int pages, int level, int expected)
    {
        using var source = new CriuImagesPageSource(_final);
        var buffer = new byte[pages * Page];

        var got = await source.ReadPagesAsync(1, address, buffer, CancellationToken.None);

        Assert.That(Tags(buffer.AsSpan(0, Page)), Is.EqualTo(new[] { Tag(address, level) }));
        Assert.That(got, Is.EqualTo(expected));
    }

    [Test]
    public async Task The_verifier_sees_each_run_before_it_is_read_with_runs_of_one_file_merged()
    {
        var verifier = new RecordingVerifier();
        using var source = new CriuImagesPageSource(_final, verifier);

        await source.ReadPagesAsync(1, 0x11000, new byte[6 * Page], CancellationToken.None);

        Assert.That(verifier.Calls, Is.EqualTo(new[]
        {
            (Path.Combine(_final, "pages-5.img"), 1L * Page, 3 * Page),
            (Path.Combine(_root, "final-pre", "pages-5.img"), 1L * Page, Page),
            (Path.Combine(_root, "final-pre-pre", "pages-5.img"), 0L, Page),
            (Path.Combine(_final, "pages-5.img"), 4L * Page, Page),
        }));
    }

    [Test]
    public void A_verifier_that_refuses_ends_the_read_and_cancellation_stays_cancellation()
    {
        var refusing = new RecordingVerifier { Failure = new InvalidDataException("chunk 0 of pages-5.img does not match its hash") };
        using var source = new CriuImagesPageSource(_final, refusing);
        using var cancelled = new CancellationTokenSource();
        cancelled.Cancel();
        using var cancelling = new CriuImagesPageSource(_final, new RecordingVerifier { Failure = new OperationCanceledException(cancelled.Token) });

        Assert.Multiple(() =>
        {
            Assert.That(async () => await source.ReadPagesAsync(1, 0x10000, new byte[Page], CancellationToken.None),
                Throws.TypeOf<LazyPageSourceException>().With.Message.StartsWith("pid 1, page 10000: " + Path.Combine(_final, "pages-5.img") + " at 0 (4096 bytes): chunk 0")
                    .And.InnerException.TypeOf<InvalidDataException>());
            Assert.That(async () => await cancelling.ReadPagesAsync(1, 0x10000, new byte[Page], cancelled.Token), Throws.InstanceOf<OperationCanceledException>());
        });
    }

    [TestCase(2, 0x10000UL, "pid 2, page 10000 is not in the images: {final}/pagemap-2.img does not exist")]
    [TestCase(1, 0x18000UL, "pid 1, page 18000 is not in the images: no entry of {final}/pagemap-1.img covers it")]
    [TestCase(1, 0x20000UL, "pid 1, page 20000 is not in the images: its entry in {final}/pagemap-1.img is Lazy: the pages were never written to an image")]
    public void Pages_absent_from_the_set_are_refused_naming_pid_address_and_file(int pid, ulong address, string message)
    {
        using var source = new CriuImagesPageSource(_final);

        Assert.That(async () => await source.ReadPagesAsync(pid, address, new byte[Page], CancellationToken.None),
            Throws.TypeOf<LazyPageSourceException>().With.Message.EqualTo(message.Replace("{final}", _final, StringComparison.Ordinal)));
    }

    [Test]
    public void A_parent_entry_where_the_chain_ends_is_refused()
    {
        Folder("final-pre-pre", null, 2, new PagemapRecord(0x15000, 1, Parent));
        using var source = new CriuImagesPageSource(_final);

        Assert.That(async () => await source.ReadPagesAsync(1, 0x15000, new byte[Page], CancellationToken.None),
            Throws.TypeOf<LazyPageSourceException>().With.Message.EqualTo(
                $"pid 1, page 15000 is not in the images: its entry says the parent dump holds it, but {Path.Combine(_root, "final-pre-pre")} has no parent link (or it leads nowhere)"));
    }

    [Test]
    public void A_parent_chain_that_loops_is_refused()
    {
        Folder("final-pre-pre", "final-pre", 2, new PagemapRecord(0x15000, 1, Parent));
        using var source = new CriuImagesPageSource(_final);

        Assert.That(async () => await source.ReadPagesAsync(1, 0x15000, new byte[Page], CancellationToken.None),
            Throws.TypeOf<LazyPageSourceException>().With.Message.EqualTo(
                $"pid 1, page 15000: the parent chain loops: {Path.Combine(_root, "final-pre-pre", "parent")} leads back to {Path.Combine(_root, "final-pre")}"));
    }

    [Test]
    public async Task A_parent_chain_of_64_links_is_followed_and_a_longer_one_refused()
    {
        var top = Folder("chain0", "chain1", 0, new(0x1000, 1, Parent), new(0x2000, 1, Parent));
        for (var i = 1; i <= CriuImagesPageSource.MaxChainLength + 1; i++)
        {
            Folder($"chain{i}", $"chain{i + 1}", i, new(0x1000, 1, i == CriuImagesPageSource.MaxChainLength ? Present : Parent), new(0x2000, 1, Parent));
        }

        using var source = new CriuImagesPageSource(top);
        var buffer = new byte[Page];

        Assert.That(await source.ReadPagesAsync(1, 0x1000, buffer, CancellationToken.None), Is.EqualTo(1));
        Assert.That(Tags(buffer), Is.EqualTo(new[] { Tag(0x1000, CriuImagesPageSource.MaxChainLength) }));
        Assert.That(async () => await source.ReadPagesAsync(1, 0x2000, buffer, CancellationToken.None),
            Throws.TypeOf<LazyPageSourceException>().With.Message.Contains("the parent chain is longer than 64 links"));
    }

    [Test]
    public void A_pages_image_shorter_than_its_pagemap_says_is_refused()
    {
        var pages = Path.Combine(_final, "pages-5.img");
        File.WriteAllBytes(pages, File.ReadAllBytes(pages)[..(4 * Page)]);
        using var source = new CriuImagesPageSource(_final);

        Assert.That(async () => await source.ReadPagesAsync(1, 0x16000, new byte[Page], CancellationToken.None),
            Throws.TypeOf<LazyPageSourceException>().With.Message.EqualTo(
                $"pid 1, page 16000 is not in the images: {pages} ends at 16384, short of the 4096 bytes at 16384 that its pagemap promises"));
    }

    [Test]
    public void A_damaged_pagemap_is_refused_naming_the_folder()
    {
        File.WriteAllBytes(Path.Combine(_final, "pagemap-1.img"), [1, 2, 3]);
        using var source = new CriuImagesPageSource(_final);

        Assert.That(async () => await source.ReadPagesAsync(1, 0x10000, new byte[Page], CancellationToken.None),
            Throws.TypeOf<LazyPageSourceException>().With.Message.StartsWith($"pid 1, page 10000: cannot read its pagemap in {_final}: ")
                .And.InnerException.TypeOf<InvalidDataException>());
    }

    [Test]
    public void Misuse_is_an_argument_error_and_a_disposed_source_says_so()
    {
        var source = new CriuImagesPageSource(_final);

        Assert.Multiple(() =>
        {
            Assert.That(async () => await source.ReadPagesAsync(1, 0x10001, new byte[Page], CancellationToken.None), Throws.ArgumentException);
            Assert.That(async () => await source.ReadPagesAsync(1, 0x10000, Array.Empty<byte>(), CancellationToken.None), Throws.ArgumentException);
            Assert.That(async () => await source.ReadPagesAsync(1, 0x10000, new byte[Page + 1], CancellationToken.None), Throws.ArgumentException);
            Assert.That(async () => await source.ReadPagesAsync(1, 0xffff_ffff_ffff_f000, new byte[2 * Page], CancellationToken.None), Throws.ArgumentException);
        });
        source.Dispose();
        Assert.That(async () => await source.ReadPagesAsync(1, 0x10000, new byte[Page], CancellationToken.None), Throws.TypeOf<ObjectDisposedException>());
    }

    [Test]
    public async Task Many_readers_at_once_each_get_their_own_pages()
    {
        using var source = new CriuImagesPageSource(_final);
        ulong[] addresses = [0x10000, 0x11000, 0x12000, 0x13000, 0x14000, 0x15000, 0x16000];
        int[] levels = [0, 0, 0, 0, 1, 2, 0];
        var wrong = new ConcurrentBag<string>();

        await Parallel.ForAsync(0, 2000, async (i, ct) =>
        {
            var k = i % addresses.Length;
            var buffer = new byte[Page];
            await source.ReadPagesAsync(1, addresses[k], buffer, ct);
            if (BitConverter.ToUInt64(buffer) != Tag(addresses[k], levels[k]))
            {
                wrong.Add($"{addresses[k]:x}");
            }
        });

        Assert.That(wrong, Is.Empty);
    }

    private sealed class RecordingVerifier : IPageChunkVerifier
    {
        public List<(string File, long Offset, int Length)> Calls { get; } = [];

        public Exception? Failure { get; init; }

        public ValueTask VerifyAsync(string file, long offset, int length, CancellationToken cancellationToken)
        {
            lock (Calls)
            {
                Calls.Add((file, offset, length));
            }

            return Failure is null ? ValueTask.CompletedTask : ValueTask.FromException(Failure);
        }
    }
}
