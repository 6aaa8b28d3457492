using System.Text.Json;
using RebootlessUpdate.Images.Luo;
using RebootlessUpdate.IntegrationTests.Cli;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Images;

/// <summary>The LUO probe on this host's own kernel, and what <c>rebootless check</c> says of it.</summary>
public class LuoProbeHostTests
{
    private static readonly string Release = File.ReadAllText("/proc/sys/kernel/osrelease").Trim();

    [Test]
    public void The_probe_says_whether_this_kernel_has_LUO_and_why_not()
    {
        var a = LuoProbe.Check();
        TestContext.Out.WriteLine(a.Detail);

        if (!File.Exists("/dev/liveupdate"))
        {
            // The testbed's hosts run kernels without LUO: the probe must say so, naming the kernel, and what it needs.
            Assert.That(a.Usable, Is.False);
            Assert.That(a.Detail, Does.StartWith($"no /dev/liveupdate: kernel {Release} ").And.Contain("CONFIG_LIVEUPDATE"));
        }
        else
        {
            Assert.That(a.Detail, a.Usable ? Does.StartWith("/dev/liveupdate opens") : Does.StartWith("cannot open /dev/liveupdate: "));
        }
    }

    [Test]
    public void Check_reports_the_probe_without_failing_a_host_that_needs_no_LUO()
    {
        var store = Directory.CreateTempSubdirectory("luo-check-").FullName;
        try
        {
            var r = Tool.Run("check", "--json", "--criu", Testbed.Require().Criu, "--store", store);
            TestContext.Out.WriteLine(r.ToString());
            using var json = JsonDocument.Parse(r.Output);
            var line = json.RootElement.GetProperty("checks").EnumerateArray().Single(c => c.GetProperty("name").GetString() == "luo");

            Assert.That(line.GetProperty("ok").GetBoolean(), Is.True, "informational: this store does not need LUO");
            Assert.That(line.GetProperty("detail").GetString(), Does.EndWith(LuoProbe.Check().Detail));
            Assert.That(r.Output + r.Error, Does.Not.Contain("   at "));
        }
        finally
        {
            Directory.Delete(store, recursive: true);
        }
    }

    [Test]
    public void Check_with_the_LUO_store_fails_on_a_kernel_without_LUO_and_mounts_nothing()
    {
        Assume.That(File.Exists("/dev/liveupdate"), Is.False, "this host's kernel has LUO: the refusal is for kernels without it");
        var dir = Directory.CreateTempSubdirectory("luo-check-").FullName;
        try
        {
            var mount = Path.Combine(dir, "luo");
            var r = Tool.Run("check", "--json", "--criu", Testbed.Require().Criu, "--store", "luo", "--store-mount", mount);
            TestContext.Out.WriteLine(r.ToString());
            using var json = JsonDocument.Parse(r.Output);
            var line = json.RootElement.GetProperty("checks").EnumerateArray().Single(c => c.GetProperty("name").GetString() == "luo");

            Assert.That(r.ExitCode, Is.Not.Zero, "with --store luo, LUO is a requirement");
            Assert.That(line.GetProperty("ok").GetBoolean(), Is.False);
            Assert.That(line.GetProperty("detail").GetString(), Does.StartWith("the LUO store cannot be used here: no /dev/liveupdate: kernel " + Release));
            Assert.That(Path.Exists(mount), Is.False, "check looks only: no tmpfs was mounted");
            Assert.That(r.Output + r.Error, Does.Not.Contain("   at "));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Test]
    public void An_update_with_the_LUO_store_on_a_kernel_without_LUO_is_refused_before_anything_changes()
    {
        Assume.That(File.Exists("/dev/liveupdate"), Is.False, "this host's kernel has LUO: the refusal is for kernels without it");
        var testbed = Testbed.Require();
        Testbed.RequireRoot();
        var dir = Directory.CreateTempSubdirectory("luo-update-").FullName;
        using var sleeper = System.Diagnostics.Process.Start("sleep", "120")!;
        try
        {
            var mount = Path.Combine(dir, "luo");
            var kernel = Path.Combine(testbed.RootFs, "boot", "vmlinuz-" + testbed.OldKernel);
            foreach (var command in new[] { "update", "plan" })
            {
                string[] args = command == "update"
                    ? ["update", "--kernel", kernel, "--pid", sleeper.Id.ToString(), "--store", "luo", "--store-mount", mount, "--criu", testbed.Criu]
                    : ["plan", "--pid", sleeper.Id.ToString(), "--store", "luo", "--store-mount", mount];
                var r = Tool.Run(args);
                TestContext.Out.WriteLine(r.ToString());
                Assert.That(r.Output + r.Error, Does.Not.Contain("   at "));
                if (command == "update")
                {
                    // This host cannot kexec either: one line names both, the kexec first (its exit code).
                    Assert.That(r.ExitCode, Is.EqualTo(9), r.ToString());
                    Assert.That(r.Error.Trim().Split('\n'), Has.Length.EqualTo(1));
                    Assert.That(r.Error, Does.Contain("cannot kexec").And.Contain("the LUO store cannot be used here: no /dev/liveupdate"));
                }
                else
                {
                    Assert.That(r.ExitCode, Is.EqualTo(8), r.ToString());
                    Assert.That(r.Error.Trim().Split('\n'), Has.Length.EqualTo(1));
                    Assert.That(r.Error, Does.Contain("the LUO store cannot be used here: no /dev/liveupdate").And.Contain("--pmem"));
                }

                Assert.That(Path.Exists(mount), Is.False, $"{command} mounted nothing");
                Assert.That(Workload.IsRunning(sleeper.Id), Is.True, "the workload was never frozen");
            }
        }
        finally
        {
            sleeper.Kill();
            Directory.Delete(dir, recursive: true);
        }
    }
}
