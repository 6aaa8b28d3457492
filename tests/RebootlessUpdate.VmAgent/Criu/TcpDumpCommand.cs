using System.Diagnostics;
using System.Text.Json;
using RebootlessUpdate.Criu;
using RebootlessUpdate.VmAgent.Images;

namespace RebootlessUpdate.VmAgent.Criu;

/// <summary>
/// criu-tcp SCRIPT: a TCP server and client (tests/workloads/tcp-pair.py) in one
/// PID and network namespace, dumped with established TCP and the nftables network lock,
/// restored; records the notifications and whether the client went on without
/// an error. Writes /job/tcp.json. (The host has neither iptables nor nft.)
/// </summary>
internal sealed class TcpDumpCommand : IVmCommand
{
    public string Name => "criu-tcp";

    public async Task<int> RunAsync(IReadOnlyList<string> args)
    {
        var work = Directory.CreateDirectory("/tmp/tcp-work").FullName;
        var images = Directory.CreateDirectory("/tmp/tcp-images").FullName;
        var counter = Path.Combine(work, "tcp-counter");
        var psi = new ProcessStartInfo("unshare") { UseShellExecute = false, WorkingDirectory = "/" };
        // Its own network namespace, as a container has: CRIU then dumps the
        // namespace and sends the network-lock / network-unlock notifications.
        foreach (var a in new[] { "--pid", "--net", "--fork", "setsid", "sh", "-c", $"exec </dev/null >/dev/null 2>&1; ip link set lo up; exec python3 '{args[0]}' '{work}' 7341" })
        {
            psi.ArgumentList.Add(a);
        }

        using var unshare = Process.Start(psi)!;
        var pid = GuestWorkload.WaitFor(() => GuestWorkload.Children(unshare.Id).FirstOrDefault(), "the workload's init", 60);
        GuestWorkload.WaitFor(() => GuestWorkload.ReadCounter(counter) > 5 ? 1 : 0, "the first messages", 60);

        var client = new CriuClient();
        var dumpSeen = new List<string>();
        var restoreSeen = new List<string>();
        await client.DumpAsync(new CriuDumpOptions
        {
            ImagesDirectory = images, Pid = pid, TcpEstablished = true, NetworkLock = CriuNetworkLock.Nftables,
            OnNotification = (n, _) => { dumpSeen.Add(n.Script); return ValueTask.CompletedTask; },
        });
        var atDump = GuestWorkload.ReadCounter(counter);
        GuestWorkload.WaitFor(() => GuestWorkload.IsRunning(pid) ? 0 : 1, "the dumped tree to be gone", 30);
        var restore = await client.RestoreAsync(new CriuRestoreOptions
        {
            ImagesDirectory = images, TcpEstablished = true, NetworkLock = CriuNetworkLock.Nftables,
            OnNotification = (n, _) => { restoreSeen.Add(n.Script); return ValueTask.CompletedTask; },
        });
        GuestWorkload.WaitFor(() => GuestWorkload.ReadCounter(counter) > atDump + 10 ? 1 : 0, "messages after restore", 60);
        var errors = File.Exists(Path.Combine(work, "tcp-errors")) ? await File.ReadAllTextAsync(Path.Combine(work, "tcp-errors")) : string.Empty;

        var report = new Dictionary<string, object?>
        {
            ["dumpNotifications"] = dumpSeen,
            ["restoreNotifications"] = restoreSeen,
            ["counterAtDump"] = atDump,
            ["counterAfter"] = GuestWorkload.ReadCounter(counter),
            ["errors"] = errors,
            ["restoredPid"] = restore.Pid,
        };
        await File.WriteAllTextAsync("/job/tcp.json", JsonSerializer.Serialize(report));
        Console.WriteLine($"criu-tcp: {JsonSerializer.Serialize(report)}");
        return errors.Length == 0 ? 0 : 1;
    }
}
