using RebootlessUpdate.Images;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Pipeline;

/// <summary>Same-boot recovery over a set an attacker changed after it was sealed.</summary>
public partial class CrashRecoveryTests
{
    /// <summary>
    /// A rehearsal of a 16 MiB workload in <c>_dir/app</c> killed once CRIU ended the tree after sealing, so the sealed
    /// set is all that is left of it: the store, the workload's folder and the journal.
    /// </summary>
    private (string Store, string AppDir, JournalRecord Journal) CrashedAfterSealing(params string[] extra)
    {
        var store = Directory.CreateDirectory(Path.Combine(_dir, "store")).FullName;
        var appDir = Path.Combine(_dir, "app");
        _workload = Workload.StartProgram(appDir, 16);
        var crashed = Tool("sealed/dumped", ["rehearse", "--pid", Pid(_workload.RootPid), "--store", store, "--criu", _testbed.Criu, .. extra]);
        Assert.That(crashed.ExitCode, Is.EqualTo(137), crashed.ToString());
        return (store, appDir, UpdateJournal.List(store).Single());
    }

    [Test]
    public void Same_boot_resume_of_a_sealed_set_whose_manifest_was_deleted_and_a_page_flipped_restores_nothing()
    {
        var (store, appDir, journal) = CrashedAfterSealing();
        Assert.That(journal.State, Is.EqualTo(JournalState.Sealed));
        var victim = FlipAByteOfTheLargestPageImage(store, journal, journal.Targets.Single());
        // Without its manifest the set used to pass as "never sealed": restored unverified.
        File.Delete(Path.Combine(store, "sets", journal.SetId, "manifest.json"));

        var resumed = Tool(null, "resume", "--store", store, "--criu", _testbed.Criu);
        TestContext.Out.WriteLine($"--- resume\n{resumed}");

        Assert.Multiple(() =>
        {
            Assert.That(resumed.ExitCode, Is.Not.Zero, resumed.ToString());
            Assert.That(resumed.Error, Does.Contain("ManifestMissing").And.Contain("was sealed"));
            Assert.That(Instances(appDir), Is.Zero, "nothing was restored from the tampered images");
            Assert.That(File.Exists(victim), Is.True, "the images are kept for inspection");
        });
    }

    [Test]
    public void Same_boot_resume_of_a_set_folder_swapped_for_a_symlink_to_a_tampered_copy_restores_nothing()
    {
        var (store, appDir, journal) = CrashedAfterSealing();
        // The attacker's copy outside the store, without manifest or seal mark, with a flipped page, linked in place of the set.
        var setDir = Path.Combine(store, "sets", journal.SetId);
        var outside = Path.Combine(_dir, "outside-set");
        Directory.Move(setDir, outside);
        File.Delete(Path.Combine(outside, "manifest.json"));
        File.Delete(Path.Combine(outside, "sealed"));
        Directory.CreateSymbolicLink(setDir, outside);
        FlipAByteOfTheLargestPageImage(store, journal, journal.Targets.Single());

        var resumed = Tool(null, "resume", "--store", store, "--criu", _testbed.Criu);
        TestContext.Out.WriteLine($"--- resume\n{resumed}");

        Assert.Multiple(() =>
        {
            Assert.That(resumed.ExitCode, Is.Not.Zero, resumed.ToString());
            Assert.That(resumed.Error, Does.Contain("symbolic link"));
            Assert.That(Instances(appDir), Is.Zero, "nothing was restored through the link");
        });
    }

    // Same bytes, so every hash still matches, but the file is no longer only ours: its owner, or anyone, may rewrite it later.
    [TestCase("chown", "nobody", "belongs to uid 65534")]
    [TestCase("chmod", "o+w", "is writable by others")]
    [TestCase("chmod", "g+w", "is writable by its group")]
    public void Same_boot_resume_of_a_set_whose_page_image_another_user_may_rewrite_restores_nothing(string command, string argument, string why)
    {
        var (store, appDir, journal) = CrashedAfterSealing();
        var folder = Path.Combine(store, "sets", journal.SetId, "images", journal.Targets.Single().Folder);
        var pages = new DirectoryInfo(folder).GetFiles("pages-*.img").OrderByDescending(f => f.Length).First().FullName;
        var changed = ProcessRunner.Run(command, [argument, pages], TimeSpan.FromSeconds(10));
        Assert.That(changed.ExitCode, Is.Zero, changed.ToString());

        var resumed = Tool(null, "resume", "--store", store, "--criu", _testbed.Criu);
        var verify = Tool(null, "images", "verify", journal.SetId, "--store", store);
        TestContext.Out.WriteLine($"--- resume\n{resumed}\n--- images verify\n{verify}");

        Assert.Multiple(() =>
        {
            Assert.That(resumed.ExitCode, Is.EqualTo(12), resumed.ToString());
            Assert.That(resumed.Output + resumed.Error, Does.Contain(Path.GetFileName(pages)).And.Contain(why));
            Assert.That(Instances(appDir), Is.Zero, "nothing was restored from a file someone else may have rewritten");
            Assert.That(verify.ExitCode, Is.EqualTo(1), verify.ToString());
            Assert.That(verify.Output, Does.Contain(Path.GetFileName(pages)));
        });
    }

    [Test]
    public void Same_boot_resume_of_a_set_whose_page_image_is_swapped_for_a_symlink_to_an_identical_copy_restores_nothing()
    {
        var (store, appDir, journal) = CrashedAfterSealing();
        var folder = Path.Combine(store, "sets", journal.SetId, "images", journal.Targets.Single().Folder);
        var pages = new DirectoryInfo(folder).GetFiles("pages-*.img").OrderByDescending(f => f.Length).First().FullName;
        // The same bytes, so every hash in the manifest still matches, but in a file anyone could own and rewrite later.
        var outside = Path.Combine(_dir, "outside-pages.img");
        File.Copy(pages, outside);
        File.Delete(pages);
        File.CreateSymbolicLink(pages, outside);

        var resumed = Tool(null, "resume", "--store", store, "--criu", _testbed.Criu);
        var verify = Tool(null, "images", "verify", journal.SetId, "--store", store);
        TestContext.Out.WriteLine($"--- resume\n{resumed}\n--- images verify\n{verify}");

        Assert.Multiple(() =>
        {
            Assert.That(resumed.ExitCode, Is.Not.Zero, resumed.ToString());
            Assert.That(resumed.Output + resumed.Error, Does.Contain("symbolic link").And.Contain(Path.GetFileName(pages)));
            Assert.That(Instances(appDir), Is.Zero, "nothing was restored from bytes outside the store");
            Assert.That(verify.ExitCode, Is.EqualTo(1), verify.ToString());
            Assert.That(verify.Output, Does.Contain(Path.GetFileName(pages)));
            Assert.That(File.ReadAllBytes(outside), Has.Length.GreaterThan(0), "the link's target is left alone");
        });
    }

    [Test]
    public void With_a_manifest_key_same_boot_resume_of_a_set_whose_manifest_was_rewritten_for_a_flipped_page_restores_nothing()
    {
        var key = Path.Combine(_dir, "keys", "manifest.key");
        var (store, appDir, journal) = CrashedAfterSealing("--manifest-key", key);
        var victim = FlipAByteOfTheLargestPageImage(store, journal, journal.Targets.Single());
        // An attacker with write access to the set vouches for the changed page: the manifest's hashes are right again.
        var images = Path.Combine(store, "sets", journal.SetId, "images");
        var manifestPath = Path.Combine(store, "sets", journal.SetId, "manifest.json");
        var manifest = ManifestFormat.Read(File.ReadAllBytes(manifestPath), manifestPath);
        var relative = Path.GetRelativePath(images, victim);
        var hash = FileHasher.Hash(victim, chunks: false, CancellationToken.None).Hash;
        File.WriteAllBytes(manifestPath, ManifestFormat.Write(manifest with
        {
            Files = [.. manifest.Files.Select(f => f.Path == relative ? new ManifestEntry { Path = f.Path, Size = f.Size, Xxh128 = hash } : f)],
        }));

        var unkeyed = Tool(null, "images", "verify", journal.SetId, "--store", store);
        var relativeKey = Tool(null, "images", "verify", journal.SetId, "--store", store, "--manifest-key", "keys/manifest.key");
        var keyed = Tool(null, "images", "verify", journal.SetId, "--store", store, "--manifest-key", key);
        var forgotten = Tool(null, "resume", "--store", store, "--criu", _testbed.Criu);
        var resumed = Tool(null, "resume", "--store", store, "--criu", _testbed.Criu, "--manifest-key", key);
        TestContext.Out.WriteLine($"--- verify without the key\n{unkeyed}\n--- relative key\n{relativeKey}\n--- with it\n{keyed}\n"
            + $"--- resume without the key\n{forgotten}\n--- resume\n{resumed}");

        Assert.Multiple(() =>
        {
            Assert.That(unkeyed.ExitCode, Is.EqualTo(1), "a set sealed with a key is never judged without it\n" + unkeyed);
            Assert.That(unkeyed.Output, Does.Contain("sealed with a manifest key and none was given"));
            Assert.That(relativeKey.ExitCode, Is.EqualTo(2), relativeKey.ToString());
            Assert.That(relativeKey.Error, Does.Contain("give an absolute path"));
            Assert.That(forgotten.ExitCode, Is.Not.Zero, forgotten.ToString());
            Assert.That(forgotten.Error, Does.Contain("--manifest-key"));
            Assert.That(keyed.ExitCode, Is.EqualTo(1), keyed.ToString());
            Assert.That(keyed.Output, Does.Contain("ManifestUnauthenticated"));
            Assert.That(resumed.ExitCode, Is.Not.Zero, resumed.ToString());
            Assert.That(resumed.Error, Does.Contain("ManifestUnauthenticated").And.Not.Contain("   at "));
            Assert.That(Instances(appDir), Is.Zero, "nothing was restored from the forged set");
            Assert.That(File.Exists(victim), Is.True, "the images are kept for inspection");
        });
    }
}
