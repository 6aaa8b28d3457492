using System.Security.Cryptography;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Images;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.PramFs;

/// <summary>
/// PramFsImageStore over the real native pramfs daemon (FUSE) and a real CRIU
/// 4.1.1: dump into the mount, seal, stop the daemon, mount again (fsck runs),
/// verify, restore. Needs root, /dev/fuse, the built native-pramfs and the testbed.
/// </summary>
[NonParallelizable]
public class PramFsImageStoreTests
{
    private string _dir = null!;
    private string _region = null!;
    private string _mount = null!;
    private readonly List<PramFsImageStore> _stores = [];

    [SetUp]
    public void SetUp()
    {
        Testbed.RequireRoot();
        if (!File.Exists("/dev/fuse"))
        {
            Testbed.Missing("/dev/fuse is missing: the PramFS daemon needs FUSE");
        }

        var shm = Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath();
        _dir = Directory.CreateTempSubdirectory("rebootless-pramfs-it-").FullName;
        _region = Path.Combine(shm, $"rebootless-pramfs-{Environment.ProcessId}-{Guid.NewGuid():N}.img");
        _mount = Path.Combine(_dir, "mnt");
        using (var f = File.Create(_region))
        {
            f.SetLength(512L << 20);
        }
    }

    [TearDown]
    public void TearDown()
    {
        foreach (var s in _stores)
        {
            try
            {
                s.Unmount();
            }
            catch (ImageStoreException e)
            {
                TestContext.Out.WriteLine("teardown: " + e.Message);
                ProcessRunner.Run("fusermount3", ["-u", "-z", s.MountPoint], TimeSpan.FromSeconds(30));
            }
        }

        File.Delete(_region);
        Directory.Delete(_dir, recursive: true);
    }

    private PramFsImageStore Open(PramFsImageStoreOptions? options = null)
    {
        var store = PramFsImageStore.Open(options ?? new PramFsImageStoreOptions { Region = _region, MountPoint = _mount });
        _stores.Add(store);
        return store;
    }

    [Test]
    public async Task A_real_dump_into_pramfs_survives_unmount_and_remount_with_fsck_and_is_restored_with_its_state()
    {
        var testbed = Testbed.Require();
        var client = new CriuClient(new CriuClientOptions { CriuPath = testbed.Criu });
        var store = Open();
        Assert.That(store.Formatted, Is.True, "an all-zero region is formatted");
        var capacity = store.GetCapacity();
        using var workload = Workload.StartProgram(Directory.CreateDirectory(Path.Combine(_dir, "work")).FullName, 64);
        var checksum = workload.InitialChecksum;
        var set = store.CreateSet([$"pid:{workload.RootPid}"]);

        await client.DumpIntoAsync(set, new CriuDumpOptions { ImagesDirectory = "-", Pid = workload.RootPid });
        var countAtDump = workload.ReadCounter();
        var manifest = await store.SealAsync(set, new SealOptions { CriuVersion = (await client.GetVersionAsync()).ToString() });
        Assert.That(store.GetCapacity().FreeBytes, Is.LessThan(capacity.FreeBytes - manifest.TotalBytes + (1 << 20)), "statfs shows the dump");
        var hashes = Directory.GetFiles(set.ImagesDirectory).ToDictionary(f => Path.GetFileName(f), f => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(f))));
        var daemon = store.DaemonPid;
        store.Unmount();
        Assert.That(Workload.IsRunning(daemon), Is.False, "the daemon exited after the unmount");
        Workload.WaitFor(() => workload.IsAlive ? 0 : 1, "the dumped tree to be gone");

        // "After the reboot": a new store instance mounts the same region; fsck runs first.
        var again = Open();
        Assert.That(again.Formatted, Is.False);
        Assert.That(again.Check, Is.Not.Null);
        Assert.That(again.Check!.IsClean, Is.True, again.Check.Output);
        Assert.That(again.Check.Output, Does.Contain("every checksum verified"));
        var opened = await again.OpenForRestoreAsync(set.Id);
        var rehashed = Directory.GetFiles(opened.ImagesDirectory).ToDictionary(f => Path.GetFileName(f), f => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(f))));
        Assert.That(rehashed, Is.EquivalentTo(hashes), "every image byte-identical after remount");
        var restore = await client.RestoreAsync(new CriuRestoreOptions { ImagesDirectory = opened.ImagesDirectory, WorkDirectory = _dir });
        workload.RootPid = restore.Pid;

        var verdict = workload.Check();
        TestContext.Out.WriteLine($"dump: {manifest.Files.Count} files, {manifest.TotalBytes} bytes; {again.Check.Output.Trim()}");
        Assert.Multiple(() =>
        {
            Assert.That(verdict, Does.StartWith("ok").And.Contain($"mem={checksum}"), verdict);
            Assert.That(workload.ReadCounter(), Is.GreaterThan(countAtDump).And.LessThan(countAtDump + 400), "continued from the checkpoint");
            Assert.That(manifest.TotalBytes, Is.GreaterThan(64L << 20), "the 64 MiB workload's pages are in the store");
        });
    }

    [Test]
    public void A_region_holding_other_data_is_refused_and_left_untouched()
    {
        var junk = RandomNumberGenerator.GetBytes(4096);
        using (var f = new FileStream(_region, FileMode.Open, FileAccess.Write))
        {
            f.Position = 8192;
            f.Write(junk);
        }

        var e = Assert.Throws<ImageStoreException>(() => Open());

        Assert.That(e!.Message, Does.Contain("refusing to format").And.Contain(_region).And.Contain("not a PramFS"));
        using var g = File.OpenRead(_region);
        var back = new byte[4096];
        g.Position = 8192;
        g.ReadExactly(back);
        Assert.That(back, Is.EqualTo(junk));
        Assert.That(Directory.Exists(_mount) && Directory.EnumerateFileSystemEntries(_mount).Any(), Is.False, "nothing mounted");
    }

    [Test]
    public async Task Damage_found_by_fsck_refuses_the_mount_and_repair_on_open_drops_only_the_damaged_file()
    {
        var store = Open();
        var set = store.CreateSet(["pid:1"]);
        var good = RandomNumberGenerator.GetBytes(200_000);
        var victim = RandomNumberGenerator.GetBytes(300_000);
        await File.WriteAllBytesAsync(Path.Combine(set.ImagesDirectory, "good.img"), good);
        await File.WriteAllBytesAsync(Path.Combine(set.ImagesDirectory, "victim.img"), victim);
        await store.SealAsync(set, new SealOptions { CriuVersion = "4.1.1" });
        store.Unmount();
        FlipByteOf(victim.AsSpan(100_000, 64));

        var e = Assert.Throws<PramFsCheckFailedException>(() => Open());
        Assert.That(e!.Message, Does.Contain("victim.img").And.Contain("data checksum mismatch").And.Contain("pramfs fsck -r"));
        Assert.That(e.Check!.ExitCode, Is.EqualTo(2));

        var repaired = Open(new PramFsImageStoreOptions { Region = _region, MountPoint = _mount, RepairOnOpen = true });
        Assert.That(repaired.Check!.ExitCode, Is.EqualTo(1), repaired.Check.Output);
        var verification = await repaired.VerifyAsync(set.Id);
        Assert.That(verification.Issues.Select(i => (i.Kind, i.Path)), Is.EqualTo(new[] { (VerificationIssueKind.Missing, "victim.img") }),
            "the damaged file is gone, never served with wrong content; the rest verifies");
    }

    [Test]
    public void A_daemon_that_fails_is_reported_with_its_own_error_and_nothing_stays_mounted()
    {
        var real = RebootlessUpdate.Images.PramFs.PramFsTool.Locate(null);
        // A wrapper that hands the daemon a FUSE option it does not know.
        var wrapper = Path.Combine(_dir, "pramfs-bad");
        File.WriteAllText(wrapper, $"#!/bin/sh\nif [ \"$1\" = mount ]; then shift; exec {real} mount -o no_such_fuse_option \"$@\"; fi\nexec {real} \"$@\"\n");
        File.SetUnixFileMode(wrapper, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);

        var e = Assert.Throws<ImageStoreException>(() => Open(new PramFsImageStoreOptions { Region = _region, MountPoint = _mount, PramFsPath = wrapper }));

        Assert.That(e!.Message, Does.Contain("exited with").And.Contain("no_such_fuse_option"));
        Assert.That(File.ReadAllLines("/proc/self/mountinfo").Any(l => l.Contains(_mount, StringComparison.Ordinal)), Is.False);
    }

    private void FlipByteOf(ReadOnlySpan<byte> needle)
    {
        var bytes = File.ReadAllBytes(_region);
        var at = bytes.AsSpan().IndexOf(needle);
        Assert.That(at, Is.GreaterThan(0), "the file's data is in the region");
        using var f = new FileStream(_region, FileMode.Open, FileAccess.Write);
        f.Position = at + 10;
        f.WriteByte((byte)(bytes[at + 10] ^ 0x40));
    }
}
