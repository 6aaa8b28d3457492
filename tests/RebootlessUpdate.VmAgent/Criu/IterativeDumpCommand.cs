using System.Diagnostics;
using System.Text.Json;
using RebootlessUpdate.Criu;
using RebootlessUpdate.VmAgent.Images;

namespace RebootlessUpdate.VmAgent.Criu;

/// <summary>
/// criu-iterative WORKLOAD_BINARY MEM_MIB: runs the C workload in its own PID
/// namespace, checkpoints it with the client's iterative dump (at least three
/// pre-dumps while it runs, then the final dump), restores it from the final
/// images and asks it to verify its state. Writes /job/iterative.json.
/// Needs soft-dirty tracking: the VM's kernel has it, the host's does not.
/// </summary>
internal sealed class IterativeDumpCommand : IVmCommand
{
    public string Name => "criu-iterative";

    public async Task<int> RunAsync(IReadOnlyList<string> args)
    {
        var binary = args[0];
        var mem = args[1];
        var work = Directory.CreateDirectory("/tmp/iterative-work").FullName;
        var root = Directory.CreateDirectory("/tmp/iterative-images").FullName;
        var client = new CriuClient();
        var features = await client.CheckFeaturesAsync();

        var psi = new ProcessStartInfo("unshare") { UseShellExecute = false, WorkingDirectory = "/" };
        foreach (var a in new[] { "--pid", "--fork", "setsid", "sh", "-c", $"exec </dev/null >/dev/null 2>&1; exec '{binary}' '{work}' {mem}" })
        {
            psi.ArgumentList.Add(a);
        }

        using var unshare = Process.Start(psi)!;
        var pid = GuestWorkload.WaitFor(() => GuestWorkload.Children(unshare.Id).FirstOrDefault(), "the workload's init", 60);
        GuestWorkload.WaitFor(() => File.Exists(Path.Combine(work, "ready")) ? 1 : 0, "the workload's memory", 120);

        // One SINGLE_PRE_DUMP first (its own connection; the tree keeps running).
        var single = Directory.CreateDirectory("/tmp/single-pre-dump").FullName;
        var singleResult = await client.SinglePreDumpAsync(new CriuDumpOptions { ImagesDirectory = single, Pid = pid, TrackMemory = true });
        var aliveAfterSingle = GuestWorkload.IsRunning(pid);

        var sw = Stopwatch.StartNew();
        var result = await client.IterativeDumpAsync(root, new CriuDumpOptions { ImagesDirectory = root, Pid = pid },
            new CriuIterativeDumpOptions { MinPreDumps = 3, MaxPreDumps = 5 });
        var dumpSeconds = sw.Elapsed.TotalSeconds;
        GuestWorkload.WaitFor(() => GuestWorkload.IsRunning(pid) ? 0 : 1, "the dumped tree to be gone", 30);
        var restore = await client.RestoreAsync(new CriuRestoreOptions { ImagesDirectory = result.FinalImagesDirectory });

        var verdictFile = Path.Combine(work, "check-result");
        await File.WriteAllTextAsync(Path.Combine(work, "check-request"), string.Empty);
        GuestWorkload.WaitFor(() => File.Exists(verdictFile) ? 1 : 0, "the workload's self-check", 60);
        var verdict = (await File.ReadAllTextAsync(verdictFile)).Trim();

        var report = new Dictionary<string, object?>
        {
            ["memTrack"] = features.MemoryTracking,
            ["singlePreDumpPagesWritten"] = singleResult.Statistics?.PagesWritten,
            ["aliveAfterSinglePreDump"] = aliveAfterSingle,
            ["preDumpPagesWritten"] = result.PreDumps.Select(p => p.Statistics?.PagesWritten).ToArray(),
            ["preDumpFrozenMicroseconds"] = result.PreDumps.Select(p => p.Statistics?.Frozen.TotalMicroseconds).ToArray(),
            ["finalPagesWritten"] = result.Final.Statistics?.PagesWritten,
            ["finalPagesSkippedParent"] = result.Final.Statistics?.PagesSkippedParent,
            ["finalFrozenMicroseconds"] = result.Final.Statistics?.Frozen.TotalMicroseconds,
            ["stopReason"] = result.StopReason,
            ["restoredPid"] = restore.Pid,
            ["verdict"] = verdict,
            ["initialChecksum"] = (await File.ReadAllTextAsync(Path.Combine(work, "ready"))).Trim(),
            ["dumpSeconds"] = dumpSeconds,
        };
        await File.WriteAllTextAsync("/job/iterative.json", JsonSerializer.Serialize(report));
        Console.WriteLine($"criu-iterative: {JsonSerializer.Serialize(report)}");
        return verdict.StartsWith("ok", StringComparison.Ordinal) ? 0 : 1;
    }
}
