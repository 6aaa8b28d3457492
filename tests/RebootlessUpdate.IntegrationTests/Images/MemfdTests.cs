using RebootlessUpdate.Images.Luo;

namespace RebootlessUpdate.IntegrationTests.Images;

/// <summary>Memfds on this host's kernel: what a LUO store keeps its images in, sealed so nothing can change them.</summary>
public class MemfdTests
{
    [Test]
    public void A_sealed_memfd_keeps_its_bytes_and_refuses_every_write_resize_and_unseal()
    {
        using var memfd = Memfd.Create("rebootless-test");
        var bytes = new byte[3 * 4096 + 17];
        Random.Shared.NextBytes(bytes);
        RandomAccess.Write(memfd, bytes, 0);
        Assert.That(Memfd.Seals(memfd), Is.Zero);

        Memfd.SealReadOnly(memfd);

        Assert.That(Memfd.Seals(memfd), Is.EqualTo(Memfd.ReadOnlySeals));
        Assert.Catch(() => RandomAccess.Write(memfd, new byte[] { 1 }, 0), "a write");
        Assert.Catch(() => RandomAccess.Write(memfd, new byte[] { 1 }, bytes.Length), "growing it by a write");
        Assert.Catch(() => RandomAccess.SetLength(memfd, 10), "shrinking it");
        Assert.Throws<IOException>(() => Memfd.SealReadOnly(memfd), "sealing again, past F_SEAL_SEAL");
        var back = new byte[bytes.Length];
        Assert.That(RandomAccess.Read(memfd, back, 0), Is.EqualTo(bytes.Length));
        Assert.That(back, Is.EqualTo(bytes));
        Assert.That(RandomAccess.GetLength(memfd), Is.EqualTo(bytes.Length));
    }

    [Test]
    public void A_file_on_disk_is_no_memfd_and_cannot_be_sealed()
    {
        var path = Path.GetTempFileName();
        try
        {
            using var file = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite);
            var e = Assert.Throws<IOException>(() => Memfd.SealReadOnly(file));
            TestContext.Out.WriteLine(e!.Message);
        }
        finally
        {
            File.Delete(path);
        }
    }
}
