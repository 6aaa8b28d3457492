using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using RebootlessUpdate.Criu;
using RebootlessUpdate.VmAgent.Images;

namespace RebootlessUpdate.VmAgent.Criu;

/// <summary>
/// criu-chain-on-demand WORKLOAD_BINARY MEM_MIB: dumps the C workload (in its own PID namespace) on a real chain of
/// two pre-dumps, then restores it lazily through a <see cref="CriuRestoreView"/> of the final dump, with every lazy
/// page, the pre-dumps' included, served by our <see cref="LazyPageServer"/> over a <see cref="CriuImagesPageSource"/>
/// of the original final dump, and asks the workload to verify its memory. Writes /job/chain-on-demand.json.
/// </summary>
/// <remarks>
/// Between the two pre-dumps the workload writes the upper half of its memory back with the values it holds, so the
/// second pre-dump holds those pages and the first one keeps the lower half: both pre-dumps have pages to serve. Needs
/// soft-dirty tracking and userfaultfd: the VM's kernel has both, the host's lacks the first.
/// </remarks>
internal sealed class ChainOnDemandCommand : IVmCommand
{
    private const int Page = ILazyPageSource.PageSize;

    public string Name => "criu-chain-on-demand";

    public async Task<int> RunAsync(IReadOnlyList<string> args)
    {
        var binary = args[0];
        var mib = int.Parse(args[1], NumberStyles.None, CultureInfo.InvariantCulture);
        var work = Directory.CreateDirectory("/tmp/chain-work").FullName;
        var root = Directory.CreateDirectory("/tmp/chain-images").FullName;
        var criuWork = Directory.CreateDirectory("/tmp/chain-criu-work").FullName;
        var client = new CriuClient();
        var features = await client.CheckFeaturesAsync();

        var psi = new ProcessStartInfo("unshare") { UseShellExecute = false, WorkingDirectory = "/" };
        foreach (var a in new[] { "--pid", "--fork", "setsid", "sh", "-c", $"exec </dev/null >/dev/null 2>&1; exec '{binary}' '{work}' {mib}" })
        {
            psi.ArgumentList.Add(a);
        }

        using var unshare = Process.Start(psi)!;
        var pid = GuestWorkload.WaitFor(() => GuestWorkload.Children(unshare.Id).FirstOrDefault(), "the workload's init", 60);
        GuestWorkload.WaitFor(() => File.Exists(Path.Combine(work, "ready")) ? 1 : 0, "the workload's memory", 120);

        // The chain, by hand so that the workload can write between the pre-dumps: pre-1 <- pre-2 <- final.
        var sw = Stopwatch.StartNew();
        var pre1 = Directory.CreateDirectory(Path.Combine(root, "pre-1")).FullName;
        var pre2 = Directory.CreateDirectory(Path.Combine(root, "pre-2")).FullName;
        var final = Directory.CreateDirectory(Path.Combine(root, "final")).FullName;
        var dump = new CriuDumpOptions { ImagesDirectory = pre1, Pid = pid, TrackMemory = true };
        CriuDumpResult first, second, last;
        string touched;
        await using (var session = await client.StartPreDumpSessionAsync())
        {
            first = await session.PreDumpAsync(dump);
            touched = await TouchAsync(work, mib / 2, mib - (mib / 2));
            second = await session.PreDumpAsync(dump with { ImagesDirectory = pre2, ParentImages = "../pre-1" });
            last = await session.DumpAsync(dump with { ImagesDirectory = final, ParentImages = "../pre-2" });
        }

        var dumpSeconds = sw.Elapsed.TotalSeconds;
        GuestWorkload.WaitFor(() => GuestWorkload.IsRunning(pid) ? 0 : 1, "the dumped tree to be gone", 30);

        var view = CriuRestoreView.Build(final, "/tmp/chain-view");
        var lazyInView = CountPages(view.Directory, lazy: true);
        var eagerInView = CountPages(view.Directory, lazy: false);

        var failures = new ConcurrentQueue<string>();
        var restored = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var reads = new ReadsByFolder();
        using var source = new CriuImagesPageSource(final, reads);
        await using var server = LazyPageServer.Start(source, new LazyPageServerOptions
        {
            OnFailure = async failure =>
            {
                // End the tree before the daemon is let go: it would fault in zero pages otherwise.
                failures.Enqueue($"{failure.Kind}: {failure.Exception.Message}");
                var tree = await restored.Task.WaitAsync(TimeSpan.FromSeconds(30));
                _ = Mono.Unix.Native.Syscall.kill(tree, Mono.Unix.Native.Signum.SIGKILL);
            },
        });
        await using var daemon = await client.StartLazyPagesDaemonAsync(new CriuLazyPagesOptions
        {
            ImagesDirectory = view.Directory, WorkDirectory = criuWork, LogLevel = 4, PageServer = server.Endpoint,
        });

        sw.Restart();
        var restore = await client.RestoreAsync(new CriuRestoreOptions { ImagesDirectory = view.Directory, WorkDirectory = criuWork, LazyPages = true });
        restored.SetResult(restore.Pid);
        var restoreSeconds = sw.Elapsed.TotalSeconds;
        await server.WaitForConnectionAsync().WaitAsync(TimeSpan.FromSeconds(60));

        var verdictFile = Path.Combine(work, "check-result");
        await File.WriteAllTextAsync(Path.Combine(work, "check-request"), string.Empty);
        GuestWorkload.WaitFor(() => File.Exists(verdictFile) ? 1 : 0, "the workload's self-check", 300);
        var verdict = (await File.ReadAllTextAsync(verdictFile)).Trim();
        var served = await server.Completion.WaitAsync(TimeSpan.FromSeconds(300));
        var allPagesSeconds = sw.Elapsed.TotalSeconds;
        await daemon.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(60));
        File.Copy(daemon.LogFile, "/job/chain-lazy-pages.log", overwrite: true);
        var daemonLog = await File.ReadAllLinesAsync(daemon.LogFile);
        _ = Mono.Unix.Native.Syscall.kill(restore.Pid, Mono.Unix.Native.Signum.SIGKILL);

        var report = new Dictionary<string, object?>
        {
            ["memTrack"] = features.MemoryTracking,
            ["lazyPages"] = features.LazyPages,
            ["memMiB"] = mib,
            ["touchResult"] = touched,
            ["preDumpPagesWritten"] = new[] { first.Statistics?.PagesWritten, second.Statistics?.PagesWritten },
            ["preDumpPagesSkippedParent"] = new[] { first.Statistics?.PagesSkippedParent, second.Statistics?.PagesSkippedParent },
            ["finalPagesWritten"] = last.Statistics?.PagesWritten,
            ["finalPagesSkippedParent"] = last.Statistics?.PagesSkippedParent,
            ["finalParentLink"] = new DirectoryInfo(Path.Combine(final, "parent")).LinkTarget,
            ["preDump2ParentLink"] = new DirectoryInfo(Path.Combine(pre2, "parent")).LinkTarget,
            ["preDump1HasParent"] = Path.Exists(Path.Combine(pre1, "parent")),
            ["viewPagesMadeLazy"] = view.PagesMadeLazy,
            ["viewPagesLeftInParent"] = view.PagesLeftInParent,
            ["lazyPagesInView"] = lazyInView,
            ["eagerPagesInView"] = eagerInView,
            ["pagesServed"] = served.PagesServed,
            ["requests"] = served.Requests,
            ["connectedSeconds"] = served.Connected.TotalSeconds,
            ["pagesReadFromPreDump1"] = reads.Pages(pre1),
            ["pagesReadFromPreDump2"] = reads.Pages(pre2),
            ["pagesReadFromFinal"] = reads.Pages(final),
            ["pagesReadElsewhere"] = reads.Total - reads.Pages(pre1) - reads.Pages(pre2) - reads.Pages(final),
            ["criuPagesRestored"] = restore.Statistics?.PagesRestored,
            ["criuPagesSkippedCow"] = restore.Statistics?.PagesSkippedCow,
            ["failures"] = failures.ToArray(),
            ["daemonSummary"] = daemonLog.Where(l => l.Contains("UFFD transferred pages", StringComparison.Ordinal)).ToArray(),
            ["daemonErrors"] = daemonLog.Where(l => l.Contains("Error", StringComparison.Ordinal) || l.Contains("Only ", StringComparison.Ordinal)).ToArray(),
            ["verdict"] = verdict,
            ["initialChecksum"] = (await File.ReadAllTextAsync(Path.Combine(work, "ready"))).Trim(),
            ["dumpSeconds"] = dumpSeconds,
            ["restoreSeconds"] = restoreSeconds,
            ["allPagesSeconds"] = allPagesSeconds,
        };
        await File.WriteAllTextAsync("/job/chain-on-demand.json", JsonSerializer.Serialize(report));
        Console.WriteLine($"criu-chain-on-demand: {JsonSerializer.Serialize(report)}");
        return verdict.StartsWith("ok", StringComparison.Ordinal) && failures.IsEmpty ? 0 : 1;
    }

    /// <summary>Asks the workload to write <paramref name="count"/> MiB of its memory from <paramref name="fromMiB"/> back as they are; returns its answer.</summary>
    private static async Task<string> TouchAsync(string work, int fromMiB, int count)
    {
        var result = Path.Combine(work, "touch-result");
        File.Delete(result);
        var request = Path.Combine(work, ".touch-request.tmp");
        await File.WriteAllTextAsync(request, string.Create(CultureInfo.InvariantCulture, $"{fromMiB} {count}\n"));
        File.Move(request, Path.Combine(work, "touch-request")); // whole: the workload polls for it
        GuestWorkload.WaitFor(() => File.Exists(result) ? 1 : 0, "the workload's touch", 60);
        return (await File.ReadAllTextAsync(result)).Trim();
    }

    /// <summary>How many pages the processes' pagemaps in <paramref name="imagesDirectory"/> mark lazy, or not lazy.</summary>
    private static long CountPages(string imagesDirectory, bool lazy) =>
        Directory.GetFiles(imagesDirectory, "pagemap-*.img")
            .Select(f => int.TryParse(Path.GetFileName(f)["pagemap-".Length..^".img".Length], NumberStyles.None, CultureInfo.InvariantCulture, out var p) ? p : 0)
            .Where(p => p > 0) // a process's pagemap, not shared memory's
            .Select(p => CriuPagemap.Read(imagesDirectory, p))
            .SelectMany(m => m.Entries).Where(e => e.Flags.HasFlag(CriuPageState.Lazy) == lazy).Sum(e => (long)e.PageCount);

    /// <summary>Counts the pages the source reads from each folder (the verifier sees every range before it is read).</summary>
    private sealed class ReadsByFolder : IPageChunkVerifier
    {
        private readonly ConcurrentDictionary<string, long> _pages = new(StringComparer.Ordinal);

        public long Total => _pages.Values.Sum();

        public long Pages(string folder) => _pages.GetValueOrDefault(Path.GetFullPath(folder));

        public ValueTask VerifyAsync(string file, long offset, int length, CancellationToken cancellationToken)
        {
            _pages.AddOrUpdate(Path.GetDirectoryName(file)!, length / Page, (_, n) => n + (length / Page));
            return ValueTask.CompletedTask;
        }
    }
}
