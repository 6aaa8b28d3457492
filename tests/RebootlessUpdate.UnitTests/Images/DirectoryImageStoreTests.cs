// Expected values are written inline for readability; these tests run once.
#pragma warning disable CA1861
using System.Diagnostics;
using Mono.Unix.Native;
using RebootlessUpdate.Images;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.UnitTests.Images;

public class DirectoryImageStoreTests
{
    private StoreFixture _f = null!;

    [SetUp]
    public void SetUp() => _f = new StoreFixture();

    [TearDown]
    public void TearDown() => _f.Dispose();

    private static string Images(CheckpointSet set, string relative) => Path.Combine(set.ImagesDirectory, relative);

    private static VerificationIssue Single(VerificationResult result)
    {
        Assert.That(result.Issues, Has.Count.EqualTo(1), result.Describe());
        return result.Issues[0];
    }

    [Test]
    public async Task Sealed_set_verifies_and_opens_for_restore()
    {
        var set = await _f.SealedSet("pid:4242", "container:web");

        var result = await _f.Store.VerifyAsync(set.Id);
        var open = await _f.Store.OpenForRestoreAsync(set.Id);

        Assert.Multiple(() =>
        {
            Assert.That(result.IsValid, Is.True, result.Describe());
            Assert.That(result.BytesHashed, Is.EqualTo(result.Manifest!.TotalBytes));
            Assert.That(open.ImagesDirectory, Is.EqualTo(set.ImagesDirectory));
            Assert.That(open.Manifest.Targets, Is.EqualTo(new[] { "pid:4242", "container:web" }));
            Assert.That(open.Manifest.Files.Select(f => f.Path), Is.EqualTo(new[] { "core-1.img", "pages-1.img", "pstree.img", "sub/fdinfo-2.img" }));
            Assert.That(open.Manifest.HostMachineId, Is.EqualTo("0123456789abcdef0123456789abcdef"));
            Assert.That(open.Manifest.KernelRelease, Is.EqualTo("6.12.117+deb13-amd64"));
            Assert.That(open.Manifest.CriuVersion, Is.EqualTo("4.1.1"));
            Assert.That(open.Manifest.CreatedAt, Is.EqualTo(_f.Clock.Now));
            Assert.That(open.Manifest.TotalBytes, Is.EqualTo(300_000 + 19 + 4 + 3));
        });
    }

    [Test]
    public async Task Store_and_set_are_root_only()
    {
        var set = await _f.SealedSet();

        static FilePermissions Mode(string p) => Syscall.stat(p, out var st) == 0 ? st.st_mode & (FilePermissions)0x1FF : throw new IOException(p);

        Assert.Multiple(() =>
        {
            Assert.That(Mode(_f.StoreRoot), Is.EqualTo(FilePermissions.S_IRWXU));
            Assert.That(Mode(set.Directory), Is.EqualTo(FilePermissions.S_IRWXU));
            Assert.That(Mode(set.ImagesDirectory), Is.EqualTo(FilePermissions.S_IRWXU));
            Assert.That(Mode(Images(set, "sub")), Is.EqualTo(FilePermissions.S_IRWXU));
            Assert.That(Mode(Images(set, "pages-1.img")), Is.EqualTo(FilePermissions.S_IRUSR | FilePermissions.S_IWUSR));
            Assert.That(Mode(Path.Combine(set.Directory, "manifest.json")), Is.EqualTo(FilePermissions.S_IRUSR | FilePermissions.S_IWUSR));
            Assert.That(File.Exists(Path.Combine(set.Directory, "manifest.json.tmp")), Is.False);
        });
    }

    [Test]
    public async Task A_flipped_byte_is_named_and_restore_is_refused()
    {
        var set = await _f.SealedSet();
        using (var fs = new FileStream(Images(set, "pages-1.img"), FileMode.Open, FileAccess.ReadWrite))
        {
            fs.Position = 123_456;
            var b = fs.ReadByte();
            fs.Position = 123_456;
            fs.WriteByte((byte)(b ^ 0x01));
        }

        var issue = Single(await _f.Store.VerifyAsync(set.Id));
        var quick = await _f.Store.VerifyAsync(set.Id, new VerifyOptions { Mode = VerificationMode.Quick });

        Assert.Multiple(() =>
        {
            Assert.That(issue.Kind, Is.EqualTo(VerificationIssueKind.ContentChanged));
            Assert.That(issue.Path, Is.EqualTo("pages-1.img"));
            Assert.That(quick.IsValid, Is.True, "a quick verification sees sizes only (documented)");
            Assert.That(() => _f.Store.OpenForRestoreAsync(set.Id), Throws.TypeOf<CheckpointSetVerificationException>()
                .With.Message.Contains("pages-1.img").And.Message.Contains("ContentChanged").And.Message.Contains("cannot be restored"));
        });
    }

    [Test]
    public async Task Truncation_is_detected_by_full_and_quick_verification()
    {
        var set = await _f.SealedSet();
        File.WriteAllBytes(Images(set, "pages-1.img"), File.ReadAllBytes(Images(set, "pages-1.img"))[..1000]);

        foreach (var mode in new[] { VerificationMode.Full, VerificationMode.Quick })
        {
            var issue = Single(await _f.Store.VerifyAsync(set.Id, new VerifyOptions { Mode = mode }));
            Assert.That((issue.Kind, issue.Path), Is.EqualTo((VerificationIssueKind.Truncated, "pages-1.img")), mode.ToString());
            Assert.That(issue.Detail, Does.Contain("1000 bytes, recorded 300000"));
        }
    }

    [Test]
    public async Task A_grown_file_is_detected()
    {
        var set = await _f.SealedSet();
        File.AppendAllText(Images(set, "pstree.img"), "x");

        var issue = Single(await _f.Store.VerifyAsync(set.Id));

        Assert.That((issue.Kind, issue.Path), Is.EqualTo((VerificationIssueKind.Grown, "pstree.img")));
    }

    [Test]
    public async Task Missing_and_extra_files_are_each_listed()
    {
        var set = await _f.SealedSet();
        File.Delete(Images(set, "sub/fdinfo-2.img"));
        File.WriteAllText(Images(set, "intruder.img"), "not from criu");

        var result = await _f.Store.VerifyAsync(set.Id);

        Assert.That(result.Issues.Select(i => (i.Kind, i.Path)), Is.EquivalentTo(new[]
        {
            (VerificationIssueKind.Missing, "sub/fdinfo-2.img"),
            (VerificationIssueKind.Extra, "intruder.img"),
        }), result.Describe());
    }

    [Test]
    public async Task A_renamed_file_is_reported_as_renamed_in_both_modes()
    {
        var set = await _f.SealedSet();
        File.Move(Images(set, "core-1.img"), Images(set, "core-9.img"));

        foreach (var mode in new[] { VerificationMode.Full, VerificationMode.Quick })
        {
            var issue = Single(await _f.Store.VerifyAsync(set.Id, new VerifyOptions { Mode = mode }));
            Assert.That((issue.Kind, issue.Path, issue.RenamedTo), Is.EqualTo((VerificationIssueKind.Renamed, "core-1.img", "core-9.img")), mode.ToString());
        }
    }

    [Test]
    public async Task Every_kind_of_damage_is_listed_at_once()
    {
        var set = await _f.SealedSet();
        File.AppendAllText(Images(set, "pstree.img"), "x");
        File.Delete(Images(set, "sub/fdinfo-2.img"));
        File.Move(Images(set, "core-1.img"), Images(set, "core-renamed.img"));
        File.WriteAllText(Images(set, "extra.img"), "e");

        var result = await _f.Store.VerifyAsync(set.Id);

        Assert.That(result.Issues.Select(i => i.Kind), Is.EquivalentTo(new[]
        {
            VerificationIssueKind.Grown, VerificationIssueKind.Missing, VerificationIssueKind.Renamed, VerificationIssueKind.Extra,
        }), result.Describe());
    }

    [Test]
    public async Task Corrupt_or_truncated_manifests_make_the_set_unrestorable()
    {
        var set = await _f.SealedSet();
        var manifest = Path.Combine(set.Directory, "manifest.json");
        var bytes = File.ReadAllBytes(manifest);

        File.WriteAllBytes(manifest, bytes[..(bytes.Length / 2)]);
        var truncated = Single(await _f.Store.VerifyAsync(set.Id));
        File.WriteAllBytes(manifest, [.. bytes.Select(b => b == (byte)'3' ? (byte)'4' : b)]);
        var altered = Single(await _f.Store.VerifyAsync(set.Id));

        Assert.Multiple(() =>
        {
            Assert.That(truncated.Kind, Is.EqualTo(VerificationIssueKind.ManifestCorrupt));
            Assert.That(truncated.Detail, Does.Contain("not valid JSON"));
            Assert.That(altered.Kind, Is.EqualTo(VerificationIssueKind.ManifestCorrupt));
            Assert.That(() => _f.Store.OpenForRestoreAsync(set.Id), Throws.TypeOf<CheckpointSetVerificationException>().With.Message.Contains("ManifestCorrupt"));
        });
    }

    [Test]
    public async Task A_manifest_copied_from_another_set_is_rejected()
    {
        var a = await _f.SealedSet();
        var b = await _f.SealedSet();
        File.Copy(Path.Combine(a.Directory, "manifest.json"), Path.Combine(b.Directory, "manifest.json"), overwrite: true);

        var issue = Single(await _f.Store.VerifyAsync(b.Id));

        Assert.That(issue.Detail, Does.Contain($"belongs to set {a.Id}"));
    }

    [Test]
    public async Task An_unsealed_set_is_never_restorable()
    {
        var set = _f.FillSet();

        var issue = Single(await _f.Store.VerifyAsync(set.Id));

        Assert.That(issue.Kind, Is.EqualTo(VerificationIssueKind.NotSealed));
        Assert.That(_f.Store.ListSets().Single().IsNeverSealed, Is.True);
        Assert.That(() => _f.Store.OpenForRestoreAsync(set.Id), Throws.TypeOf<CheckpointSetVerificationException>().With.Message.Contains("never sealed"));
    }

    [Test]
    public async Task A_set_cannot_be_sealed_twice()
    {
        var set = await _f.SealedSet();

        Assert.That(() => _f.Store.SealAsync(set, new SealOptions { CriuVersion = "4.1.1" }),
            Throws.TypeOf<ImageStoreException>().With.Message.Contains("already sealed"));
    }

    [Test]
    public void Seal_rejects_every_symlink_but_CRIUs_parent_link_and_special_files()
    {
        var outside = _f.FillSet();
        File.CreateSymbolicLink(Images(outside, "secret.img"), "/etc/shadow");
        var upward = _f.FillSet();
        File.CreateSymbolicLink(Images(upward, "sub/up.img"), "../../manifest.json");
        var inside = _f.FillSet();
        File.CreateSymbolicLink(Images(inside, "sub/alias.img"), "../pstree.img");
        var fifo = _f.FillSet();
        Assert.That(Syscall.mkfifo(Images(fifo, "pipe"), FilePermissions.S_IRUSR | FilePermissions.S_IWUSR), Is.Zero);
        var dirLink = _f.FillSet();
        Directory.CreateSymbolicLink(Images(dirLink, "etc"), "/etc");
        var parentToFile = _f.FillSet();
        File.CreateSymbolicLink(Images(parentToFile, "sub/parent"), "../pstree.img");

        var options = new SealOptions { CriuVersion = "4.1.1" };
        Assert.Multiple(() =>
        {
            Assert.That(() => _f.Store.SealAsync(outside, options), Throws.TypeOf<UnsafeSetPathException>().With.Message.Contains("'secret.img' is a symbolic link (to '/etc/shadow')"));
            Assert.That(() => _f.Store.SealAsync(upward, options), Throws.TypeOf<UnsafeSetPathException>().With.Message.Contains("'sub/up.img' is a symbolic link"));
            Assert.That(() => _f.Store.SealAsync(inside, options), Throws.TypeOf<UnsafeSetPathException>().With.Message.Contains("'sub/alias.img' is a symbolic link")
                .And.Message.Contains("the only link a set may hold is CRIU's 'parent' link"));
            Assert.That(() => _f.Store.SealAsync(fifo, options), Throws.TypeOf<UnsafeSetPathException>().With.Message.Contains("named pipe"));
            Assert.That(() => _f.Store.SealAsync(dirLink, options), Throws.TypeOf<UnsafeSetPathException>().With.Message.Contains("'etc'"));
            Assert.That(() => _f.Store.SealAsync(parentToFile, options), Throws.TypeOf<UnsafeSetPathException>().With.Message.Contains("'sub/parent'").And.Message.Contains("not a folder of the set"));
            Assert.That(File.Exists(Path.Combine(outside.Directory, "manifest.json")), Is.False, "nothing sealed");
            Assert.That(File.Exists(Path.Combine(inside.Directory, "sealed")), Is.False, "no seal mark");
        });
    }

    [Test]
    public async Task CRIUs_parent_link_to_a_pre_dump_folder_is_sealed_and_verified_and_a_retargeted_or_swapped_one_is_damage()
    {
        var set = _f.FillSet();
        Directory.CreateDirectory(Images(set, "00-pid-1-pre"));
        File.WriteAllText(Images(set, "00-pid-1-pre/pages-1.img"), "pre-dumped pages");
        Directory.CreateDirectory(Images(set, "00-pid-1"));
        File.WriteAllText(Images(set, "00-pid-1/pages-1.img"), "final pages");
        File.CreateSymbolicLink(Images(set, "00-pid-1/parent"), "../00-pid-1-pre");

        var manifest = await _f.Store.SealAsync(set, new SealOptions { CriuVersion = "4.1.1" });
        var intact = await _f.Store.VerifyAsync(set.Id);
        File.Delete(Images(set, "00-pid-1/parent"));
        File.CreateSymbolicLink(Images(set, "00-pid-1/parent"), "../sub");
        var retargeted = Single(await _f.Store.VerifyAsync(set.Id));
        File.Delete(Images(set, "00-pid-1/parent"));
        File.CreateSymbolicLink(Images(set, "00-pid-1/parent"), "../00-pid-1-pre");
        var elsewhere = Directory.CreateDirectory(Path.Combine(_f.Dir, "elsewhere")).FullName;
        File.WriteAllText(Path.Combine(elsewhere, "pages-1.img"), "pre-dumped pages");
        Directory.Delete(Images(set, "00-pid-1-pre"), recursive: true);
        Directory.CreateSymbolicLink(Images(set, "00-pid-1-pre"), elsewhere);
        var swapped = await _f.Store.VerifyAsync(set.Id);

        Assert.Multiple(() =>
        {
            Assert.That(manifest.Files.Single(f => f.Path == "00-pid-1/parent").SymlinkTarget, Is.EqualTo("../00-pid-1-pre"));
            Assert.That(manifest.Files.Select(f => f.Path), Does.Contain("00-pid-1-pre/pages-1.img"), "the parent's files are hashed entries of their own");
            Assert.That(intact.IsValid, Is.True, intact.Describe());
            Assert.That((retargeted.Kind, retargeted.Path), Is.EqualTo((VerificationIssueKind.TypeChanged, "00-pid-1/parent")));
            Assert.That(swapped.Issues.Select(i => (i.Kind, i.Path)), Does.Contain((VerificationIssueKind.UnsafeEntry, "00-pid-1/parent"))
                .And.Contain((VerificationIssueKind.PathEscape, "00-pid-1-pre/pages-1.img")), swapped.Describe());
        });
    }

    [Test]
    public async Task Verify_rejects_a_folder_replaced_by_a_symlink_out_of_the_set()
    {
        var set = await _f.SealedSet();
        var elsewhere = Directory.CreateDirectory(Path.Combine(_f.Dir, "elsewhere")).FullName;
        File.Copy(Images(set, "sub/fdinfo-2.img"), Path.Combine(elsewhere, "fdinfo-2.img"));
        Directory.Delete(Images(set, "sub"), recursive: true);
        Directory.CreateSymbolicLink(Images(set, "sub"), elsewhere);

        var result = await _f.Store.VerifyAsync(set.Id);

        Assert.That(result.Issues.Select(i => (i.Kind, i.Path)), Does.Contain((VerificationIssueKind.PathEscape, "sub/fdinfo-2.img")), result.Describe());
    }

    [Test]
    public async Task Verify_rejects_a_file_replaced_by_a_symlink_out_of_the_set()
    {
        var set = await _f.SealedSet();
        File.Delete(Images(set, "pstree.img"));
        File.CreateSymbolicLink(Images(set, "pstree.img"), "/etc/hostname");

        var issue = Single(await _f.Store.VerifyAsync(set.Id));

        Assert.That((issue.Kind, issue.Path), Is.EqualTo((VerificationIssueKind.PathEscape, "pstree.img")));
    }

    [Test]
    public async Task A_set_from_another_host_is_refused_unless_allowed()
    {
        var set = await _f.SealedSet();
        File.WriteAllText(_f.MachineIdFile, "ffffffffffffffffffffffffffffffff\n");

        var issue = Single(await _f.Store.VerifyAsync(set.Id));
        var allowed = await _f.Store.OpenForRestoreAsync(set.Id, new VerifyOptions { AllowForeignHost = true });

        Assert.Multiple(() =>
        {
            Assert.That(issue.Kind, Is.EqualTo(VerificationIssueKind.ForeignHost));
            Assert.That(issue.Detail, Does.Contain("0123456789abcdef0123456789abcdef").And.Contain("ffffffffffffffffffffffffffffffff"));
            Assert.That(allowed.SetId, Is.EqualTo(set.Id));
        });
    }

    [TestCase("../../etc")]
    [TestCase("/tmp")]
    [TestCase("20261126T063200Z-0a1b2c3d/../x")]
    public void Set_ids_that_are_not_ids_are_rejected(string id)
    {
        Assert.That(() => _f.Store.VerifyAsync(id), Throws.ArgumentException.With.Message.Contains("is not a checkpoint set id"));
        Assert.That(() => _f.Store.DeleteSet(id), Throws.ArgumentException);
    }

    [Test]
    public void An_unknown_set_is_a_clear_error()
    {
        Assert.That(() => _f.Store.VerifyAsync("20261126T063200Z-0a1b2c3d"),
            Throws.TypeOf<CheckpointSetNotFoundException>().With.Message.Contains("no checkpoint set '20261126T063200Z-0a1b2c3d'"));
    }

    [Test]
    public void A_non_empty_folder_that_is_not_a_store_is_refused()
    {
        var dir = Directory.CreateDirectory(Path.Combine(_f.Dir, "home")).FullName;
        File.WriteAllText(Path.Combine(dir, "thesis.tex"), "precious");

        Assert.That(() => new DirectoryImageStore(new DirectoryImageStoreOptions { RootDirectory = dir, MachineIdPath = _f.MachineIdFile }),
            Throws.TypeOf<ImageStoreException>().With.Message.Contains("is not an image store").And.Message.Contains("thesis.tex"));
    }

    [Test]
    public async Task List_delete_and_retention_keep_the_newest_sealed_sets()
    {
        var ids = new List<string>();
        for (var i = 0; i < 4; i++)
        {
            ids.Add((await _f.SealedSet()).Id);
            _f.Clock.Now += TimeSpan.FromMinutes(1);
        }

        _f.Clock.Now -= TimeSpan.FromMinutes(10);
        var abandoned = _f.FillSet().Id; // an old, never-sealed attempt
        _f.Clock.Now += TimeSpan.FromMinutes(30);
        var inProgress = _f.FillSet().Id; // newer than every sealed set: may be being written

        var deleted = _f.Store.ApplyRetention(keepSealed: 2);
        var left = _f.Store.ListSets();

        Assert.Multiple(() =>
        {
            Assert.That(deleted, Is.EquivalentTo(new[] { ids[0], ids[1], abandoned }));
            Assert.That(left.Select(s => s.SetId), Is.EqualTo(new[] { ids[2], ids[3], inProgress }));
            Assert.That(left.Select(s => s.IsSealed), Is.EqualTo(new[] { true, true, false }));
            Assert.That(left[0].TotalBytes, Is.EqualTo(300_026));
        });

        _f.Store.DeleteSet(ids[2]);
        Assert.That(_f.Store.ListSets().Select(s => s.SetId), Is.EqualTo(new[] { ids[3], inProgress }));
    }

    [Test]
    public void A_second_store_instance_cannot_take_the_lock_and_is_told_the_holder_pid()
    {
        var other = _f.Open();
        using (_f.Store.AcquireLock())
        {
            Assert.That(() => other.AcquireLock(), Throws.TypeOf<ImageStoreLockedException>()
                .With.Property(nameof(ImageStoreLockedException.HolderPid)).EqualTo(Environment.ProcessId)
                .And.Message.Contains($"pid {Environment.ProcessId}"));
        }

        using var second = other.AcquireLock();
        Assert.That(second.LockFile, Does.EndWith(".lock"));
    }

    [Test]
    public void The_lock_excludes_another_process_both_ways()
    {
        var lockFile = Path.Combine(_f.StoreRoot, ".lock");
        using (_f.Store.AcquireLock())
        {
            var r = ProcessRunner.Run("flock", ["--nonblock", "--conflict-exit-code", "42", lockFile, "true"], TimeSpan.FromSeconds(20));
            Assert.That(r.ExitCode, Is.EqualTo(42), "flock(1) must see our lock: " + r);
        }

        using var holder = Process.Start(new ProcessStartInfo("flock", ["--nonblock", lockFile, "sleep", "30"]) { UseShellExecute = false })!;
        try
        {
            Workload.WaitFor(() => File.ReadAllText("/proc/locks").Contains("FLOCK", StringComparison.Ordinal) && Probe() ? 1 : 0, "flock(1) to hold the lock");
            Assert.That(() => _f.Store.AcquireLock(), Throws.TypeOf<ImageStoreLockedException>().With.Message.Contains("in use by another update"));
        }
        finally
        {
            holder.Kill(entireProcessTree: true);
            holder.WaitForExit(5000);
        }

        bool Probe()
        {
            try
            {
                using var l = _f.Open().AcquireLock();
                return false;
            }
            catch (ImageStoreLockedException)
            {
                return true;
            }
        }
    }

    [Test]
    public void Capacity_reports_the_file_system_and_the_estimate_fits_a_small_process()
    {
        var capacity = _f.Store.GetCapacity();
        using var sleeper = Process.Start(new ProcessStartInfo("sleep", ["30"]) { UseShellExecute = false })!;
        try
        {
            var estimate = _f.Store.EnsureCapacityFor([sleeper.Id]);
            Assert.Multiple(() =>
            {
                Assert.That(capacity.TotalBytes, Is.GreaterThan(0));
                Assert.That(capacity.FreeBytes, Is.InRange(1, capacity.TotalBytes));
                Assert.That(estimate.Processes, Is.EqualTo(1));
                Assert.That(estimate.MemoryBytes, Is.GreaterThan(0));
                Assert.That(estimate.RequiredBytes, Is.GreaterThan(estimate.MemoryBytes + CapacityEstimator.FixedBytes));
                Assert.That(estimate.Fits, Is.True);
            });
        }
        finally
        {
            sleeper.Kill();
            sleeper.WaitForExit(5000);
        }
    }
}
