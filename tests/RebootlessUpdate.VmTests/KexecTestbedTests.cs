using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.VmTests;

/// <summary>
/// Plumbing of the VM tier: the testbed boots the old kernel with a legacy-pmem
/// region, kexecs into the new one, and the region's content survives.
/// </summary>
[NonParallelizable]
public class KexecTestbedTests
{
    [Test]
    public void Old_kernel_kexecs_into_new_kernel_and_the_pmem_marker_survives()
    {
        var testbed = Testbed.Require();
        Testbed.RequireRoot();
        var job = Directory.CreateTempSubdirectory("rebootless-vmjob-").FullName;
        File.Copy(Path.Combine(AppContext.BaseDirectory, "jobs", "kexec-pmem-marker.sh"), Path.Combine(job, "run"));
        File.WriteAllText(Path.Combine(job, "new-kernel"), testbed.NewKernel);

        (job, var result) = VmRun.RunRetryingEmulationCrash(testbed, ["--kernel", "old", "--memmap", "64M!512M", "--timeout", "300", "--job", job],
            TimeSpan.FromMinutes(6));

        string Read(string name) => File.Exists(Path.Combine(job, name)) ? File.ReadAllText(Path.Combine(job, name)).Trim() : $"({name} missing)";
        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        Assert.Multiple(() =>
        {
            Assert.That(Read("kernel1"), Is.EqualTo(testbed.OldKernel));
            Assert.That(Read("kernel2"), Is.EqualTo(testbed.NewKernel));
            Assert.That(Read("marker-written"), Does.StartWith("marker-"));
            Assert.That(Read("marker-read"), Is.EqualTo(Read("marker-written")), "the pmem region must survive kexec");
        });
    }

    [Test]
    public void Runner_returns_the_guest_job_exit_status()
    {
        var testbed = Testbed.Require();
        Testbed.RequireRoot();

        var (_, result) = VmRun.RunRetryingEmulationCrash(testbed, ["--kernel", "new", "--timeout", "120", "--", "sh", "-c", "uname -r; exit 7"],
            TimeSpan.FromMinutes(3));

        Assert.That(result.ExitCode, Is.EqualTo(7), result.ToString());
        Assert.That(result.Output, Does.Contain(testbed.NewKernel));
    }

    [Test]
    public void Runner_reports_a_guest_kernel_crash_distinctly()
    {
        var testbed = Testbed.Require();
        Testbed.RequireRoot();

        var result = ProcessRunner.Run(testbed.VmRunner, ["--kernel", "old", "--timeout", "120", "--", "sh", "-c", "echo c > /proc/sysrq-trigger"],
            TimeSpan.FromMinutes(3));

        Assert.That(result.ExitCode, Is.EqualTo(126), result.ToString());
        Assert.That(result.Error, Does.Contain("the guest kernel crashed (Kernel panic"));
        Assert.That(VmRun.IsEmulationCrash(result), Is.False, "a deliberate panic is not the emulator's int3 and is never retried");
    }
}
