using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.VmTests.PramFs;

/// <summary>
/// The native PramFS over the VM's legacy-pmem region keeps its files across a
/// kexec from the old kernel into the new one, and fsck finds it clean.
/// </summary>
[NonParallelizable]
public class PramFsKexecVmTests
{
    [Test]
    public void Files_written_on_the_old_kernel_are_intact_on_the_new_one_and_fsck_is_clean()
    {
        var testbed = Testbed.Require();
        Testbed.RequireRoot();
        var binary = BuildStaticPramfs();
        var script = File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "jobs", "pramfs-kexec.sh"));

        var (job, result) = VmRun.Run(testbed,
            $"PRAMFS=/repo/{Path.GetRelativePath(Testbed.RepositoryRoot, binary)}\nexport PRAMFS\necho {testbed.NewKernel} >/job/new-kernel\n{script}",
            memmap: "64M!512M");

        string Read(string name) => File.Exists(Path.Combine(job, name)) ? File.ReadAllText(Path.Combine(job, name)).Trim() : $"({name} missing)";
        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        Assert.Multiple(() =>
        {
            Assert.That(Read("kernel1"), Is.EqualTo(testbed.OldKernel));
            Assert.That(Read("kernel2"), Is.EqualTo(testbed.NewKernel));
            Assert.That(Read("fsck-rc"), Is.EqualTo("0"), Read("fsck-after"));
            Assert.That(Read("sums-before").Split('\n'), Has.Length.EqualTo(2));
            Assert.That(Read("sums-after"), Is.EqualTo(Read("sums-before")), "every file identical after kexec");
            Assert.That(Read("link-after"), Is.EqualTo("images/pages-1.img"));
        });
    }

    /// <summary>
    /// Builds pramfs without sanitizers and with libfuse3 linked in (the guest's
    /// Debian 13 has another libfuse3 soname) under the repository's ignored
    /// artifacts folder, which the guest sees at /repo.
    /// </summary>
    private static string BuildStaticPramfs()
    {
        var build = Path.Combine(Testbed.RepositoryRoot, "artifacts", "vm", "pramfs-static");
        var source = Path.Combine(Testbed.RepositoryRoot, "native-pramfs");
        var configure = ProcessRunner.Run("cmake", ["-S", source, "-B", build, "-DPRAMFS_SANITIZE=OFF", "-DPRAMFS_STATIC_FUSE=ON", "-DCMAKE_BUILD_TYPE=Release"], TimeSpan.FromMinutes(3));
        Assert.That(configure.ExitCode, Is.Zero, configure.ToString());
        var make = ProcessRunner.Run("cmake", ["--build", build, "-j2"], TimeSpan.FromMinutes(5));
        Assert.That(make.ExitCode, Is.Zero, make.ToString());
        return Path.Combine(build, "pramfs");
    }
}
