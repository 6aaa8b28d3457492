using System.Net.Sockets;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Images;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;
using RebootlessUpdate.TestSupport;
using RebootlessUpdate.UnitTests.Images;

namespace RebootlessUpdate.UnitTests.Stages;

/// <summary><see cref="OnDemandMemory"/>'s hold at post-restore on images a real workload can have.</summary>
public class OnDemandMemoryTests
{
    private StoreFixture _f = null!;

    [SetUp]
    public void SetUp() => _f = new StoreFixture();

    [TearDown]
    public void TearDown() => _f.Dispose();

    [Test]
    public async Task The_hold_checks_an_eager_entry_of_more_than_2_GiB_instead_of_overflowing()
    {
        // A region CRIU restores itself (not lazy-capable: hugetlb, say) of 2 GiB and two pages, in a sparse pages image.
        const ulong pages = (1UL << 19) + 2;
        var set = _f.FillSet();
        var folder = Directory.CreateDirectory(Path.Combine(set.ImagesDirectory, "00-pid-7")).FullName;
        using (var f = File.Create(Path.Combine(folder, "pages-1.img")))
        {
            f.SetLength((long)pages * ILazyPageSource.PageSize);
        }

        CriuImageFiles.WritePagemap(folder, 7, 1, [new PagemapRecord(0x7f0000000000, pages, (uint)CriuPageState.Present)]);
        await _f.Store.SealAsync(set, new SealOptions { CriuVersion = "4.1.1", KernelRelease = "6.12.117+deb13-amd64" });
        var context = new UpdateContext(UpdateMode.Rehearse, []) { Store = _f.Store, Restorable = await _f.Store.OpenForRestoreAsync(set.Id) };
        var (memory, whyNot) = OnDemandMemory.TryStart(context, folder);
        Assert.That(memory, Is.Not.Null, whyNot);
        await using var _ = memory!;
        using var daemon = new TcpClient();
        await daemon.ConnectAsync(memory!.Endpoint.Address, memory.Endpoint.Port);

        Assert.That(await memory.HoldAsync([7], CancellationToken.None), Is.True);
    }
}
