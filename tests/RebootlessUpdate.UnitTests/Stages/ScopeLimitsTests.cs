using RebootlessUpdate.Stages;

namespace RebootlessUpdate.UnitTests.Stages;

/// <summary>A scope's limits and device rules, from <c>systemctl show</c> back to <c>systemd-run -p</c>.</summary>
public class ScopeLimitsTests
{
    // What systemd 257 showed for runc 1.1's scope of a container with a 256 MiB memory limit, 64 pids, half a CPU,
    // shares 512 and runc's default device rules (the testbed VM).
    private const string RuncScope = """
        Delegate=yes
        CPUWeight=20
        StartupCPUWeight=[not set]
        CPUQuotaPerSecUSec=500ms
        CPUQuotaPeriodUSec=100ms
        AllowedCPUs=
        AllowedMemoryNodes=
        IOWeight=[not set]
        StartupIOWeight=[not set]
        MemoryMin=0
        MemoryLow=0
        MemoryHigh=infinity
        MemoryMax=268435456
        MemorySwapMax=infinity
        DevicePolicy=strict
        DeviceAllow=block-* m
        DeviceAllow=char-* m
        DeviceAllow=/dev/char/1:3 rwm
        DeviceAllow=char-pts rwm
        TasksMax=64
        """;

    [Test]
    public void A_runc_scopes_limits_and_device_rules_become_the_same_assignments()
    {
        Assert.That(ScopeLimits.From(RuncScope), Is.EqualTo(new[]
        {
            "MemoryMax=268435456", "TasksMax=64", "CPUWeight=20", "DevicePolicy=strict", "CPUQuota=50%", "CPUQuotaPeriodSec=100000us",
            "DeviceAllow=block-* m", "DeviceAllow=char-* m", "DeviceAllow=/dev/char/1:3 rwm", "DeviceAllow=char-pts rwm",
        }));
    }

    [Test]
    public void A_scope_without_limits_gives_only_its_task_limit()
    {
        const string Plain = "CPUWeight=[not set]\nCPUQuotaPerSecUSec=infinity\nCPUQuotaPeriodUSec=infinity\nMemoryMax=infinity\nDevicePolicy=auto\nDeviceAllow=\nTasksMax=5888\n";

        Assert.That(ScopeLimits.From(Plain), Is.EqualTo(new[] { "TasksMax=5888" }));
    }

    [TestCase("500ms", 500_000L)]
    [TestCase("1s 500ms", 1_500_000L)]
    [TestCase("2min 30s", 150_000_000L)]
    [TestCase("250us", 250L)]
    [TestCase("1.5s", 1_500_000L)]
    [TestCase("infinity", null)]
    [TestCase("", null)]
    [TestCase("5 parsecs", null)]
    public void Time_spans_read_as_systemctl_prints_them(string span, long? microseconds) =>
        Assert.That(ScopeLimits.Microseconds(span), Is.EqualTo(microseconds));

    [Test]
    public void A_quota_of_one_and_a_half_cpus_and_one_of_an_eighth_keep_their_share()
    {
        Assert.Multiple(() =>
        {
            Assert.That(ScopeLimits.From("CPUQuotaPerSecUSec=1s 500ms\n"), Is.EqualTo(new[] { "CPUQuota=150%" }));
            Assert.That(ScopeLimits.From("CPUQuotaPerSecUSec=125ms\n"), Is.EqualTo(new[] { "CPUQuota=12.5%" }));
        });
    }

    [Test]
    public void Values_systemd_run_would_refuse_are_given_in_its_terms_or_left_out()
    {
        Assert.Multiple(() =>
        {
            Assert.That(ScopeLimits.From("CPUWeight=0\nStartupCPUWeight=0\n"), Is.EqualTo(new[] { "CPUWeight=idle", "StartupCPUWeight=idle" }), "runc's cpu.idle");
            Assert.That(ScopeLimits.From("CPUQuotaPerSecUSec=0\n"), Is.Empty, "no quota of 0 %");
            Assert.That(ScopeLimits.From("CPUQuotaPerSecUSec=20us\n"), Is.EqualTo(new[] { "CPUQuota=0.01%" }), "the least systemd takes");
        });
    }

    [Test]
    public void The_device_rules_are_told_from_the_other_limits()
    {
        var all = ScopeLimits.From(RuncScope);

        Assert.That(all.Where(ScopeLimits.IsDeviceRule), Is.EqualTo(new[]
        {
            "DevicePolicy=strict", "DeviceAllow=block-* m", "DeviceAllow=char-* m", "DeviceAllow=/dev/char/1:3 rwm", "DeviceAllow=char-pts rwm",
        }));
    }
}
