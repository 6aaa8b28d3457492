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

    /// <summary>True when the peer's socket belongs to this process's effective user.</summary>
    internal static bool IsOurUser(IPEndPoint ours, IPEndPoint peer) => OwnerOf(ours, peer) == Syscall.geteuid();

    /// <summary>An IPv4 end point as <c>/proc/net/tcp</c> prints it: the address as a native-order word, the port, both in hex.</summary>
    private static string Format(IPEndPoint endPoint) =>
        BitConverter.ToUInt32(endPoint.Address.MapToIPv4().GetAddressBytes()).ToString("X8", CultureInfo.InvariantCulture) + ":"
        + endPoint.Port.ToString("X4", CultureInfo.InvariantCulture);
}
