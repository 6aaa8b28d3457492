using System.Globalization;
using System.Net;
using Mono.Unix.Native;

namespace RebootlessUpdate.Criu;

/// <summary>
/// Who is at the other end of a loopback TCP connection: the owner of the peer's socket, read from the kernel's
/// <c>/proc/net/tcp</c> (the row whose local address is the peer's and whose remote address is ours). Any local
/// user can connect to 127.0.0.1; only a peer of our own user (the daemon we start) may be served a tree's pages.
/// </summary>
internal static class LoopbackPeer
{
    /// <summary>The uid that owns the peer's socket of <paramref name="ours"/>↔<paramref name="peer"/>, or null when no such row exists.</summary>
    internal static uint? OwnerOf(IPEndPoint ours, IPEndPoint peer, string table = "/proc/net/tcp")
    {
        string[] lines;
        try
        {
            lines = File.ReadAllLines(table);
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }

        var local = Format(peer);
        var remote = Format(ours);
        foreach (var line in lines.Skip(1))
        {
            var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (f.Length > 7 && string.Equals(f[1], local, StringComparison.OrdinalIgnoreCase) && string.Equals(f[2], remote, StringComparison.OrdinalIgnoreCase)
                && uint.TryParse(f[7], NumberStyles.None, CultureInfo.InvariantCulture, out var uid))
            {
                return uid;
            }
        }

        return null;
    }

    /// <summary>
    /// True when the peer's socket belongs to this process's effective user. A dual-stack peer (an IPv6 socket that
    /// reached 127.0.0.1) is listed in <c>/proc/net/tcp6</c> with IPv4-mapped addresses.
    /// </summary>
    internal static bool IsOurUser(IPEndPoint ours, IPEndPoint peer) =>
        (OwnerOf(ours, peer) ?? OwnerOf(Mapped(ours), Mapped(peer), "/proc/net/tcp6")) == Syscall.geteuid();

    private static IPEndPoint Mapped(IPEndPoint endPoint) => new(endPoint.Address.MapToIPv6(), endPoint.Port);

    /// <summary>An end point as <c>/proc/net/tcp</c>(6) prints it: the address as native-order 32-bit words, the port, all in hex.</summary>
    private static string Format(IPEndPoint endPoint)
    {
        var bytes = endPoint.Address.GetAddressBytes();
        var text = new System.Text.StringBuilder();
        for (var i = 0; i < bytes.Length; i += 4)
        {
            text.Append(BitConverter.ToUInt32(bytes, i).ToString("X8", CultureInfo.InvariantCulture));
        }

        return text.Append(':').Append(endPoint.Port.ToString("X4", CultureInfo.InvariantCulture)).ToString();
    }
}
