using System.Buffers.Binary;
using System.Text;
using RebootlessUpdate.Images;

namespace RebootlessUpdate.UnitTests.Images;

public class PmemRegionTests
{
    [TestCase(64UL << 20, 512UL << 20, "64M!512M")]
    [TestCase(1UL << 30, 4UL << 30, "1G!4G")]
    [TestCase(3UL << 29, 0x100000000UL + (1UL << 20), "1536M!4097M")]
    [TestCase(12288UL, 4096UL + 512, "12K!4608")]
    public void Memmap_fragment_uses_the_largest_exact_unit(ulong size, ulong start, string expected)
    {
        Assert.That(new PmemRegion("/dev/pmem0", start, size).MemmapFragment, Is.EqualTo(expected));
    }

    [Test]
    public void Discovery_matches_iomem_legacy_ranges_with_sysfs_pmem_devices()
    {
        var root = Directory.CreateTempSubdirectory("rebootless-fakesys-").FullName;
        try
        {
            var iomem = Path.Combine(root, "iomem");
            File.WriteAllLines(iomem,
            [
                "00100000-1fffffff : System RAM",
                "20000000-23ffffff : Persistent Memory (legacy)",
                "  20000000-23ffffff : namespace0.0",
                "24000000-7ffdffff : System RAM",
                "100000000-13fffffff : Persistent Memory (legacy)",
                "  100000000-13fffffff : namespace1.0",
            ]);
            void Device(string name, string resource, string size)
            {
                var dev = Directory.CreateDirectory(Path.Combine(root, "block", name, "device")).FullName;
                File.WriteAllText(Path.Combine(dev, "resource"), resource + "\n");
                File.WriteAllText(Path.Combine(dev, "size"), size + "\n");
            }

            Device("pmem0", "0x20000000", "67108864");
            Device("pmem1", "0x100000000", "1073741824");
            Device("pmem7", "0x900000000", "1073741824"); // not a legacy region (e.g. real NVDIMM)

            var regions = PmemRegion.Discover(iomem, Path.Combine(root, "block"), "/dev");

            Assert.That(regions.Select(r => (r.Device, r.MemmapFragment)), Is.EqualTo(new[] { ("/dev/pmem0", "64M!512M"), ("/dev/pmem1", "1G!4G") }));
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    private static byte[] ExtSuperblock(string label)
    {
        var head = new byte[4096];
        BinaryPrimitives.WriteUInt16LittleEndian(head.AsSpan(1080), 0xEF53);
        Encoding.UTF8.GetBytes(label).CopyTo(head.AsSpan(1144));
        return head;
    }

    [Test]
    public void Device_classification_by_ext_superblock()
    {
        Assert.Multiple(() =>
        {
            Assert.That(DeviceProbe.Classify(new byte[4096], "rebootless").Kind, Is.EqualTo(DeviceContentKind.Empty));
            Assert.That(DeviceProbe.Classify(ExtSuperblock("rebootless"), "rebootless").Kind, Is.EqualTo(DeviceContentKind.Ours));
            Assert.That(DeviceProbe.Classify(ExtSuperblock("data"), "rebootless"), Is.EqualTo((DeviceContentKind.Foreign, "an ext2/3/4 filesystem labelled 'data'")));
            Assert.That(DeviceProbe.Classify(ExtSuperblock(""), "rebootless").Kind, Is.EqualTo(DeviceContentKind.Foreign));
        });
    }

    [Test]
    public void A_file_with_a_foreign_filesystem_is_probed_as_foreign()
    {
        var file = Path.GetTempFileName();
        try
        {
            var r = TestSupport.ProcessRunner.Run("mkfs.ext4", ["-q", "-F", "-L", "precious", file, "4M"], TimeSpan.FromSeconds(60));
            Assert.That(r.ExitCode, Is.Zero, r.ToString());

            var (kind, description) = DeviceProbe.Probe(file, "rebootless");

            Assert.That((kind, description), Is.EqualTo((DeviceContentKind.Foreign, "an ext2/3/4 filesystem labelled 'precious'")));
        }
        finally
        {
            File.Delete(file);
        }
    }

    [Test]
    public void Mountinfo_lines_give_mount_point_source_and_dax()
    {
        var mounts = MountInfo.Parse(
        [
            "36 35 259:0 / /run/rebootless/store rw,nosuid,nodev,noexec,relatime shared:1 - ext4 /dev/pmem0 rw,dax=always",
            "37 35 0:5 / /mnt/with\\040space rw - tmpfs tmpfs rw",
            "38 35 0:26 /box /sys/fs/cgroup rw,nosuid shared:4 master:1 - cgroup2 cgroup2 rw,nsdelegate",
            "not a mountinfo line",
        ]);

        Assert.Multiple(() =>
        {
            Assert.That(mounts, Has.Count.EqualTo(3), "a line that is not one is skipped");
            Assert.That(mounts[0], Is.EqualTo(new MountInfo("259:0", "/", "/run/rebootless/store", "ext4", "/dev/pmem0", "rw,dax=always")));
            Assert.That(mounts[0].Dax, Is.True);
            Assert.That(mounts[1].MountPoint, Is.EqualTo("/mnt/with space"));
            Assert.That(mounts[1].Dax, Is.False);
            Assert.That(mounts[2], Is.EqualTo(new MountInfo("0:26", "/box", "/sys/fs/cgroup", "cgroup2", "cgroup2", "rw,nsdelegate")), "two optional fields");
        });
    }
}
