using System.Net.Sockets;
using System.Text;

namespace RebootlessUpdate.Targets;

/// <summary>
/// The boot waiting for this resume. Run by the shipped resume unit (<c>Type=notify</c>), the resume holds back every
/// unit ordered after it, above all the services it checkpointed, until it says it is ready: then their queued start
/// jobs run (an adoption prepared for a restored tree, or the unit's own start for one that was not restored).
/// </summary>
internal interface IBootGate
{
    /// <summary>True while a service manager waits for this process to say it is ready.</summary>
    bool Holding { get; }

    /// <summary>Lets the boot go on; repeated calls do nothing.</summary>
    void Release();
}

/// <summary>Letting the boot go on without failing the run.</summary>
internal static class BootGateExtensions
{
    /// <summary>
    /// <see cref="IBootGate.Release"/>; returns what went wrong, or null. When the message cannot be sent, systemd still
    /// lets the boot go on when the resume's process ends.
    /// </summary>
    public static string? TryRelease(this IBootGate gate)
    {
        try
        {
            gate.Release();
            return null;
        }
        catch (Exception e) when (e is SocketException or IOException or ArgumentException)
        {
            return $"could not tell systemd the resume is ready ({e.Message}): the boot waits until the resume unit ends";
        }
    }
}

/// <summary>
/// <see cref="IBootGate"/> through systemd's notification socket (<c>NOTIFY_SOCKET</c>, set for a <c>Type=notify</c>
/// unit): <c>READY=1</c> in one datagram. Without the variable nothing waits and nothing is sent.
/// </summary>
internal sealed class SystemdNotifyGate(Func<string?> socketPath) : IBootGate
{
    private int _released;

    /// <summary>This process's gate, from its environment.</summary>
    public static SystemdNotifyGate Process { get; } = new(() => Environment.GetEnvironmentVariable("NOTIFY_SOCKET"));

    /// <summary>No boot waits.</summary>
    public static SystemdNotifyGate None { get; } = new(() => null);

    public bool Holding => Volatile.Read(ref _released) == 0 && !string.IsNullOrEmpty(socketPath());

    public void Release()
    {
        var path = socketPath();
        if (string.IsNullOrEmpty(path) || Interlocked.Exchange(ref _released, 1) == 1)
        {
            return;
        }

        // "@name" is an abstract socket: its address starts with a NUL byte.
        using var socket = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
        socket.Connect(new UnixDomainSocketEndPoint(path[0] == '@' ? "\0" + path[1..] : path));
        socket.Send(Encoding.ASCII.GetBytes("READY=1\n"));
    }
}
