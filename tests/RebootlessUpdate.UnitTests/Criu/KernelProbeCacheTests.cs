using Microsoft.Extensions.Logging.Abstractions;
using RebootlessUpdate.Criu;

namespace RebootlessUpdate.UnitTests.Criu;

/// <summary>
/// The early run of criu's kernel probe (see <see cref="CriuClient.PrimeKernelProbeAsync"/>): which command it runs,
/// that it is skipped where criu's cache is present, and that no failure of it ever reaches the restore that waits for it.
/// </summary>
[TestFixture]
public class KernelProbeCacheTests
{
    private string _dir = null!;

    [SetUp]
    public void SetUp() => _dir = Directory.CreateTempSubdirectory("rebootless-kdat-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    [Test]
    public async Task The_probe_is_the_smallest_criu_command_that_probes_and_caches()
    {
        var criu = FakeCriu("exit 0");

        await KernelProbeCache.PrimeAsync(new CriuClientOptions { CriuPath = criu }, NullLogger.Instance, Path.Combine(_dir, "criu.kdat"));

        Assert.That(File.ReadAllLines(Path.Combine(_dir, "args")), Is.EqualTo(new[] { "check --feature uffd-noncoop" }));
    }

    [Test]
    public async Task With_criu_s_cache_present_nothing_is_run()
    {
        var criu = FakeCriu("exit 0");
        var cache = Path.Combine(_dir, "criu.kdat");
        await File.WriteAllTextAsync(cache, "kdat");

        await KernelProbeCache.PrimeAsync(new CriuClientOptions { CriuPath = criu }, NullLogger.Instance, cache);

        Assert.That(File.Exists(Path.Combine(_dir, "args")), Is.False);
    }

    [TestCase("exit 3", TestName = "A criu that fails the probe")]
    [TestCase("exec sleep 30", TestName = "A criu that hangs past the limit")]
    public async Task A_probe_that_goes_wrong_only_costs_its_time(string body)
    {
        var criu = FakeCriu(body);
        var started = DateTime.UtcNow;

        await KernelProbeCache.PrimeAsync(new CriuClientOptions { CriuPath = criu }, NullLogger.Instance, Path.Combine(_dir, "criu.kdat"),
            TimeSpan.FromSeconds(1));

        Assert.That(DateTime.UtcNow - started, Is.LessThan(TimeSpan.FromSeconds(20)));
        Assert.That(File.Exists(Path.Combine(_dir, "args")), Is.True);
    }

    [Test]
    public void A_missing_criu_only_means_no_probe()
    {
        var options = new CriuClientOptions { CriuPath = Path.Combine(_dir, "no-such-criu") };

        Assert.DoesNotThrowAsync(() => KernelProbeCache.PrimeAsync(options, NullLogger.Instance, Path.Combine(_dir, "criu.kdat")));
    }

    [Test]
    public async Task A_client_starts_the_probe_once()
    {
        var client = new CriuClient(new CriuClientOptions { CriuPath = FakeCriu("exit 0") });

        var first = client.PrimeKernelProbeAsync();
        var second = client.PrimeKernelProbeAsync();
        await second;

        Assert.That(second, Is.SameAs(first));
        // Where criu's own cache exists (a host whose /run is a tmpfs), the probe is rightly skipped.
        Assert.That(File.Exists(Path.Combine(_dir, "args")) ? File.ReadAllLines(Path.Combine(_dir, "args")).Length : 0,
            Is.EqualTo(File.Exists(KernelProbeCache.CacheFile) ? 0 : 1));
    }

    /// <summary>A criu stand-in that records its arguments, then runs <paramref name="body"/>.</summary>
    private string FakeCriu(string body)
    {
        var tool = Path.Combine(_dir, "criu");
        File.WriteAllText(tool, $"#!/bin/sh\necho \"$@\" >>'{_dir}/args'\n{body}\n");
        File.SetUnixFileMode(tool, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        return tool;
    }
}
