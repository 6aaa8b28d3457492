using System.Net.Sockets;
using System.Text;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.UnitTests.Stages;

/// <summary>The resume unit's readiness, sent to a real datagram socket as systemd's NOTIFY_SOCKET would receive it.</summary>
public class SystemdNotifyGateTests
{
    [Test]
    public void Ready_goes_out_once_to_the_socket_named_and_then_the_gate_holds_nothing()
    {
        var dir = Directory.CreateTempSubdirectory("rebootless-notify-").FullName;
        try
        {
            var path = Path.Combine(dir, "notify");
            using var systemd = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
            systemd.Bind(new UnixDomainSocketEndPoint(path));
            var gate = new SystemdNotifyGate(() => path);

            Assert.That(gate.Holding, Is.True);
            gate.Release();
            gate.Release();

            Assert.That(gate.Holding, Is.False);
            var buffer = new byte[64];
            var n = systemd.Receive(buffer);
            Assert.That(Encoding.ASCII.GetString(buffer, 0, n), Is.EqualTo("READY=1\n"));
            Assert.That(systemd.Available, Is.Zero, "one message, however often it is released");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Test]
    public void An_abstract_socket_name_is_reached_by_its_leading_nul()
    {
        var name = "rebootless-test-" + Guid.NewGuid().ToString("N");
        using var systemd = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
        systemd.Bind(new UnixDomainSocketEndPoint("\0" + name));

        new SystemdNotifyGate(() => "@" + name).Release();

        var buffer = new byte[64];
        Assert.That(Encoding.ASCII.GetString(buffer, 0, systemd.Receive(buffer)), Is.EqualTo("READY=1\n"));
    }

    [Test]
    public void Without_a_socket_nothing_waits_and_a_socket_gone_is_reported_not_thrown()
    {
        Assert.That(SystemdNotifyGate.None.Holding, Is.False);
        Assert.That(SystemdNotifyGate.None.TryRelease(), Is.Null);

        var gone = new SystemdNotifyGate(() => "/nonexistent/notify");
        Assert.That(gone.TryRelease(), Does.Contain("could not tell systemd the resume is ready"));
    }
}
