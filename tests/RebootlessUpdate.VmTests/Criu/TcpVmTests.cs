using System.Text.Json;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.VmTests.Criu;

/// <summary>
/// Established TCP through the client, in the VM (nftables network lock; the
/// host has no iptables or nft): no message lost, no reset, and the
/// network-lock / network-unlock notifications arrive.
/// </summary>
[NonParallelizable]
public class TcpVmTests
{
    [Test]
    public void An_established_loopback_connection_survives_dump_and_restore_without_loss()
    {
        var testbed = Testbed.Require();
        Testbed.RequireRoot();

        var (job, result) = VmRun.Run(testbed, "dotnet \"$AGENT\" criu-tcp /repo/tests/workloads/tcp-pair.py");

        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        using var report = JsonDocument.Parse(File.ReadAllText(Path.Combine(job, "tcp.json")));
        var r = report.RootElement;
        TestContext.Out.WriteLine(r.ToString());
        var dump = r.GetProperty("dumpNotifications").EnumerateArray().Select(e => e.GetString()).ToList();
        var restore = r.GetProperty("restoreNotifications").EnumerateArray().Select(e => e.GetString()).ToList();
        Assert.Multiple(() =>
        {
            Assert.That(r.GetProperty("errors").GetString(), Is.Empty, "the client saw no reset, no wrong echo, no EOF");
            Assert.That(r.GetProperty("counterAfter").GetInt64(), Is.GreaterThan(r.GetProperty("counterAtDump").GetInt64() + 10));
            Assert.That(dump, Does.Contain("network-lock"));
            Assert.That(restore, Does.Contain("network-unlock"));
        });
    }
}
