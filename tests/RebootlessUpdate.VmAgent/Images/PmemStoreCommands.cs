using System.Globalization;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Images;

namespace RebootlessUpdate.VmAgent.Images;

/// <summary>Shared bits of the pmem store scenarios: results go to /job/images-*.</summary>
internal static class PmemScenario
{
    public const string CriuPath = "/usr/sbin/criu";

    public static string Job(IReadOnlyList<string> args) => args.Count > 0 ? args[0] : "/job";

    public static void Write(string job, string name, object value)
    {
        var text = Convert.ToString(value, CultureInfo.InvariantCulture) ?? string.Empty;
        File.WriteAllText(Path.Combine(job, "images-" + name), text + "\n");
        Console.WriteLine($"images-{name}: {text}");
    }

    public static string Read(string job, string name) => File.ReadAllText(Path.Combine(job, "images-" + name)).Trim();

    public static string BootedMemmap() =>
        File.ReadAllText("/proc/cmdline").Split(' ', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .FirstOrDefault(p => p.StartsWith("memmap=", StringComparison.Ordinal))?["memmap=".Length..] ?? "(none)";

    /// <summary>Starts the workload, dumps it into a new set and seals it.</summary>
    public static async Task<(CheckpointSet Set, CheckpointManifest Manifest, long CountAtDump)> DumpAndSealAsync(IImageStore store, string job)
    {
        var counter = Path.Combine(job, "work", "counter");
        var pid = GuestWorkload.Start(counter);
        GuestWorkload.WaitFor(() => GuestWorkload.ReadCounter(counter) > 5 ? 1 : 0, "a few counts", 60);
        var client = new CriuClient(new CriuClientOptions { CriuPath = CriuPath });
        var version = await client.GetVersionAsync();
        var estimate = store.EnsureCapacityFor([pid]);
        Write(job, "estimate", estimate.RequiredBytes);
        var set = store.CreateSet([$"pid:{pid}"]);
        await client.DumpIntoAsync(set, new CriuDumpOptions { ImagesDirectory = "-", Pid = pid });
        var count = GuestWorkload.ReadCounter(counter);
        var manifest = await store.SealAsync(set, new SealOptions { CriuVersion = version.ToString() });
        Write(job, "set-id", set.Id);
        Write(job, "count-at-dump", count);
        Write(job, "total-bytes", manifest.TotalBytes);
        return (set, manifest, count);
    }
}

/// <summary>
/// Before the kexec: open (format) the pmem store, dump the workload into it,
/// seal, unmount. Writes the set id, the memmap fragment and the count at dump.
/// </summary>
internal sealed class PmemDumpCommand : IVmCommand
{
    public string Name => "images-pmem-dump";

    public async Task<int> RunAsync(IReadOnlyList<string> args)
    {
        var job = PmemScenario.Job(args);
        using var store = PmemImageStore.Open(new PmemImageStoreOptions());
        PmemScenario.Write(job, "formatted-1", store.Formatted);
        PmemScenario.Write(job, "dax-1", store.DaxEnabled);
        PmemScenario.Write(job, "memmap-1", store.Region.MemmapFragment);
        PmemScenario.Write(job, "booted-memmap-1", PmemScenario.BootedMemmap());
        PmemScenario.Write(job, "kernel-1", File.ReadAllText("/proc/sys/kernel/osrelease").Trim());
        await PmemScenario.DumpAndSealAsync(store, job);
        store.Unmount();
        PmemScenario.Write(job, "unmounted-1", true);
        return 0;
    }
}

/// <summary>
/// After the kexec: mount the store (no format), verify the set, restore it,
/// and check the workload counts on. Writes what it saw.
/// </summary>
internal sealed class PmemRestoreCommand : IVmCommand
{
    public string Name => "images-pmem-restore";

    public async Task<int> RunAsync(IReadOnlyList<string> args)
    {
        var job = PmemScenario.Job(args);
        var setId = PmemScenario.Read(job, "set-id");
        var countAtDump = long.Parse(PmemScenario.Read(job, "count-at-dump"), CultureInfo.InvariantCulture);
        var counter = Path.Combine(job, "work", "counter");
        using var store = PmemImageStore.Open(new PmemImageStoreOptions());
        PmemScenario.Write(job, "formatted-2", store.Formatted);
        PmemScenario.Write(job, "memmap-2", store.Region.MemmapFragment);
        PmemScenario.Write(job, "booted-memmap-2", PmemScenario.BootedMemmap());
        PmemScenario.Write(job, "kernel-2", File.ReadAllText("/proc/sys/kernel/osrelease").Trim());
        PmemScenario.Write(job, "sets-2", string.Join(' ', store.ListSets().Select(s => s.SetId)));
        var verification = await store.VerifyAsync(setId);
        PmemScenario.Write(job, "verify-2", verification.Describe());
        var opened = await store.OpenForRestoreAsync(setId);
        PmemScenario.Write(job, "manifest-kernel", opened.Manifest.KernelRelease);
        PmemScenario.Write(job, "count-before-restore", GuestWorkload.ReadCounter(counter));
        var client = new CriuClient(new CriuClientOptions { CriuPath = PmemScenario.CriuPath });
        var restore = await client.RestoreAsync(new CriuRestoreOptions { ImagesDirectory = opened.ImagesDirectory, WorkDirectory = "/tmp" });
        PmemScenario.Write(job, "restored-pid", restore.Pid);
        GuestWorkload.WaitFor(() => GuestWorkload.ReadCounter(counter) > countAtDump + 5 ? 1 : 0, "the restored workload to count on", 60);
        PmemScenario.Write(job, "count-after-restore", GuestWorkload.ReadCounter(counter));
        PmemScenario.Write(job, "alive-after-restore", GuestWorkload.IsRunning(restore.Pid));
        return 0;
    }
}

/// <summary>
/// One boot: a device holding another file system is refused; once wiped it is
/// formatted; a real dump is sealed, one byte of an image flipped, and
/// verification must name the file and opening for restore must be refused.
/// </summary>
internal sealed class PmemTamperCommand : IVmCommand
{
    public string Name => "images-pmem-tamper";

    public async Task<int> RunAsync(IReadOnlyList<string> args)
    {
        var job = PmemScenario.Job(args);
        var device = PmemRegion.Discover()[0].Device;
        Run("mkfs.ext4", "-q", "-F", "-L", "precious", device);
        try
        {
            using var wrong = PmemImageStore.Open(new PmemImageStoreOptions());
            PmemScenario.Write(job, "refused", "(not refused)");
            return 1;
        }
        catch (ImageStoreException e)
        {
            PmemScenario.Write(job, "refused", e.Message);
        }

        Run("wipefs", "-a", "-q", device);
        using var store = PmemImageStore.Open(new PmemImageStoreOptions());
        PmemScenario.Write(job, "formatted-1", store.Formatted);
        var (set, _, _) = await PmemScenario.DumpAndSealAsync(store, job);
        var victim = Directory.GetFiles(set.ImagesDirectory, "pages-*.img").OrderByDescending(f => new FileInfo(f).Length).First();
        using (var fs = new FileStream(victim, FileMode.Open, FileAccess.ReadWrite))
        {
            fs.Position = fs.Length / 2;
            var b = fs.ReadByte();
            fs.Position = fs.Length / 2;
            fs.WriteByte((byte)(b ^ 0x01));
            fs.Flush(flushToDisk: true);
        }

        PmemScenario.Write(job, "flipped", Path.GetFileName(victim));
        var verification = await store.VerifyAsync(set.Id);
        PmemScenario.Write(job, "verify", string.Join(";", verification.Issues.Select(i => $"{i.Kind}:{i.Path}")));
        try
        {
            await store.OpenForRestoreAsync(set.Id);
            PmemScenario.Write(job, "restore-refused", "(opened)");
        }
        catch (CheckpointSetVerificationException e)
        {
            PmemScenario.Write(job, "restore-refused", e.Message.ReplaceLineEndings(" | "));
        }

        store.Unmount();
        return 0;
    }

    private static void Run(string file, params string[] args)
    {
        using var p = System.Diagnostics.Process.Start(file, args);
        p.WaitForExit();
        if (p.ExitCode != 0)
        {
            throw new InvalidOperationException($"{file} {string.Join(' ', args)} failed with {p.ExitCode}");
        }
    }
}
