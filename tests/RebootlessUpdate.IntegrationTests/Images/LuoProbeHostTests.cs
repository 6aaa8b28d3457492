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
}
