using RebootlessUpdate.Images;
using RebootlessUpdate.Images.Interop;
using RebootlessUpdate.Images.Luo;
using RebootlessUpdate.IntegrationTests.Cli;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Images;

/// <summary>
/// The LUO store on this host, whose kernel has no LUO: it mounts its own tmpfs, counts memory as its capacity, and a
/// handover the kernel cannot take leaves every file where it was. (The handover and the receive across a real kexec are
/// the VM tests': EndToEndUpdateVmTests with --store luo.)
/// </summary>
public class LuoImageStoreHostTests
{
    private string _dir = null!;

    private string Mount => Path.Combine(_dir, "luo");

    [SetUp]
    public void SetUp()
    {
        Testbed.RequireRoot();
        _dir = Directory.CreateTempSubdirectory("luo-store-").FullName;
    }

    [TearDown]
    public void TearDown()
    {
        // As many times as it was mounted (a race that mounted twice stacks them).
        for (var i = 0; i < 32 && Libc.Umount2(Mount, 0) == 0; i++)
        {
        }

        Directory.Delete(_dir, recursive: true);
    }

    [Test]
    public void Open_mounts_a_private_tmpfs_once_and_keeps_the_store_in_it()
    {
        var store = LuoImageStore.Open(new LuoImageStoreOptions { MountPoint = Mount });
        var again = LuoImageStore.Open(new LuoImageStoreOptions { MountPoint = Mount });

        var mounts = MountInfo.Read().Where(m => m.MountPoint == Mount).ToList();
        Assert.That(mounts, Has.Count.EqualTo(1), "mounted once, reused after");
        Assert.That(mounts[0].FileSystem, Is.EqualTo("tmpfs"));
        Assert.That(mounts[0].SuperOptions, Does.Contain("mode=700"));
        Assert.That(store.RootDirectory, Is.EqualTo(LuoImageStore.StoreFolder(Mount)));
        Assert.That(again.RootDirectory, Is.EqualTo(store.RootDirectory));
        Assert.That((store.Received, store.NotReceived), Is.EqualTo(((LuoReceipt?)null, (string?)null)), "nothing was asked to come");
    }

    [Test]
    public void A_mount_point_on_another_file_system_is_refused()
    {
        Directory.CreateDirectory(Mount);
        Assert.That(Libc.Mount("none", Mount, "ramfs", 0, null), Is.Zero);

        Assert.That(() => LuoImageStore.Open(new LuoImageStoreOptions { MountPoint = Mount }),
            Throws.InstanceOf<ImageStoreException>().With.Message.Contain("is a ramfs mount").And.Message.Contain("tmpfs"));
    }

    [Test]
    public void A_tmpfs_that_is_not_its_own_or_not_roots_alone_is_not_trusted()
    {
        // Anybody's tmpfs (as /dev/shm is): its files may be anybody's, so it is never taken for the store.
        Directory.CreateDirectory(Mount);
        Assert.That(Libc.Mount("shm", Mount, "tmpfs", 0, "mode=1777"), Is.Zero);
        Assert.That(() => LuoImageStore.Open(new LuoImageStoreOptions { MountPoint = Mount }),
            Throws.InstanceOf<ImageStoreException>().With.Message.Contain("not the store's own tmpfs"));
        Assert.That(Libc.Umount2(Mount, 0), Is.Zero);

        // Its own name, but opened up to others.
        Assert.That(Libc.Mount(LuoImageStore.MountSource, Mount, "tmpfs", 0, "mode=0777"), Is.Zero);
        Assert.That(() => LuoImageStore.Open(new LuoImageStoreOptions { MountPoint = Mount }),
            Throws.InstanceOf<ImageStoreException>().With.Message.Contain("is not root's alone"));
    }

    [Test]
    public void Its_capacity_is_memory_and_a_plan_that_does_not_fit_is_refused_naming_the_rule()
    {
        // A small tmpfs here already: the store uses it as it is.
        Directory.CreateDirectory(Mount);
        Assert.That(Libc.Mount(LuoImageStore.MountSource, Mount, "tmpfs", 0, "size=1m,mode=0700"), Is.Zero);
        var store = LuoImageStore.Open(new LuoImageStoreOptions { MountPoint = Mount });
        var available = File.ReadLines("/proc/meminfo").First(l => l.StartsWith("MemAvailable:", StringComparison.Ordinal));

        Assert.That(store.GetCapacity().FreeBytes, Is.LessThanOrEqualTo(1 << 20));
        Assert.That(LuoImageStore.FreeBytes(Path.Combine(_dir, "not-mounted")),
            Is.LessThanOrEqualTo((long.Parse(available.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024) - (256L << 20) + (64L << 20)),
            "at most what the system has available, less the reserve (give or take what changed since)");
        using var sleeper = System.Diagnostics.Process.Start("sleep", "60")!;
        try
        {
            Assert.That(() => store.EnsureCapacityFor([sleeper.Id]),
                Throws.InstanceOf<StoreFullException>().With.Message.Contain("a LUO store is held in memory"));
        }
        finally
        {
            sleeper.Kill();
        }
    }

    [Test]
    public void A_handover_this_kernel_cannot_take_is_refused_and_leaves_every_file_in_place()
    {
        Assume.That(File.Exists("/dev/liveupdate"), Is.False, "this host's kernel has LUO");
        var store = LuoImageStore.Open(new LuoImageStoreOptions { MountPoint = Mount });
        var set = store.CreateSet(["pid:1"]);
        File.WriteAllBytes(Path.Combine(set.ImagesDirectory, "pages-1.img"), new byte[4096]);
        var before = Directory.GetFiles(store.RootDirectory, "*", SearchOption.AllDirectories).Order().ToList();

        Assert.That(store.CanHandOver(out var why), Is.False);
        Assert.That(why, Does.StartWith("no /dev/liveupdate"));
        Assert.That(() => store.HandOver(set.Id), Throws.InstanceOf<ImageStoreException>()
            .With.Message.Contain(LuoImageStore.SessionName(set.Id)).And.Message.Contain("/dev/liveupdate"));
        Assert.That(Directory.GetFiles(store.RootDirectory, "*", SearchOption.AllDirectories).Order(), Is.EqualTo(before), "nothing was unlinked");
    }

    [Test]
    public void A_receive_asked_for_on_a_kernel_without_the_session_opens_an_empty_store_that_says_why()
    {
        Assume.That(File.Exists("/dev/liveupdate"), Is.False, "this host's kernel has LUO");
        var store = LuoImageStore.Open(new LuoImageStoreOptions { MountPoint = Mount, IncomingSetId = "20261203T154244Z-ce4f35c4" });

        Assert.That(store.Received, Is.Null);
        Assert.That(store.NotReceived, Does.Contain("/dev/liveupdate"));
        Assert.That(store.ListSets(), Is.Empty);
    }

    [Test]
    public void A_receive_stopped_after_its_holder_died_is_kept_aside_and_named_never_taken_for_the_store()
    {
        Directory.CreateDirectory(Mount);
        Assert.That(Libc.Mount(LuoImageStore.MountSource, Mount, "tmpfs", 0, "mode=0700"), Is.Zero);
        Directory.CreateDirectory(LuoImageStore.IncomingFolder(Mount));
        // A holder record whose process is long gone (pid 2 is kthreadd: never our sleep).
        File.WriteAllText(Path.Combine(Mount, "holder"), "2 1 13 rebootless-20261203T154244Z-ce4f35c4\n");

        Assert.That(() => LuoImageStore.Open(new LuoImageStoreOptions { MountPoint = Mount, IncomingSetId = "20261203T154244Z-ce4f35c4" }),
            Throws.InstanceOf<ImageStoreException>().With.Message.Contain("is gone too").And.Message.Contain("rm -r"));
        Assert.That(Directory.Exists(LuoImageStore.StoreFolder(Mount)), Is.False);
        Assert.That(Workload.IsRunning(2), Is.True, "the record named another process: it was not touched");
    }

    [Test]
    public void Opens_racing_from_many_threads_mount_one_tmpfs_and_all_open_the_same_store()
    {
        // Each waits for the one before it (milliseconds): none mounts over another, none makes the store twice.
        const int racers = 8;
        using var start = new Barrier(racers);
        var outcomes = Enumerable.Range(0, racers).Select(_ => Task.Factory.StartNew(() =>
        {
            start.SignalAndWait();
            return LuoImageStore.Open(new LuoImageStoreOptions { MountPoint = Mount }).RootDirectory;
        }, TaskCreationOptions.LongRunning)).ToArray();
        Task.WaitAll(outcomes);

        Assert.That(MountInfo.Read().Count(m => m.MountPoint == Mount), Is.EqualTo(1), "one tmpfs, never one mounted over another");
        Assert.That(outcomes.Select(t => t.Result), Has.All.EqualTo(LuoImageStore.StoreFolder(Mount)));
    }

    [Test]
    public void A_mount_point_another_process_keeps_locked_is_refused_as_in_use_and_nothing_is_mounted()
    {
        // flock on the folder itself, as a second rebootless mounting the store holds it.
        Directory.CreateDirectory(Mount);
        using var held = Libc.Open(Mount, Libc.ORdOnly | Libc.ODirectory);
        Assert.That(Libc.Flock(held, Libc.LockEx | Libc.LockNb), Is.Zero);

        Assert.That(() => LuoImageStore.Open(new LuoImageStoreOptions { MountPoint = Mount }),
            Throws.InstanceOf<ImageStoreLockedException>().With.Message.Contain(Mount));
        Assert.That(MountInfo.Read().Any(m => m.MountPoint == Mount), Is.False, "nothing mounted while another holds the mount point");
    }

    [Test]
    public void An_open_lock_another_process_holds_past_the_wait_is_refused_as_in_use()
    {
        _ = LuoImageStore.Open(new LuoImageStoreOptions { MountPoint = Mount });
        // Another resume receiving: it holds the store's open lock (flock, as .NET's FileShare.None takes it too) past the wait.
        using var held = new FileStream(Path.Combine(Mount, ".open.lock"), FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);

        Assert.That(() => LuoImageStore.Open(new LuoImageStoreOptions { MountPoint = Mount, IncomingSetId = "20261203T154244Z-ce4f35c4" }),
            Throws.InstanceOf<ImageStoreLockedException>().With.Message.Contain(".open.lock"));
    }

    [Test]
    public void The_tool_refuses_a_store_another_run_holds_with_exit_11_in_one_line()
    {
        _ = LuoImageStore.Open(new LuoImageStoreOptions { MountPoint = Mount });
        using var held = new FileStream(Path.Combine(Mount, ".open.lock"), FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);

        using var workload = System.Diagnostics.Process.Start("sleep", "60")!;
        try
        {
            var r = Tool.Run("rehearse", "--pid", workload.Id.ToString(System.Globalization.CultureInfo.InvariantCulture), "--criu", Testbed.Require().Criu,
                "--store", "luo", "--store-mount", Mount);

            Assert.That(r.ExitCode, Is.EqualTo(11), "store-locked, as for every store\n" + r);
            Assert.That(r.Error, Does.Contain(".open.lock").And.Not.Contain("   at "));
            Assert.That(Workload.IsRunning(workload.Id), Is.True, "nothing was frozen");
        }
        finally
        {
            workload.Kill();
        }
    }

    [Test]
    public void A_symlink_in_place_of_the_mount_point_is_refused_and_nothing_is_mounted_where_it_points()
    {
        var elsewhere = Directory.CreateDirectory(Path.Combine(_dir, "elsewhere")).FullName;
        File.CreateSymbolicLink(Mount, elsewhere);

        Assert.That(() => LuoImageStore.Open(new LuoImageStoreOptions { MountPoint = Mount }),
            Throws.InstanceOf<ImageStoreException>().With.Message.Contain(Mount).And.Message.Contain("symbolic link"));
        Assert.That(MountInfo.Read().Any(m => m.MountPoint == elsewhere || m.MountPoint == Mount), Is.False);
    }
}
