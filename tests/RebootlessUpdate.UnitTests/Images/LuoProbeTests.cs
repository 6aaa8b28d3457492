using RebootlessUpdate.Images.Luo;

namespace RebootlessUpdate.UnitTests.Images;

/// <summary>What the LUO probe says for each kernel it may meet (its device and build options given as files).</summary>
public class LuoProbeTests
{
    private string _dir = null!;

    [SetUp]
    public void SetUp() => _dir = Directory.CreateTempSubdirectory("luo-probe-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    private string Config(string text)
    {
        var path = Path.Combine(_dir, "config");
        File.WriteAllText(path, "# kernel config\n" + text + "\n");
        return path;
    }

    private string Missing => Path.Combine(_dir, "liveupdate");

    [Test]
    public void A_kernel_built_without_LUO_says_so_and_what_it_needs()
    {
        var config = Config("CONFIG_KEXEC=y\n# CONFIG_LIVEUPDATE is not set");
        var a = LuoProbe.Check(Missing, config);

        Assert.That(a.Usable, Is.False);
        Assert.That(a.Detail, Does.StartWith($"no {Missing}: kernel ").And.Contain($"was built without the Live Update Orchestrator (CONFIG_LIVEUPDATE is not set in {config})")
            .And.Contain("Linux 6.19 or later"));
    }

    [TestCase("CONFIG_LIVEUPDATE=y\nCONFIG_KEXEC_HANDOVER=y", "(boot it with liveupdate=on kho=on)")]
    [TestCase("CONFIG_LIVEUPDATE=y\nCONFIG_KEXEC_HANDOVER_ENABLE_DEFAULT=y", "(boot it with liveupdate=on)")]
    public void A_kernel_with_LUO_off_says_how_to_boot_it(string options, string how)
    {
        var a = LuoProbe.Check(Missing, Config(options));

        Assert.That(a.Usable, Is.False);
        Assert.That(a.Detail, Does.Contain("has the Live Update Orchestrator but it is off " + how));
    }

    [Test]
    public void A_gzipped_configuration_like_proc_config_gz_is_read_too()
    {
        var path = Path.Combine(_dir, "config.gz");
        using (var gz = new System.IO.Compression.GZipStream(File.Create(path), System.IO.Compression.CompressionLevel.Fastest))
        {
            gz.Write("CONFIG_LIVEUPDATE=y\nCONFIG_KEXEC_HANDOVER=y\n"u8);
        }

        Assert.That(LuoProbe.Check(Missing, path).Detail, Does.Contain("has the Live Update Orchestrator but it is off (boot it with liveupdate=on kho=on)"));
    }

    [Test]
    public void A_kernel_whose_options_cannot_be_read_gets_both_reasons()
    {
        var a = LuoProbe.Check(Missing, Path.Combine(_dir, "no-config"));
        Assert.That(a.Detail, Does.Contain("has no Live Update Orchestrator, or it is off"));
    }

    [TestCase(3, true, "opens: kernel")]
    [TestCase(-16, false, "another process holds it open")]
    public void A_device_that_exists_is_opened_and_closed_again(int openAnswer, bool usable, string says)
    {
        var device = Path.Combine(_dir, "liveupdate");
        File.WriteAllText(device, "");
        var sys = new OpenOnly(openAnswer);

        var a = LuoProbe.Check(device, Config(""), sys);

        Assert.That(a.Usable, Is.EqualTo(usable));
        Assert.That(a.Detail, Does.Contain(says));
        Assert.That(sys.Closed, Is.EqualTo(usable ? new[] { 3 } : Array.Empty<int>()), "a probe leaves the device free for the store");
    }

    private sealed class OpenOnly(int answer) : ILuoSyscalls
    {
        public List<int> Closed { get; } = [];

        public int Open(string path, int flags) => answer;

        public int Ioctl(int fd, uint request, byte[] argument) => throw new AssertionException("a probe asks nothing of the device");

        public void Close(int fd) => Closed.Add(fd);
    }
}
