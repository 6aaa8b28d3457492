using System.CommandLine;
using RebootlessUpdate.Images;

namespace RebootlessUpdate.Cli.Commands;

/// <summary><c>rebootless plan</c>: what would be checkpointed and whether it fits. Creates and changes nothing.</summary>
internal static class PlanCommand
{
    public static Command Create()
    {
        var cmd = new Command("plan", "What would be checkpointed, the estimated size, and whether it fits the store. Creates and changes nothing.");
        var targets = new CliTargets(cmd);
        CliOptions.Add(cmd, CliOptions.StoreOptions);
        CliInvocation.SetAction(cmd, c =>
        {
            CliInvocation.RequireRoot("plan");
            var resolved = targets.Resolve(c).Select(t => (t.Id, r: t.Resolve())).ToList();
            var (processes, memory, required) = CapacityEstimator.Estimate(resolved.Select(r => r.r.RootPid));

            // A store folder that does not exist yet is measured where it would be made, not created.
            long free;
            string where;
            if (c.Settings.Luo)
            {
                if (CliStores.LuoChecks().Where(x => !x.Ok).Select(x => x.Detail).ToList() is { Count: > 0 } problems)
                {
                    throw CliFailure.Of(ExitCodes.BadStore, string.Join("; and ", problems),
                        "use a persistent-memory store (--pmem DEVICE) here, or boot a kernel with the Live Update Orchestrator on");
                }

                // Memory, not a disk: what the tmpfs and the system's available memory leave (mounted or not).
                where = c.Settings.StorePath;
                free = Images.Luo.LuoImageStore.FreeBytes(Path.GetDirectoryName(where)!);
            }
            else if (c.Settings.PmemDevice is null && c.Settings.StoreFolder is null && !Directory.Exists(c.Settings.StorePath))
            {
                where = NearestExisting(c.Settings.StorePath);
                free = new DriveInfo(where).AvailableFreeSpace;
            }
            else if (c.Settings.PmemDevice is { } device && !CliStores.IsMounted(device))
            {
                // Not mounted yet: the whole device will hold the store (less what the file system takes).
                where = device;
                free = CliStores.DeviceBytes(device);
            }
            else
            {
                var store = CliStores.Open(c, mustExist: false, readOnly: true);
                where = store.RootDirectory;
                free = store.GetCapacity().FreeBytes;
            }

            var output = new PlanOutput([.. resolved.Select(r => new PlanTarget(r.Id, r.r.RootPid, r.r.Processes, r.r.Settings.ShellJob, r.r.Settings.FreezeCgroup))],
                processes, memory, required, free, required <= free, c.Settings.PmemDevice is null ? c.Settings.StorePath : where);
            if (c.Json)
            {
                CliOutput.WriteJson(output, CliJson.Default.PlanOutput);
            }
            else
            {
                foreach (var t in output.Targets)
                {
                    Console.WriteLine($"{t.Target}: root {t.RootPid}, {t.Processes} processes{(t.ShellJob ? ", shell job" : "")}");
                }

                Console.WriteLine($"estimate: {CliOutput.Size(required)} needed ({CliOutput.Size(memory)} of memory), "
                    + $"{CliOutput.Size(free)} free in {output.Store}: {(output.Fits ? "fits" : "does NOT fit")}");
            }

            if (!output.Fits)
            {
                Console.Error.WriteLine(CliOutput.OneLine(new CliError(ExitCodes.StoreFull,
                    $"the checkpoint needs about {CliOutput.Size(required)} and {output.Store} has {CliOutput.Size(free)} free", "free space there or use a larger store")));
            }

            return output.ExitCode;
        });
        return cmd;
    }

    private static string NearestExisting(string path)
    {
        var dir = Path.GetFullPath(path);
        while (!Directory.Exists(dir))
        {
            dir = Path.GetDirectoryName(dir) ?? "/";
        }

        return dir;
    }
}
