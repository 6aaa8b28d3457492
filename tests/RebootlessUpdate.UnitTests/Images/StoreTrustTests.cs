// Expected values are written inline for readability; these tests run once.
#pragma warning disable CA1861
using Mono.Unix.Native;
using RebootlessUpdate.Images;

namespace RebootlessUpdate.UnitTests.Images;

/// <summary>
/// Attacks on the store: each plants what an attacker with write access to some folder could
/// (a deleted manifest, a forged link entry, a FIFO, a link or another user's folder on the way)
/// and asserts that nothing from outside is trusted, read through, chmod'ed or deleted.
/// The "another user" cases need root (chown to nobody, uid 65534).
/// </summary>
public class StoreTrustTests
{
    private const int Nobody = 65534;
    private static readonly TimeSpan Prompt = TimeSpan.FromSeconds(10);

    private StoreFixture _f = null!;

    [SetUp]
    public void SetUp() => _f = new StoreFixture();

    [TearDown]
    public void TearDown() => _f.Dispose();

    private static string Images(CheckpointSet set, string relative) => Path.Combine(set.ImagesDirectory, relative);

    private static string Manifest(CheckpointSet set) => Path.Combine(set.Directory, "manifest.json");

    private static void RequireRoot()
    {
        if (Syscall.geteuid() != 0)
        {
            Assert.Ignore("needs root to chown files to another user");
        }
    }

    private static void Chown(string path, int uid) => Assert.That(Syscall.lchown(path, uid, uid), Is.Zero, $"lchown {path}");

    private static void Chmod(string path, FilePermissions mode) => Assert.That(Syscall.chmod(path, mode), Is.Zero, $"chmod {path}");

    private static FilePermissions Mode(string path) => Syscall.lstat(path, out var st) == 0 ? st.st_mode & FilePermissions.ALLPERMS : throw new IOException(path);

    // --- 1. A sealed set whose manifest is deleted is damaged, never "unsealed" ---

    [Test]
    public async Task Deleting_the_manifest_of_a_sealed_set_leaves_it_damaged_never_unsealed_and_never_restorable()
    {
        var set = await _f.SealedSet();
        File.Delete(Manifest(set));
        StoreFixture.FlipByte(Images(set, "pages-1.img"), 1000);

        var issue = (await _f.Store.VerifyAsync(set.Id)).Issues.Single();
        var listed = _f.Store.ListSets().Single();

        Assert.Multiple(() =>
        {
            Assert.That(File.Exists(Path.Combine(set.Directory, "sealed")), Is.True, "sealing left its mark");
            Assert.That(issue.Kind, Is.EqualTo(VerificationIssueKind.ManifestMissing), issue.ToString());
            Assert.That(issue.Detail, Does.Contain("was sealed").And.Contain("manifest is gone"));
            Assert.That(listed.IsSealed, Is.True);
            Assert.That(listed.IsNeverSealed, Is.False, "the pipeline's same-boot shortcut must not take it for a crash before sealing");
            Assert.That(listed.Problem, Does.Contain("manifest is gone"));
            Assert.That(() => _f.Store.OpenForRestoreAsync(set.Id), Throws.TypeOf<CheckpointSetVerificationException>().With.Message.Contains("ManifestMissing"));
            Assert.That(() => _f.Store.SealAsync(set, new SealOptions { CriuVersion = "4.1.1" }), Throws.TypeOf<ImageStoreException>().With.Message.Contains("already sealed"),
                "a sealed set is never sealed again over its tampered images");
        });
    }

    [Test]
    public async Task The_seal_mark_is_a_private_file_written_with_the_manifest()
    {
        var set = await _f.SealedSet();
        var mark = Path.Combine(set.Directory, "sealed");

        Assert.That(Syscall.lstat(mark, out var st), Is.Zero);
        Assert.Multiple(() =>
        {
            Assert.That(st.st_mode & FilePermissions.S_IFMT, Is.EqualTo(FilePermissions.S_IFREG));
            Assert.That(st.st_mode & FilePermissions.ALLPERMS, Is.EqualTo(FilePermissions.S_IRUSR | FilePermissions.S_IWUSR));
            Assert.That(File.Exists(Manifest(set)), Is.True);
        });
    }

    // --- 2. A symbolic link entry in a manifest is never trusted ---

    [Test]
    public async Task A_forged_manifest_declaring_an_image_as_a_symlink_to_outside_bytes_is_damage()
    {
        var set = await _f.SealedSet();
        // The attacker's bytes, anywhere on the host, and a manifest rewritten with a valid body hash.
        var foreign = Path.Combine(_f.Dir, "foreign-pages.img");
        File.WriteAllBytes(foreign, new byte[300_000]);
        File.Delete(Images(set, "pages-1.img"));
        File.CreateSymbolicLink(Images(set, "pages-1.img"), foreign);
        var manifest = ManifestFormat.Read(File.ReadAllBytes(Manifest(set)), "m");
        var forged = manifest with
        {
            Files = [.. manifest.Files.Select(f => f.Path == "pages-1.img" ? new ManifestEntry { Path = f.Path, Size = 0, SymlinkTarget = foreign } : f)],
            TotalBytes = manifest.TotalBytes - 300_000,
        };
        File.WriteAllBytes(Manifest(set), ManifestFormat.Write(forged));

        var result = await _f.Store.VerifyAsync(set.Id);

        Assert.Multiple(() =>
        {
            Assert.That(result.Issues.Select(i => (i.Kind, i.Path)), Is.EqualTo(new[] { (VerificationIssueKind.UnsafeEntry, "pages-1.img") }), result.Describe());
            Assert.That(() => _f.Store.OpenForRestoreAsync(set.Id), Throws.TypeOf<CheckpointSetVerificationException>());
        });
    }

    [Test]
    public async Task A_forged_parent_link_entry_whose_folder_is_a_link_out_of_the_set_is_damage()
    {
        var set = _f.FillSet();
        Directory.CreateDirectory(Images(set, "00-a"));
        File.WriteAllText(Images(set, "00-a/pages-1.img"), "final");
        await _f.Store.SealAsync(set, new SealOptions { CriuVersion = "4.1.1" });
        // Planted after the seal: a parent link, its "pre-dump" folder a link to the attacker's folder.
        var elsewhere = Directory.CreateDirectory(Path.Combine(_f.Dir, "elsewhere")).FullName;
        Directory.CreateSymbolicLink(Images(set, "00-a-pre"), elsewhere);
        File.CreateSymbolicLink(Images(set, "00-a/parent"), "../00-a-pre");
        var manifest = ManifestFormat.Read(File.ReadAllBytes(Manifest(set)), "m");
        File.WriteAllBytes(Manifest(set), ManifestFormat.Write(manifest with
        {
            Files = [.. manifest.Files.Append(new ManifestEntry { Path = "00-a/parent", Size = 0, SymlinkTarget = "../00-a-pre" }).OrderBy(f => f.Path, StringComparer.Ordinal)],
        }));

        var result = await _f.Store.VerifyAsync(set.Id);

        Assert.That(result.Issues.Select(i => (i.Kind, i.Path)), Does.Contain((VerificationIssueKind.UnsafeEntry, "00-a/parent")), result.Describe());
    }

    // --- 3. Nothing is opened before its type is checked; a FIFO never blocks ---

    [Test]
    public async Task A_fifo_in_place_of_the_manifest_is_reported_as_damage_at_once_by_verify_and_list()
    {
        var set = await _f.SealedSet();
        File.Delete(Manifest(set));
        Assert.That(Syscall.mkfifo(Manifest(set), FilePermissions.S_IRUSR | FilePermissions.S_IWUSR), Is.Zero);

        var result = await _f.Store.VerifyAsync(set.Id).WaitAsync(Prompt);
        var listed = await Task.Run(() => _f.Store.ListSets()).WaitAsync(Prompt);

        Assert.Multiple(() =>
        {
            Assert.That(result.Issues.Single().Kind, Is.EqualTo(VerificationIssueKind.ManifestCorrupt));
            Assert.That(result.Issues.Single().Detail, Does.Contain("named pipe, not a regular file"));
            Assert.That(listed.Single().IsSealed, Is.True);
            Assert.That(listed.Single().Problem, Does.Contain("named pipe"));
        });
    }

    [Test]
    public async Task A_manifest_that_is_a_symlink_to_a_valid_manifest_is_not_followed()
    {
        var set = await _f.SealedSet();
        var copy = Path.Combine(_f.Dir, "manifest-copy.json");
        File.Move(Manifest(set), copy);
        File.CreateSymbolicLink(Manifest(set), copy);

        var issue = (await _f.Store.VerifyAsync(set.Id)).Issues.Single();

        Assert.That(issue.Kind, Is.EqualTo(VerificationIssueKind.ManifestCorrupt));
        Assert.That(issue.Detail, Does.Contain("symbolic link, not a regular file"));
    }

    [Test]
    public async Task A_fifo_in_place_of_an_image_is_reported_without_blocking()
    {
        var set = await _f.SealedSet();
        File.Delete(Images(set, "core-1.img"));
        Assert.That(Syscall.mkfifo(Images(set, "core-1.img"), FilePermissions.S_IRUSR | FilePermissions.S_IWUSR), Is.Zero);

        var issue = (await _f.Store.VerifyAsync(set.Id).WaitAsync(Prompt)).Issues.Single();

        Assert.That((issue.Kind, issue.Path), Is.EqualTo((VerificationIssueKind.TypeChanged, "core-1.img")));
        Assert.That(() => Task.Run(() => StoreFiles.OpenRegular(Images(set, "core-1.img"))).WaitAsync(Prompt),
            Throws.TypeOf<NotARegularFileException>().With.Message.Contains("named pipe"), "opened without blocking, then refused by type");
    }

    [Test]
    public void A_fifo_or_a_symlink_in_place_of_the_lock_file_is_refused_and_the_link_target_untouched()
    {
        var lockFile = Path.Combine(_f.StoreRoot, ".lock");
        Assert.That(Syscall.mkfifo(lockFile, FilePermissions.S_IRUSR | FilePermissions.S_IWUSR), Is.Zero);
        var fifo = Assert.Throws<UnsafeStorePathException>(() => _f.Store.AcquireLock().Dispose());
        File.Delete(lockFile);
        var victim = Path.Combine(_f.Dir, "victim");
        File.WriteAllText(victim, "precious");
        File.CreateSymbolicLink(lockFile, victim);
        var link = Assert.Throws<UnsafeStorePathException>(() => _f.Store.AcquireLock().Dispose());
        var dangling = Path.Combine(_f.Dir, "would-be-created");
        File.Delete(lockFile);
        File.CreateSymbolicLink(lockFile, dangling);
        Assert.Throws<UnsafeStorePathException>(() => _f.Store.AcquireLock().Dispose());

        Assert.Multiple(() =>
        {
            Assert.That(fifo!.Message, Does.Contain(".lock is a named pipe, not the store's lock file"));
            Assert.That(link!.Message, Does.Contain("symbolic link"));
            Assert.That(File.ReadAllText(victim), Is.EqualTo("precious"));
            Assert.That(File.Exists(dangling), Is.False, "a dangling link's target is not created");
        });
    }

    [Test]
    public void A_lock_file_of_another_user_is_refused()
    {
        RequireRoot();
        var lockFile = Path.Combine(_f.StoreRoot, ".lock");
        File.WriteAllText(lockFile, "");
        Chown(lockFile, Nobody);

        Assert.That(() => _f.Store.AcquireLock().Dispose(), Throws.TypeOf<UnsafeStorePathException>().With.Message.Contains("belongs to uid 65534"));
    }

    [Test]
    public void A_store_marker_that_is_a_fifo_or_a_symlink_is_refused_at_open()
    {
        var marker = Path.Combine(_f.StoreRoot, ".rebootless-store");
        File.Delete(marker);
        Assert.That(Syscall.mkfifo(marker, FilePermissions.S_IRUSR | FilePermissions.S_IWUSR), Is.Zero);

        var e = Assert.Throws<UnsafeStorePathException>(() => _f.Open());

        Assert.That(e!.Message, Does.Contain("is a named pipe, not the store's marker file"));
    }

    // --- 4. Set and images folders that are links, another user's, or writable by others ---

    [Test]
    public async Task A_set_folder_replaced_by_a_symlink_is_listed_as_damaged_never_verified_through_and_never_deleted_through()
    {
        var set = await _f.SealedSet();
        // The attacker's copy of a whole set (manifest included) outside the store, linked in its place.
        var outside = Path.Combine(_f.Dir, "outside");
        Directory.Move(set.Directory, outside);
        Directory.CreateSymbolicLink(set.Directory, outside);

        var listed = _f.Store.ListSets().Single();
        var verify = Assert.ThrowsAsync<UnsafeStorePathException>(() => _f.Store.VerifyAsync(set.Id));
        var delete = Assert.Throws<UnsafeStorePathException>(() => _f.Store.DeleteSet(set.Id));
        var pruned = _f.Store.ApplyRetention(0);

        Assert.Multiple(() =>
        {
            Assert.That(listed.IsNeverSealed, Is.False);
            Assert.That(listed.Problem, Does.Contain("the set folder is a symbolic link"));
            Assert.That(verify!.Message, Does.Contain(set.Id).And.Contain("symbolic link"));
            Assert.That(delete!.Message, Does.Contain("symbolic link"));
            Assert.That(pruned, Is.Empty);
            Assert.That(File.Exists(Path.Combine(outside, "images", "pages-1.img")), Is.True, "nothing outside the store was deleted");
            Assert.That(File.Exists(Path.Combine(outside, "manifest.json")), Is.True);
        });
    }

    [Test]
    public async Task A_set_folder_of_another_user_or_writable_by_others_is_refused()
    {
        RequireRoot();
        var foreign = await _f.SealedSet();
        Chown(foreign.Directory, Nobody);
        var open = await _f.SealedSet();
        Chmod(open.Directory, FilePermissions.S_IRWXU | FilePermissions.S_IRWXG | FilePermissions.S_IRWXO);

        Assert.Multiple(() =>
        {
            Assert.That(() => _f.Store.VerifyAsync(foreign.Id), Throws.TypeOf<UnsafeStorePathException>().With.Message.Contains("belongs to uid 65534"));
            Assert.That(() => _f.Store.VerifyAsync(open.Id), Throws.TypeOf<UnsafeStorePathException>().With.Message.Contains("writable by its group and others"));
            Assert.That(() => _f.Store.DeleteSet(foreign.Id), Throws.TypeOf<UnsafeStorePathException>());
            Assert.That(_f.Store.ListSets().Select(s => s.Problem), Has.All.Not.Null);
        });
    }

    [Test]
    public async Task An_images_folder_that_is_a_symlink_of_another_user_or_writable_by_others_is_damage()
    {
        RequireRoot();
        var linked = await _f.SealedSet();
        var outside = Path.Combine(_f.Dir, "outside-images");
        Directory.Move(linked.ImagesDirectory, outside);
        Directory.CreateSymbolicLink(linked.ImagesDirectory, outside);
        var foreign = await _f.SealedSet();
        Chown(foreign.ImagesDirectory, Nobody);
        var open = await _f.SealedSet();
        Chmod(Images(open, "sub"), FilePermissions.S_IRWXU | FilePermissions.S_IWOTH | FilePermissions.S_IXOTH);

        var l = (await _f.Store.VerifyAsync(linked.Id)).Issues;
        var f = (await _f.Store.VerifyAsync(foreign.Id)).Issues;
        var o = (await _f.Store.VerifyAsync(open.Id)).Issues;

        Assert.Multiple(() =>
        {
            Assert.That(l.Select(i => (i.Kind, i.Path)), Is.EqualTo(new[] { (VerificationIssueKind.UntrustedFolder, "images") }));
            Assert.That(l[0].Detail, Does.Contain("symbolic link"));
            Assert.That(f.Select(i => (i.Kind, i.Path)), Is.EqualTo(new[] { (VerificationIssueKind.UntrustedFolder, "images") }));
            Assert.That(f[0].Detail, Does.Contain("belongs to uid 65534"));
            Assert.That(o.Select(i => (i.Kind, i.Path)), Is.EqualTo(new[] { (VerificationIssueKind.UntrustedFolder, "sub") }));
            Assert.That(() => _f.Store.OpenForRestoreAsync(linked.Id), Throws.TypeOf<CheckpointSetVerificationException>());
        });
    }

    [Test]
    public void Seal_refuses_an_images_folder_swapped_for_a_symlink()
    {
        var set = _f.FillSet();
        var outside = Path.Combine(_f.Dir, "outside-images");
        Directory.Move(set.ImagesDirectory, outside);
        Directory.CreateSymbolicLink(set.ImagesDirectory, outside);

        Assert.That(() => _f.Store.SealAsync(set, new SealOptions { CriuVersion = "4.1.1" }),
            Throws.TypeOf<UnsafeStorePathException>().With.Message.Contains("symbolic link"));
        Assert.That(File.Exists(Manifest(set)), Is.False);
    }

    [Test]
    public void Seal_refuses_a_folder_of_another_user_inside_the_images()
    {
        RequireRoot();
        var set = _f.FillSet();
        Chown(Images(set, "sub"), Nobody);

        Assert.That(() => _f.Store.SealAsync(set, new SealOptions { CriuVersion = "4.1.1" }),
            Throws.TypeOf<UnsafeSetPathException>().With.Message.Contains("'sub' belongs to uid 65534"));
        Assert.That(File.Exists(Manifest(set)), Is.False);
    }

    [Test]
    public async Task An_image_file_of_another_user_or_writable_by_others_is_damage_even_with_its_hash_intact()
    {
        RequireRoot();
        var set = await _f.SealedSet();
        Chown(Images(set, "pages-1.img"), Nobody);
        Chmod(Images(set, "core-1.img"), FilePermissions.S_IRUSR | FilePermissions.S_IWUSR | FilePermissions.S_IWGRP);

        var result = await _f.Store.VerifyAsync(set.Id);

        Assert.Multiple(() =>
        {
            Assert.That(result.Issues.Select(i => (i.Kind, i.Path)), Is.EquivalentTo(new[]
            {
                (VerificationIssueKind.UntrustedFile, "pages-1.img"),
                (VerificationIssueKind.UntrustedFile, "core-1.img"),
            }));
            Assert.That(result.Issues.Single(i => i.Path == "pages-1.img").Detail, Does.Contain("belongs to uid 65534"));
            Assert.That(result.Issues.Single(i => i.Path == "core-1.img").Detail, Does.Contain("writable by its group"));
            Assert.That(() => _f.Store.OpenForRestoreAsync(set.Id), Throws.TypeOf<CheckpointSetVerificationException>());
        });
    }

    [Test]
    public void Seal_refuses_an_image_file_of_another_user()
    {
        RequireRoot();
        var set = _f.FillSet();
        Chown(Images(set, "sub/fdinfo-2.img"), Nobody);

        Assert.That(() => _f.Store.SealAsync(set, new SealOptions { CriuVersion = "4.1.1" }),
            Throws.TypeOf<UnsafeSetPathException>().With.Message.Contains("'sub/fdinfo-2.img' belongs to uid 65534"));
        Assert.That(File.Exists(Manifest(set)), Is.False);
    }

    // --- 5. The way to the store ---

    [Test]
    public void A_store_path_through_a_folder_others_may_write_is_refused_before_anything_is_created()
    {
        var shared = Directory.CreateDirectory(Path.Combine(_f.Dir, "shared")).FullName;
        Chmod(shared, FilePermissions.S_IRWXU | FilePermissions.S_IRWXG | FilePermissions.S_IRWXO);
        var groupShared = Directory.CreateDirectory(Path.Combine(_f.Dir, "group")).FullName;
        Chmod(groupShared, FilePermissions.S_IRWXU | FilePermissions.S_IRWXG);

        var e = Assert.Throws<UnsafeStorePathException>(() => OpenAt(Path.Combine(shared, "deeper", "store")));
        var g = Assert.Throws<UnsafeStorePathException>(() => OpenAt(Path.Combine(groupShared, "store")));

        Assert.Multiple(() =>
        {
            Assert.That(e!.UnsafePath, Is.EqualTo(shared));
            Assert.That(e.Message, Does.Contain("is writable by its group and others (mode 0777) without the sticky bit"));
            Assert.That(g!.Message, Does.Contain("is writable by its group"));
            Assert.That(Directory.EnumerateFileSystemEntries(shared), Is.Empty, "nothing created");
            Assert.That(Directory.EnumerateFileSystemEntries(groupShared), Is.Empty, "nothing created");
        });
    }

    [Test]
    public void A_store_path_through_another_users_folder_or_symlink_is_refused_and_nothing_is_chmoded()
    {
        RequireRoot();
        var theirs = Directory.CreateDirectory(Path.Combine(_f.Dir, "theirs")).FullName;
        Chown(theirs, Nobody);
        var real = Directory.CreateDirectory(Path.Combine(_f.Dir, "real")).FullName;
        Chmod(real, FilePermissions.S_IRWXU | FilePermissions.S_IRGRP | FilePermissions.S_IXGRP | FilePermissions.S_IROTH | FilePermissions.S_IXOTH);
        var link = Path.Combine(_f.Dir, "link");
        Directory.CreateSymbolicLink(link, real);
        Chown(link, Nobody);

        var folder = Assert.Throws<UnsafeStorePathException>(() => OpenAt(Path.Combine(theirs, "store")));
        var symlink = Assert.Throws<UnsafeStorePathException>(() => OpenAt(link));

        Assert.Multiple(() =>
        {
            Assert.That(folder!.Message, Does.Contain(theirs).And.Contain("belongs to uid 65534"));
            Assert.That(symlink!.Message, Does.Contain(link).And.Contain("symbolic link that belongs to uid 65534"));
            Assert.That(Mode(real), Is.EqualTo(FilePermissions.S_IRWXU | FilePermissions.S_IRGRP | FilePermissions.S_IXGRP | FilePermissions.S_IROTH | FilePermissions.S_IXOTH), "not chmod'ed");
            Assert.That(Directory.EnumerateFileSystemEntries(real), Is.Empty, "not filled");
            Assert.That(Directory.EnumerateFileSystemEntries(theirs), Is.Empty);
        });
    }

    [Test]
    public void In_a_sticky_shared_folder_only_a_next_folder_of_ours_is_accepted()
    {
        RequireRoot();
        var sticky = Directory.CreateDirectory(Path.Combine(_f.Dir, "sticky")).FullName;
        Chmod(sticky, FilePermissions.S_ISVTX | FilePermissions.S_IRWXU | FilePermissions.S_IRWXG | FilePermissions.S_IRWXO);
        var planted = Directory.CreateDirectory(Path.Combine(sticky, "planted")).FullName;
        Chown(planted, Nobody);
        Chmod(planted, FilePermissions.S_IRWXU);

        var refused = Assert.Throws<UnsafeStorePathException>(() => OpenAt(planted));
        OpenAt(Path.Combine(sticky, "ours"));

        Assert.Multiple(() =>
        {
            Assert.That(refused!.Message, Does.Contain(planted).And.Contain("belongs to uid 65534 and lies in " + sticky));
            Assert.That(Directory.Exists(Path.Combine(sticky, "ours", "sets")), Is.True, "a new folder of ours in a sticky folder is fine");
            Assert.That(Mode(planted), Is.EqualTo(FilePermissions.S_IRWXU));
            Assert.That(Directory.EnumerateFileSystemEntries(planted), Is.Empty);
        });
    }

    [Test]
    public void A_store_path_through_a_root_owned_symlink_is_followed_and_checked_at_its_target()
    {
        var shared = Directory.CreateDirectory(Path.Combine(_f.Dir, "shared")).FullName;
        Chmod(shared, FilePermissions.S_IRWXU | FilePermissions.S_IRWXG | FilePermissions.S_IRWXO);
        var good = Directory.CreateDirectory(Path.Combine(_f.Dir, "good")).FullName;
        var toShared = Path.Combine(_f.Dir, "to-shared");
        Directory.CreateSymbolicLink(toShared, "shared");
        var toGood = Path.Combine(_f.Dir, "to-good");
        Directory.CreateSymbolicLink(toGood, good);

        var e = Assert.Throws<UnsafeStorePathException>(() => OpenAt(Path.Combine(toShared, "store")));
        OpenAt(Path.Combine(toGood, "store"));

        Assert.Multiple(() =>
        {
            Assert.That(e!.UnsafePath, Is.EqualTo(shared));
            Assert.That(Directory.Exists(Path.Combine(good, "store", "sets")), Is.True);
        });
    }

    // --- 6. Read-only opens create and change nothing ---

    [Test]
    public void A_read_only_open_of_a_missing_store_creates_nothing_and_reads_as_empty()
    {
        var root = Path.Combine(_f.Dir, "not-yet", "store");

        var store = OpenAt(root, readOnly: true);

        Assert.Multiple(() =>
        {
            Assert.That(Directory.Exists(Path.Combine(_f.Dir, "not-yet")), Is.False, "nothing created");
            Assert.That(store.ListSets(), Is.Empty);
            Assert.That(store.GetCapacity().TotalBytes, Is.GreaterThan(0), "the file system it would live on");
            Assert.That(() => store.VerifyAsync("20261126T063200Z-0a1b2c3d"), Throws.TypeOf<CheckpointSetNotFoundException>());
            Assert.That(() => store.CreateSet(["pid:1"]), Throws.InvalidOperationException.With.Message.Contains("read-only"));
            Assert.That(() => store.AcquireLock(), Throws.InvalidOperationException);
            Assert.That(Directory.Exists(Path.Combine(_f.Dir, "not-yet")), Is.False, "still nothing created");
        });
    }

    [Test]
    public async Task A_read_only_open_of_an_existing_store_lists_and_verifies_without_changing_modes()
    {
        var set = await _f.SealedSet();
        var mode = FilePermissions.S_IRWXU | FilePermissions.S_IRGRP | FilePermissions.S_IXGRP;
        Chmod(_f.StoreRoot, mode);

        var store = OpenAt(_f.StoreRoot, readOnly: true);
        var result = await store.VerifyAsync(set.Id);

        Assert.Multiple(() =>
        {
            Assert.That(result.IsValid, Is.True, result.Describe());
            Assert.That(store.ListSets().Single().SetId, Is.EqualTo(set.Id));
            Assert.That(Mode(_f.StoreRoot), Is.EqualTo(mode), "not chmod'ed");
            Assert.That(File.Exists(Path.Combine(_f.StoreRoot, ".lock")), Is.False);
            Assert.That(() => store.DeleteSet(set.Id), Throws.InvalidOperationException);
        });
    }

    [Test]
    public void An_empty_folder_that_is_not_a_store_is_left_alone_by_a_read_only_open()
    {
        var empty = Directory.CreateDirectory(Path.Combine(_f.Dir, "empty")).FullName;
        var mode = Mode(empty);

        var store = OpenAt(empty, readOnly: true);

        Assert.That(store.ListSets(), Is.Empty);
        Assert.That(Directory.EnumerateFileSystemEntries(empty), Is.Empty);
        Assert.That(Mode(empty), Is.EqualTo(mode));
    }

    [Test]
    public void An_existing_store_writable_by_others_is_refused()
    {
        Chmod(_f.StoreRoot, FilePermissions.S_IRWXU | FilePermissions.S_IRWXG | FilePermissions.S_IRWXO);

        Assert.That(() => _f.Open(), Throws.TypeOf<UnsafeStorePathException>().With.Message.Contains("may have planted sets"));
        Assert.That(Mode(_f.StoreRoot), Is.EqualTo(FilePermissions.S_IRWXU | FilePermissions.S_IRWXG | FilePermissions.S_IRWXO), "refused before any chmod");
    }

    // --- 7. The keyed manifest hash ---

    private string KeyPath => Path.Combine(_f.Dir, "keys", "manifest.key");

    /// <summary>Rewrites a sealed set's manifest as an attacker with write access to the set can: the body hash is right, the images changed.</summary>
    private static void ForgeManifestForAlteredPages(CheckpointSet set)
    {
        var pages = Images(set, "pages-1.img");
        StoreFixture.FlipByte(pages, 4242);
        var manifest = ManifestFormat.Read(File.ReadAllBytes(Manifest(set)), "m");
        var hash = FileHasher.Hash(pages, chunks: false, CancellationToken.None).Hash;
        File.WriteAllBytes(Manifest(set), ManifestFormat.Write(manifest with
        {
            Files = [.. manifest.Files.Select(f => f.Path == "pages-1.img" ? new ManifestEntry { Path = f.Path, Size = f.Size, Xxh128 = hash } : f)],
        }));
    }

    [Test]
    public async Task With_a_manifest_key_a_rewritten_manifest_is_unauthenticated_while_without_one_it_passes()
    {
        var keyed = OpenAt(Path.Combine(_f.Dir, "keyed"), manifestKey: KeyPath);
        var keyedSet = keyed.CreateSet(["pid:1"]);
        File.WriteAllBytes(Images(keyedSet, "pages-1.img"), new byte[100_000]);
        await keyed.SealAsync(keyedSet, new SealOptions { CriuVersion = "4.1.1", KernelRelease = "k" });
        var intact = await keyed.VerifyAsync(keyedSet.Id);
        var plain = await _f.SealedSet();

        ForgeManifestForAlteredPages(keyedSet);
        ForgeManifestForAlteredPages(plain);
        var forged = await keyed.VerifyAsync(keyedSet.Id);
        var unkeyed = await _f.Store.VerifyAsync(plain.Id);

        Assert.Multiple(() =>
        {
            Assert.That(intact.IsValid, Is.True, intact.Describe());
            Assert.That(File.ReadAllText(Path.Combine(keyedSet.Directory, "sealed")), Does.StartWith("hmac-sha256 "));
            Assert.That(new FileInfo(KeyPath).Length, Is.EqualTo(32));
            Assert.That(Mode(KeyPath), Is.EqualTo(FilePermissions.S_IRUSR | FilePermissions.S_IWUSR));
            Assert.That(Mode(Path.GetDirectoryName(KeyPath)!), Is.EqualTo(FilePermissions.S_IRWXU));
            Assert.That(forged.Issues.Select(i => i.Kind), Is.EqualTo(new[] { VerificationIssueKind.ManifestUnauthenticated }), forged.Describe());
            Assert.That(forged.Issues[0].Detail, Does.Contain("rewritten by someone without the key"));
            Assert.That(unkeyed.IsValid, Is.True, "without a key, write access to the set is enough to forge (why the key exists)");
        });
    }

    [Test]
    public async Task With_a_manifest_key_a_missing_or_readable_key_or_a_stripped_mark_is_damage()
    {
        var root = Path.Combine(_f.Dir, "keyed");
        var store = OpenAt(root, manifestKey: KeyPath);
        var set = store.CreateSet(["pid:1"]);
        File.WriteAllText(Images(set, "core-1.img"), "core");
        await store.SealAsync(set, new SealOptions { CriuVersion = "4.1.1", KernelRelease = "k" });

        Chmod(KeyPath, FilePermissions.S_IRUSR | FilePermissions.S_IWUSR | FilePermissions.S_IROTH);
        var readable = (await store.VerifyAsync(set.Id)).Issues.Single();
        File.Move(KeyPath, KeyPath + ".away");
        var missing = (await store.VerifyAsync(set.Id)).Issues.Single();
        File.Move(KeyPath + ".away", KeyPath);
        Chmod(KeyPath, FilePermissions.S_IRUSR | FilePermissions.S_IWUSR);
        File.WriteAllText(Path.Combine(set.Directory, "sealed"), "");
        var stripped = (await store.VerifyAsync(set.Id)).Issues.Single();

        Assert.Multiple(() =>
        {
            Assert.That(readable.Kind, Is.EqualTo(VerificationIssueKind.ManifestUnauthenticated));
            Assert.That(readable.Detail, Does.Contain("must be a 0600 file"));
            Assert.That(missing.Kind, Is.EqualTo(VerificationIssueKind.ManifestUnauthenticated));
            Assert.That(missing.Detail, Does.Contain(KeyPath).And.Contain("cannot be used"));
            Assert.That(stripped.Kind, Is.EqualTo(VerificationIssueKind.ManifestUnauthenticated));
            Assert.That(stripped.Detail, Does.Contain("holds no keyed hash"));
            Assert.That(store.ListSets().Single().Problem, Does.Contain("no keyed hash"));
        });
    }

    [Test]
    public async Task A_set_sealed_with_a_key_is_refused_by_a_store_given_none_and_a_key_inside_the_store_or_relative_is_refused()
    {
        var root = Path.Combine(_f.Dir, "keyed");
        var keyed = OpenAt(root, manifestKey: KeyPath);
        var set = keyed.CreateSet(["pid:1"]);
        File.WriteAllBytes(Images(set, "pages-1.img"), new byte[4096]);
        await keyed.SealAsync(set, new SealOptions { CriuVersion = "4.1.1", KernelRelease = "k" });

        var withoutKey = await OpenAt(root).VerifyAsync(set.Id);

        Assert.Multiple(() =>
        {
            Assert.That(withoutKey.Issues.Select(i => i.Kind), Is.EqualTo(new[] { VerificationIssueKind.ManifestUnauthenticated }),
                "a forgotten key fails closed: without it a rewritten manifest would pass");
            Assert.That(withoutKey.Issues[0].Detail, Does.Contain("sealed with a manifest key and none was given").And.Contain("--manifest-key"));
            Assert.That(() => OpenAt(root, manifestKey: Path.Combine(root, "manifest.key")),
                Throws.TypeOf<ImageStoreException>().With.Message.Contains("lies inside the store"));
            Assert.That(() => OpenAt(root, manifestKey: "keys/manifest.key"), Throws.ArgumentException.With.Message.Contains("must be absolute"));
            Assert.That(File.Exists(Path.Combine(root, "manifest.key")), Is.False, "refused before anything was made");
        });
    }

    private DirectoryImageStore OpenAt(string root, bool readOnly = false, string? manifestKey = null) => new(new DirectoryImageStoreOptions
    {
        RootDirectory = root,
        MachineIdPath = _f.MachineIdFile,
        TimeProvider = _f.Clock,
        ReadOnly = readOnly,
        ManifestKeyPath = manifestKey,
    });
}
