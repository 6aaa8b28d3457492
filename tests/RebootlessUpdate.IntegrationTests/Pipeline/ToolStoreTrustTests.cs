using System.Diagnostics;
using Mono.Unix.Native;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Images;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Pipeline;

/// <summary>The real tool against a store an attacker changed (issue #12, "trust only what we wrote").</summary>
public partial class ToolTests
{
    /// <summary>A store under the test folder holding one sealed set of a real (leave-running) CRIU dump of <paramref name="w"/>.</summary>
    private async Task<(string Store, CheckpointSet Set)> SealedRealSet(Workload w)
    {
        var root = Path.Combine(_dir, "store");
        var store = new DirectoryImageStore(new DirectoryImageStoreOptions { RootDirectory = root });
        var set = store.CreateSet([$"pid:{w.RootPid}"]);
        var criu = new CriuClient(new CriuClientOptions { CriuPath = _testbed.Criu });
        await criu.DumpIntoAsync(set, new CriuDumpOptions { ImagesDirectory = "-", Pid = w.RootPid, LeaveRunning = true, WorkDirectory = _dir });
        await store.SealAsync(set, new SealOptions { CriuVersion = "4.1.1" });
        return (root, set);
    }

    [Test]
    public async Task Images_ls_and_verify_with_a_fifo_in_place_of_the_manifest_return_at_once_and_report_damage()
    {
        using var w = Workload.Start(Path.Combine(_dir, "w"));
        var (store, set) = await SealedRealSet(w);
        var manifest = Path.Combine(set.Directory, "manifest.json");
        File.Delete(manifest);
        Assert.That(Syscall.mkfifo(manifest, FilePermissions.S_IRUSR | FilePermissions.S_IWUSR), Is.Zero);

        var sw = Stopwatch.StartNew();
        var ls = ProcessRunner.Run("dotnet", [_tool, "images", "ls", "--store", store], TimeSpan.FromSeconds(60));
        var verify = ProcessRunner.Run("dotnet", [_tool, "images", "verify", set.Id, "--store", store], TimeSpan.FromSeconds(60));
        TestContext.Out.WriteLine($"{sw.ElapsedMilliseconds} ms\n{ls}\n{verify}");

        Assert.Multiple(() =>
        {
            Assert.That(ls.ExitCode, Is.Zero, ls.ToString());
            Assert.That(ls.Output, Does.Contain(set.Id).And.Contain("sealed").And.Contain("DAMAGED").And.Contain("named pipe"));
            Assert.That(verify.ExitCode, Is.EqualTo(1), "ExitCodes.Failed: the set failed verification\n" + verify);
            Assert.That(verify.Output, Does.Contain("ManifestCorrupt").And.Contain("named pipe, not a regular file"));
            Assert.That(verify.Error, Does.Not.Contain("   at "), "no stack trace");
            Assert.That(w.IsAlive, Is.True);
        });
    }

    [Test]
    public async Task Images_verify_of_a_sealed_set_whose_manifest_was_deleted_and_a_page_flipped_reports_the_missing_manifest()
    {
        using var w = Workload.Start(Path.Combine(_dir, "w"));
        var (store, set) = await SealedRealSet(w);
        File.Delete(Path.Combine(set.Directory, "manifest.json"));
        var pages = Directory.GetFiles(set.ImagesDirectory, "pages-*.img").OrderByDescending(f => new FileInfo(f).Length).First();
        var bytes = File.ReadAllBytes(pages);
        bytes[bytes.Length / 2] ^= 0x80;
        File.WriteAllBytes(pages, bytes);

        var verify = Run("images", "verify", set.Id, "--store", store);
        var ls = Run("images", "ls", "--store", store, "--json");
        TestContext.Out.WriteLine($"{verify}\n{ls}");

        Assert.Multiple(() =>
        {
            Assert.That(verify.ExitCode, Is.EqualTo(1), verify.ToString());
            Assert.That(verify.Output, Does.Contain("ManifestMissing").And.Contain("was sealed"));
            Assert.That(verify.Output, Does.Not.Contain("NotSealed"));
            Assert.That(ls.Output, Does.Contain("\"sealed\": true").And.Contain("manifest is gone"));
        });
    }

    [Test]
    public async Task Images_rm_of_a_set_folder_swapped_for_a_symlink_is_refused_and_deletes_nothing_outside_the_store()
    {
        using var w = Workload.Start(Path.Combine(_dir, "w"));
        var (store, set) = await SealedRealSet(w);
        var outside = Path.Combine(_dir, "outside");
        Directory.Move(set.Directory, outside);
        Directory.CreateSymbolicLink(set.Directory, outside);

        var rm = Run("images", "rm", set.Id, "--store", store);
        var verify = Run("images", "verify", set.Id, "--store", store);
        TestContext.Out.WriteLine($"{rm}\n{verify}");

        Assert.Multiple(() =>
        {
            Assert.That(rm.ExitCode, Is.EqualTo(8), "ExitCodes.BadStore\n" + rm);
            Assert.That(rm.Error.Trim().Split('\n'), Has.Length.EqualTo(1).And.All.StartsWith("rebootless: "));
            Assert.That(rm.Error, Does.Contain(set.Id).And.Contain("symbolic link"));
            Assert.That(verify.ExitCode, Is.EqualTo(8), verify.ToString());
            Assert.That(File.Exists(Path.Combine(outside, "manifest.json")), Is.True, "nothing outside the store was deleted");
            Assert.That(Directory.GetFiles(Path.Combine(outside, "images")), Is.Not.Empty);
        });
    }

    [Test]
    public void Rehearse_with_a_store_path_through_a_folder_others_may_write_is_refused_before_anything_is_created_or_frozen()
    {
        var shared = Directory.CreateDirectory(Path.Combine(_dir, "shared")).FullName;
        Assert.That(Syscall.chmod(shared, FilePermissions.S_IRWXU | FilePermissions.S_IRWXG | FilePermissions.S_IRWXO), Is.Zero);
        var store = Path.Combine(shared, "store");
        Directory.CreateDirectory(store);
        using var w = Workload.Start(Path.Combine(_dir, "w"));

        var r = Run("rehearse", "--pid", w.RootPid.ToString(), "--store", store, "--criu", _testbed.Criu);
        TestContext.Out.WriteLine(r.ToString());

        Assert.Multiple(() =>
        {
            Assert.That(r.ExitCode, Is.EqualTo(8), r.ToString());
            Assert.That(r.Error.Trim().Split('\n'), Has.Length.EqualTo(1).And.All.StartsWith("rebootless: "));
            Assert.That(r.Error, Does.Contain(shared).And.Contain("without the sticky bit"));
            Assert.That(Directory.GetFileSystemEntries(store), Is.Empty, "nothing created in the store");
            Assert.That(w.IsAlive, Is.True);
        });
    }

    [TestCase("fifo")]
    [TestCase("symlink")]
    public void A_fifo_or_a_symlink_in_place_of_the_store_lock_is_refused_at_once_and_nothing_it_points_to_is_touched(string kind)
    {
        var store = new DirectoryImageStore(new DirectoryImageStoreOptions { RootDirectory = Path.Combine(_dir, "store") }).RootDirectory;
        var lockFile = Path.Combine(store, ".lock");
        File.Delete(lockFile);
        var victim = Path.Combine(_dir, "victim");
        File.WriteAllText(victim, "precious\n");
        Assert.That(Syscall.chmod(victim, FilePermissions.S_IRUSR | FilePermissions.S_IWUSR | FilePermissions.S_IRGRP | FilePermissions.S_IROTH), Is.Zero);
        if (kind == "fifo")
        {
            Assert.That(Syscall.mkfifo(lockFile, FilePermissions.S_IRUSR | FilePermissions.S_IWUSR), Is.Zero);
        }
        else
        {
            File.CreateSymbolicLink(lockFile, victim);
        }

        using var w = Workload.Start(Path.Combine(_dir, "w"));
        var sw = Stopwatch.StartNew();
        var rehearse = Run("rehearse", "--pid", w.RootPid.ToString(), "--store", store, "--criu", _testbed.Criu);
        var resume = Run("resume", "--store", store, "--criu", _testbed.Criu);
        TestContext.Out.WriteLine($"{sw.ElapsedMilliseconds} ms\n{rehearse}\n{resume}");

        Assert.That(Syscall.lstat(lockFile, out var after), Is.Zero);
        Assert.Multiple(() =>
        {
            foreach (var r in new[] { rehearse, resume })
            {
                Assert.That(r.ExitCode, Is.EqualTo(8), "ExitCodes.BadStore\n" + r);
                Assert.That(r.Error.Trim().Split('\n')[^1], Does.StartWith("rebootless: ").And.Contain(lockFile)
                    .And.Contain(kind == "fifo" ? "is a named pipe" : "is a symbolic link"), "the last line names the file and what is wrong with it");
                Assert.That(r.Error, Does.Not.Contain("   at "), "no stack trace");
            }

            Assert.That(sw.Elapsed, Is.LessThan(TimeSpan.FromSeconds(60)), "neither blocked on the pipe");
            Assert.That(File.ReadAllText(victim), Is.EqualTo("precious\n"), "the link's target was not truncated or written");
            Assert.That(Syscall.stat(victim, out var st) == 0 && (st.st_mode & FilePermissions.ACCESSPERMS) == (FilePermissions.S_IRUSR | FilePermissions.S_IWUSR | FilePermissions.S_IRGRP | FilePermissions.S_IROTH),
                Is.True, "nor chmod'ed");
            Assert.That(after.st_mode & FilePermissions.S_IFMT, Is.EqualTo(kind == "fifo" ? FilePermissions.S_IFIFO : FilePermissions.S_IFLNK), "left as the attacker made it");
            Assert.That(Directory.Exists(Path.Combine(store, "sets")) && Directory.EnumerateFileSystemEntries(Path.Combine(store, "sets")).Any(), Is.False,
                "no set was created");
            Assert.That(w.IsAlive, Is.True, "nothing was frozen");
        });
    }

    [Test]
    public void Check_and_plan_do_not_create_the_default_store()
    {
        using var w = Workload.Start(Path.Combine(_dir, "w"));
        // The default store lives under /var/lib: give the tool an empty private /var/lib to look at.
        var script = $"mount -t tmpfs rebootless-test /var/lib || exit 99; "
            + $"dotnet {_tool} plan --pid {w.RootPid}; echo \"plan-exit=$?\"; "
            + $"dotnet {_tool} check --criu {_testbed.Criu}; echo \"check-exit=$?\"; "
            + "echo \"var-lib=[$(ls -A /var/lib)]\"";
        var r = ProcessRunner.Run("unshare", ["--mount", "--propagation", "private", "sh", "-c", script], TimeSpan.FromMinutes(2));
        TestContext.Out.WriteLine(r.ToString());

        Assert.Multiple(() =>
        {
            Assert.That(r.Output, Does.Contain("plan-exit=0"));
            Assert.That(r.Output, Does.Contain("free in /var/lib/rebootless/store: fits"));
            Assert.That(r.Output, Does.Contain("store: /var/lib/rebootless/store"), "check still reports the store's file system");
            Assert.That(r.Output, Does.Contain("var-lib=[]"), "nothing was created under /var/lib");
        });
    }
}
