using System.Buffers.Binary;
using System.Globalization;
using System.Text.Json;
using RebootlessUpdate.Criu;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Images;

/// <summary>
/// Pagemaps and the page source against real dumps of the testbed's criu 4.1.1: crit decode is the oracle for the
/// pagemap, the pages images and the workload's own memory pattern the oracle for the bytes served, and a real restore
/// the proof that a parent chain synthesised on the host (no soft-dirty here) is one CRIU accepts.
/// </summary>
[NonParallelizable]
public class CriuPagemapDumpTests : CriuTestFixture
{
    private const int Page = ILazyPageSource.PageSize;
    private const int MemoryMiB = 8;

    public CriuPagemapDumpTests()
        : base("rebootless-pagemap-")
    {
    }

    [Test]
    public async Task Every_pagemap_of_a_real_dump_agrees_with_crit_decode()
    {
        using var workload = Workload.StartProgram(NewDir("work"), MemoryMiB);
        var images = NewDir("images");
        await Client.DumpAsync(new CriuDumpOptions { ImagesDirectory = images, Pid = workload.RootPid, LeaveRunning = true });

        var pids = Pids(images);
        Assert.That(pids, Is.Not.Empty);
        foreach (var pid in pids)
        {
            var pagemap = CriuPagemap.Read(images, pid);
            var crit = ProcessRunner.Run(TestbedInfo.Crit, ["decode", "-i", pagemap.Path], TimeSpan.FromMinutes(1));
            Assert.That(crit.ExitCode, Is.Zero, crit.ToString());
            var entries = JsonDocument.Parse(crit.Output).RootElement.GetProperty("entries");

            var expected = entries.EnumerateArray().Skip(1).Select(e => (Number(e.GetProperty("vaddr")), Number(e.GetProperty("nr_pages")), Flags(e))).ToList();
            Assert.Multiple(() =>
            {
                Assert.That(pagemap.PagesId, Is.EqualTo(Number(entries[0].GetProperty("pages_id"))), pagemap.Path);
                Assert.That(pagemap.Entries.Select(e => (e.Address, e.PageCount, (uint)e.Flags)), Is.EqualTo(expected), pagemap.Path);
                Assert.That(pagemap.Entries.Sum(e => e.DataOffset is null ? 0 : (long)e.PageCount * Page),
                    Is.EqualTo(new FileInfo(Path.Combine(images, pagemap.PagesFileName)).Length), "present entries fill the pages image exactly");
            });
            TestContext.Out.WriteLine($"pid {pid}: {pagemap.Entries.Count} entries, flags {string.Join(", ", pagemap.Entries.Select(e => e.Flags).Distinct())}");
        }

        var vmas = CriuVmas.Read(images, 1);
        using var source = new CriuImagesPageSource(images);
        var pattern = FindPattern(source, CriuPagemap.Read(images, 1));
        Assert.That(vmas.Any(v => v.Start <= pattern && pattern + (MemoryMiB << 20) <= v.End), Is.True, "the patterned memory lies in one VMA of mm-1.img");
    }

    [Test]
    public async Task Every_present_page_is_served_as_the_pages_image_holds_it_and_the_workload_s_pattern_is_intact()
    {
        using var workload = Workload.StartProgram(NewDir("work"), MemoryMiB);
        var images = NewDir("images");
        await Client.DumpAsync(new CriuDumpOptions { ImagesDirectory = images, Pid = workload.RootPid, LeaveRunning = true });
        using var source = new CriuImagesPageSource(images);

        var pages = 0L;
        foreach (var pid in Pids(images))
        {
            pages += await AssertServedAsTheImagesHoldThem(source, images, pid);
        }

        var start = FindPattern(source, CriuPagemap.Read(images, 1));
        var memory = new byte[MemoryMiB << 20];
        for (var done = 0; done < memory.Length;)
        {
            done += Page * await source.ReadPagesAsync(1, start + (ulong)done, memory.AsMemory(done, Math.Min(256 * Page, memory.Length - done)), CancellationToken.None);
        }

        Assert.That(memory, Is.EqualTo(Pattern(memory.Length)), "the workload's memory, page for page");
        TestContext.Out.WriteLine($"{pages} pages served; the pattern starts at {start:x}");
    }

    [Test]
    public async Task A_synthesised_parent_chain_is_restored_by_criu_and_served_from_the_parents()
    {
        using var workload = Workload.StartProgram(NewDir("work"), MemoryMiB);
        var checksum = workload.InitialChecksum;
        var original = NewDir("original");
        var final = NewDir("set/final");
        var dump = await Client.DumpAsync(new CriuDumpOptions { ImagesDirectory = final, Pid = workload.RootPid });
        Workload.WaitFor(() => workload.IsAlive ? 0 : 1, "the dumped tree to be gone");
        foreach (var file in Directory.GetFiles(final))
        {
            File.Copy(file, Path.Combine(original, Path.GetFileName(file)));
        }

        // Two pre-dump levels: two pages of every three move up, and one of those two a level further.
        var (pre, movedOnce) = CriuImageFiles.MovePagesToParent(final, (_, a) => a / Page % 3 != 0);
        var (prePre, movedTwice) = CriuImageFiles.MovePagesToParent(pre, (_, a) => a / Page % 3 == 1);
        Assert.That(movedTwice, Is.GreaterThan(0).And.LessThan(movedOnce));

        // (c2) every page the full dump held is served from wherever the chain put it.
        var verifier = new FilesSeen();
        using (var source = new CriuImagesPageSource(final, verifier))
        {
            foreach (var pid in Pids(original))
            {
                await AssertServedAsTheImagesHoldThem(source, original, pid);
            }
        }

        Assert.That(verifier.Files.Select(Path.GetDirectoryName).Distinct().Order(), Is.EqualTo(new[] { final, pre, prePre }.Order()), "pages came from all three levels");

        // (c1) CRIU itself restores the synthesised chain: the workload's memory checksum is the one it started with.
        var restore = await Client.RestoreAsync(new CriuRestoreOptions { ImagesDirectory = final });
        workload.RootPid = restore.Pid;
        var verdict = workload.Check();
        TestContext.Out.WriteLine($"{movedOnce} pages moved to {pre}, {movedTwice} of them to {prePre}; dump {dump.Statistics}; restore {restore.Statistics}; {verdict}");
        Assert.Multiple(() =>
        {
            Assert.That(verdict, Does.StartWith("ok").And.Contain($"mem={checksum}"), verdict);
            // Pages the child shares with its parent (copy-on-write since the fork) count as skipped, not restored.
            Assert.That(restore.Statistics!.PagesRestored + restore.Statistics.PagesSkippedCow, Is.EqualTo(dump.Statistics!.PagesWritten),
                "CRIU accounted for every page, the parents' included");
        });
    }

    [Test]
    public async Task Pages_absent_from_a_real_set_a_looping_chain_and_a_short_pages_image_are_refused()
    {
        using var workload = Workload.StartProgram(NewDir("work"), MemoryMiB);
        var final = NewDir("set/final");
        await Client.DumpAsync(new CriuDumpOptions { ImagesDirectory = final, Pid = workload.RootPid, LeaveRunning = true });
        var (pre, _) = CriuImageFiles.MovePagesToParent(final, (_, a) => a / Page % 2 == 0);
        var (prePre, _) = CriuImageFiles.MovePagesToParent(pre, (_, a) => a / Page % 4 == 0);
        var pagemap = CriuPagemap.Read(final, 1);
        var inPre = pagemap.Entries.First(e => e.Flags == CriuPageState.Parent && e.Address / Page % 4 == 2).Address;
        var inPrePre = pagemap.Entries.First(e => e.Flags == CriuPageState.Parent && e.Address / Page % 4 == 0).Address;
        var gap = pagemap.Entries.Zip(pagemap.Entries.Skip(1)).First(p => p.First.End < p.Second.Address).First.End;
        var buffer = new byte[Page];

        using (var source = new CriuImagesPageSource(final))
        {
            Assert.Multiple(() =>
            {
                Assert.That(async () => await source.ReadPagesAsync(4_000_000, inPre, buffer, CancellationToken.None),
                    Throws.TypeOf<LazyPageSourceException>().With.Message.Contains("pid 4000000").And.Message.Contains("pagemap-4000000.img does not exist"));
                Assert.That(async () => await source.ReadPagesAsync(1, gap, buffer, CancellationToken.None),
                    Throws.TypeOf<LazyPageSourceException>().With.Message.EqualTo($"pid 1, page {gap:x} is not in the images: no entry of {pagemap.Path} covers it"));
            });
        }

        // pre's parent link now leads back to the final dump: pages two levels up cannot be found.
        File.Delete(Path.Combine(pre, "parent"));
        File.CreateSymbolicLink(Path.Combine(pre, "parent"), "../final");
        using (var source = new CriuImagesPageSource(final))
        {
            Assert.That(await source.ReadPagesAsync(1, inPre, buffer, CancellationToken.None), Is.EqualTo(1), "one level up still works");
            Assert.That(async () => await source.ReadPagesAsync(1, inPrePre, buffer, CancellationToken.None),
                Throws.TypeOf<LazyPageSourceException>().With.Message.Contains("the parent chain loops"));
        }

        var prePages = Path.Combine(pre, pagemap.PagesFileName);
        File.WriteAllBytes(prePages, []);
        using (var source = new CriuImagesPageSource(final))
        {
            Assert.That(async () => await source.ReadPagesAsync(1, inPre, buffer, CancellationToken.None),
                Throws.TypeOf<LazyPageSourceException>().With.Message.Contains($"{prePages} ends at 0"));
        }

        Assert.That(prePre, Does.EndWith("final-pre-pre"));
    }

    /// <summary>Reads every present page of <paramref name="pid"/> in <paramref name="images"/> through <paramref name="source"/> and compares it with the pages image.</summary>
    private static async Task<long> AssertServedAsTheImagesHoldThem(CriuImagesPageSource source, string images, int pid)
    {
        var pagemap = CriuPagemap.Read(images, pid);
        var bytes = await File.ReadAllBytesAsync(Path.Combine(images, pagemap.PagesFileName));
        var served = 0L;
        foreach (var e in pagemap.Entries.Where(e => e.DataOffset is not null))
        {
            var buffer = new byte[(int)e.PageCount * Page];
            for (var done = 0; done < buffer.Length;)
            {
                var got = await source.ReadPagesAsync(pid, e.Address + (ulong)done, buffer.AsMemory(done, Math.Min(64 * Page, buffer.Length - done)), CancellationToken.None);
                Assert.That(got, Is.Positive);
                done += got * Page;
            }

            if (!buffer.AsSpan().SequenceEqual(bytes.AsSpan((int)e.DataOffset!.Value, buffer.Length)))
            {
                Assert.Fail($"pid {pid}: the {e.PageCount} pages at {e.Address:x} differ from {pagemap.PagesFileName} at {e.DataOffset}");
            }

            served += (long)e.PageCount;
        }

        return served;
    }

    /// <summary>Where the C workload's patterned memory starts in pid 1: the present page that starts with the pattern's first word.</summary>
    private static ulong FindPattern(CriuImagesPageSource source, CriuPagemap pagemap)
    {
        var first = BinaryPrimitives.ReadUInt64LittleEndian(Pattern(8));
        var page = new byte[Page];
        foreach (var e in pagemap.Entries.Where(e => e.DataOffset is not null))
        {
            for (ulong a = e.Address; a < e.End; a += Page)
            {
                source.ReadPagesAsync(1, a, page, CancellationToken.None).AsTask().GetAwaiter().GetResult();
                if (BinaryPrimitives.ReadUInt64LittleEndian(page) == first)
                {
                    return a;
                }
            }
        }

        Assert.Fail("the workload's pattern is in no page of pid 1");
        return 0;
    }

    /// <summary>The C workload's memory pattern (tests/workloads/rebootless-workload.c fill_and_sum): xorshift64 words.</summary>
    private static byte[] Pattern(int length)
    {
        var bytes = new byte[length];
        var x = 0x9e3779b97f4a7c15UL;
        for (var i = 0; i < length; i += 8)
        {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(i), x);
        }

        return bytes;
    }

    private static List<int> Pids(string images) =>
        [.. Directory.GetFiles(images, "pagemap-*.img").Select(f => Path.GetFileName(f)["pagemap-".Length..^".img".Length])
            .Select(n => int.TryParse(n, NumberStyles.None, CultureInfo.InvariantCulture, out var pid) ? pid : 0).Where(p => p > 0).Order()];

    /// <summary>crit writes numbers as JSON numbers, or as hex strings when they are marked hex.</summary>
    private static ulong Number(JsonElement e) => e.ValueKind == JsonValueKind.Number ? e.GetUInt64()
        : ulong.Parse(e.GetString()!.Replace("0x", string.Empty, StringComparison.Ordinal), NumberStyles.HexNumber, CultureInfo.InvariantCulture);

    /// <summary>crit writes the flags as a number, or as "PE_PRESENT | PE_LAZY" names; an entry without them is present.</summary>
    private static uint Flags(JsonElement entry)
    {
        if (!entry.TryGetProperty("flags", out var flags))
        {
            return (uint)CriuPageState.Present;
        }

        return flags.ValueKind == JsonValueKind.Number ? flags.GetUInt32()
            : flags.GetString()!.Split('|', StringSplitOptions.TrimEntries).Aggregate(0u, (all, name) => all | name switch
            {
                "PE_PARENT" => 1u,
                "PE_LAZY" => 2u,
                "PE_PRESENT" => 4u,
                _ => throw new FormatException($"crit named an unknown flag {name}"),
            });
    }

    private sealed class FilesSeen : IPageChunkVerifier
    {
        private readonly HashSet<string> _files = [];

        public IReadOnlyCollection<string> Files
        {
            get
            {
                lock (_files)
                {
                    return [.. _files];
                }
            }
        }

        public ValueTask VerifyAsync(string file, long offset, int length, CancellationToken cancellationToken)
        {
            lock (_files)
            {
                _files.Add(file);
            }

            return ValueTask.CompletedTask;
        }
    }
}
