using RebootlessUpdate.Criu;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests;

/// <summary><see cref="LazyPageServer"/> against the testbed's real <c>criu lazy-pages --page-server</c>.</summary>
[NonParallelizable]
public class LazyPageServerCriuTests : CriuTestFixture
{
    private const int Page = ILazyPageSource.PageSize;

    public LazyPageServerCriuTests()
        : base("rebootless-ps-")
    {
    }

    [Test]
    public async Task A_lazy_restore_whose_daemon_gets_every_lazy_page_from_our_server_keeps_the_memory_intact()
    {
        var (workload, images, work) = await DumpWorkloadAsync();
        using var dumped = workload;
        var checksum = workload.InitialChecksum;
        var lazyPages = CountLazyPages(images);

        // The daemon reads the pagemaps from its own copy of the images whose pages-*.img hold only zeros: any page
        // it took from there instead of from our server would break the workload's checksum.
        var daemonImages = CopyWithoutPageContents(images, NewDir("daemon-images"));
        var failures = new List<LazyPageServerFailure>();
        using var source = new CriuImagesPageSource(images);
        await using var run = await RestoreThroughAsync(source, workload, failures, daemonImages, images, work);
        var (server, daemon, restore) = (run.Server, run.Daemon, run.Restore);

        var verdict = workload.Check();
        var result = await server.Completion.WaitAsync(TimeSpan.FromSeconds(60));
        await daemon.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(60));
        var log = File.ReadAllText(daemon.LogFile);
        TestContext.Out.WriteLine($"lazy pages in the dump {lazyPages}; server {result}; restored by criu {restore.Statistics?.PagesRestored}; {verdict}");

        Assert.Multiple(() =>
        {
            Assert.That(verdict, Does.StartWith("ok").And.Contain($"mem={checksum}"), verdict);
            Assert.That(failures, Is.Empty);
            Assert.That(lazyPages, Is.GreaterThan(16 * 256), "the 16 MiB buffer is lazy-capable");
            Assert.That(result.PagesServed, Is.EqualTo(lazyPages), "every lazy page came from our server, once");
            Assert.That(result.Requests, Is.GreaterThan(1).And.LessThanOrEqualTo(result.PagesServed));
            Assert.That(log, Does.Contain("UFFD transferred pages"), "the daemon's own summary");
            Assert.That(log, Does.Not.Contain("Only ").And.Not.Contain("Error"), "no page missing or failed in the daemon's view");
        });
    }

    [Test]
    public async Task When_the_source_fails_mid_stream_the_tree_is_killed_before_the_daemon_is_let_go()
    {
        var (workload, images, work) = await DumpWorkloadAsync();
        using var dumped = workload;

        using var source = new CriuImagesPageSource(images);
        var (e, treeGoneBeforeClose, server, _) = await RestoreUntilServingFailsAsync(new FailingAfter(source, requests: 20), workload, images, work);
        TestContext.Out.WriteLine($"{e.Message}; served {server.PagesServed} pages in {server.Requests} requests");

        Assert.Multiple(() =>
        {
            Assert.That(e.Kind, Is.EqualTo(LazyPageServerFailureKind.SourceFailed));
            Assert.That(e.Message, Does.Contain("the store is gone"));
            Assert.That(treeGoneBeforeClose, Is.True, "the tree died inside the handler, before the socket closed");
            Assert.That(workload.IsAlive, Is.False);
            Assert.That(server.Requests, Is.EqualTo(20));
        });
    }

    [Test]
    public async Task A_dump_on_two_pre_dumps_restored_through_a_restore_view_gets_its_parent_pages_from_our_server()
    {
        var (workload, images, work) = await DumpWorkloadAsync();
        using var dumped = workload;
        var checksum = workload.InitialChecksum;
        // Two pre-dump levels synthesised from the real full dump: two pages of every three move up, one of those further.
        var (pre, movedOnce) = CriuImageFiles.MovePagesToParent(images, (_, a) => a / Page % 3 != 0);
        var (prePre, movedTwice) = CriuImageFiles.MovePagesToParent(pre, (_, a) => a / Page % 3 == 1);
        var view = CriuRestoreView.Build(images, Path.Combine(ScratchDirectory, "view"));
        var lazyInView = CountLazyPages(view.Directory);
        var eagerInView = CountPages(view.Directory, lazy: false);

        var failures = new List<LazyPageServerFailure>();
        var reads = new ReadsByFolder();
        // The original final dump: the source follows its PE_PARENT entries up the chain itself.
        using var source = new CriuImagesPageSource(images, reads);
        await using var run = await RestoreThroughAsync(source, workload, failures, view.Directory, view.Directory, work);
        var (server, daemon, restore) = (run.Server, run.Daemon, run.Restore);

        var verdict = workload.Check();
        var result = await server.Completion.WaitAsync(TimeSpan.FromSeconds(60));
        await daemon.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(60));
        var log = File.ReadAllText(daemon.LogFile);
        var stats = restore.Statistics!;
        TestContext.Out.WriteLine($"moved {movedOnce} pages to {pre}, {movedTwice} of them to {prePre}; view: {view.PagesMadeLazy} made lazy, "
            + $"{view.PagesLeftInParent} left in the parent, {lazyInView} lazy, {eagerInView} eager; criu restored {stats.PagesRestored} "
            + $"(+{stats.PagesSkippedCow} shared); server {result}; pages read per folder: {reads}; {verdict}");

        Assert.Multiple(() =>
        {
            Assert.That(verdict, Does.StartWith("ok").And.Contain($"mem={checksum}"), verdict);
            Assert.That(failures, Is.Empty);
            Assert.That(view.PagesMadeLazy + view.PagesLeftInParent, Is.EqualTo(movedOnce), "every page moved up was looked at");
            Assert.That(view.PagesMadeLazy, Is.GreaterThan(16 * 256 / 2), "most of the 16 MiB buffer's pages moved up and were made lazy");
            Assert.That(result.PagesServed, Is.EqualTo(lazyInView), "every lazy page of the view, parent pages included, came from our server, once");
            Assert.That(stats.PagesRestored + stats.PagesSkippedCow, Is.EqualTo(eagerInView), "CRIU restored only the entries it was not told to leave lazy");
            Assert.That(stats.PagesRestored, Is.LessThan(result.PagesServed / 10));
            Assert.That(reads.Pages(pre), Is.GreaterThan(16 * 256 / 4), "pages served from the first pre-dump");
            Assert.That(reads.Pages(prePre), Is.GreaterThan(16 * 256 / 4), "pages served from the second pre-dump");
            Assert.That(log, Does.Contain("UFFD transferred pages"));
            Assert.That(log, Does.Not.Contain("Error"), "no page missing or failed in the daemon's view");
        });
    }

    [Test]
    public async Task A_flipped_byte_in_a_pre_dump_s_pages_ends_the_tree_restored_through_a_restore_view()
    {
        var (workload, images, work) = await DumpWorkloadAsync();
        using var dumped = workload;
        var (pre, _) = CriuImageFiles.MovePagesToParent(images, (_, a) => a / Page % 3 != 0);
        var view = CriuRestoreView.Build(images, Path.Combine(ScratchDirectory, "view"));

        // A byte in the middle of pid 1's pages in the pre-dump, in a page the view leaves to the daemon.
        var parentMap = CriuPagemap.Read(pre, 1);
        var flipped = Path.Combine(pre, parentMap.PagesFileName);
        var at = new FileInfo(flipped).Length / 2;
        var entry = parentMap.Entries.Single(e => e.DataOffset is { } o && o <= at && at < o + ((long)e.PageCount * Page));
        var address = entry.Address + (ulong)((at - entry.DataOffset!.Value) / Page * Page);
        var inView = CriuPagemap.Read(view.Directory, 1);
        Assert.That(inView.Entries[inView.IndexOf(address)].Flags, Is.EqualTo(CriuPageState.Lazy), "the damaged page is one the daemon fetches");
        var sealedBytes = File.ReadAllBytes(flipped);
        using (var fs = new FileStream(flipped, FileMode.Open, FileAccess.ReadWrite))
        {
            fs.Position = at;
            fs.WriteByte((byte)(sealedBytes[at] ^ 0x40));
        }

        using var source = new CriuImagesPageSource(images, new ComparedWith(flipped, sealedBytes));
        var (e, treeGoneBeforeClose, server, restore) = await RestoreUntilServingFailsAsync(source, workload, view.Directory, work);
        TestContext.Out.WriteLine($"{e.Message}; served {server.PagesServed} pages in {server.Requests} requests; criu restored {restore.Statistics?.PagesRestored}");

        Assert.Multiple(() =>
        {
            Assert.That(e.Kind, Is.EqualTo(LazyPageServerFailureKind.SourceFailed));
            Assert.That(e.Message, Does.Contain($"{flipped} at {at}"));
            Assert.That(treeGoneBeforeClose, Is.True, "the tree died inside the handler, before the socket closed");
            Assert.That(workload.IsAlive, Is.False);
        });
    }

    /// <summary>
    /// A lazy restore from <paramref name="images"/> whose server over <paramref name="source"/> is expected to fail: its
    /// failure handler kills the restored tree and waits for it to die before the daemon is let go. Returns the failure,
    /// whether the tree was gone inside the handler, what the server had served, and the restore's answer.
    /// </summary>
    private async Task<(LazyPageServerException Failure, bool TreeGoneBeforeClose, (long PagesServed, long Requests) Server, CriuRestoreResult Restore)>
        RestoreUntilServingFailsAsync(ILazyPageSource source, Workload workload, string images, string work)
    {
        var restored = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var treeGoneBeforeClose = false;
        await using var server = LazyPageServer.Start(source, new LazyPageServerOptions
        {
            OnFailure = async failure =>
            {
                var root = await restored.Task.WaitAsync(TimeSpan.FromSeconds(30));
                _ = Mono.Unix.Native.Syscall.kill(root, Mono.Unix.Native.Signum.SIGKILL);
                Workload.WaitFor(() => Workload.IsRunning(root) ? 0 : 1, "the restored tree to die");
                treeGoneBeforeClose = failure.Kind == LazyPageServerFailureKind.SourceFailed;
            },
        });
        await using var daemon = await Client.StartLazyPagesDaemonAsync(new CriuLazyPagesOptions
        {
            ImagesDirectory = images, WorkDirectory = work, PageServer = server.Endpoint,
        });
        var restore = await Client.RestoreAsync(new CriuRestoreOptions { ImagesDirectory = images, WorkDirectory = work, LazyPages = true });
        workload.RootPid = restore.Pid;
        restored.SetResult(restore.Pid);

        var e = Assert.ThrowsAsync<LazyPageServerException>(() => server.Completion.WaitAsync(TimeSpan.FromSeconds(60)));
        await daemon.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(60));
        return (e!, treeGoneBeforeClose, (server.PagesServed, server.Requests), restore);
    }

    /// <summary>
    /// Starts our server over <paramref name="source"/> (a failure is recorded and kills the workload's tree), a daemon
    /// reading <paramref name="daemonImages"/>, and a lazy restore from <paramref name="restoreImages"/>; returns once the
    /// daemon has reached the server.
    /// </summary>
    private async Task<LazyRun> RestoreThroughAsync(ILazyPageSource source, Workload workload, List<LazyPageServerFailure> failures,
        string daemonImages, string restoreImages, string work)
    {
        var server = LazyPageServer.Start(source, new LazyPageServerOptions
        {
            OnFailure = failure =>
            {
                failures.Add(failure);
                _ = Mono.Unix.Native.Syscall.kill(workload.RootPid, Mono.Unix.Native.Signum.SIGKILL);
                return ValueTask.CompletedTask;
            },
        });
        CriuLazyPagesDaemon? daemon = null;
        try
        {
            daemon = await Client.StartLazyPagesDaemonAsync(new CriuLazyPagesOptions
            {
                ImagesDirectory = daemonImages, WorkDirectory = work, LogLevel = 4, PageServer = server.Endpoint,
            });
            var restore = await Client.RestoreAsync(new CriuRestoreOptions { ImagesDirectory = restoreImages, WorkDirectory = work, LazyPages = true });
            workload.RootPid = restore.Pid;
            await server.WaitForConnectionAsync().WaitAsync(TimeSpan.FromSeconds(30));
            return new LazyRun(server, daemon, restore);
        }
        catch
        {
            if (daemon is not null)
            {
                await daemon.DisposeAsync();
            }

            await server.DisposeAsync();
            throw;
        }
    }

    [Test]
    public async Task A_stranger_connecting_to_the_port_first_is_refused_and_the_daemon_still_gets_every_page()
    {
        // Attack: any local user can connect to 127.0.0.1:port between Start and the daemon's connect. Before the fix
        // the server took the stranger as "the daemon", closed the port, and the real daemon was refused: the restored
        // tree ran on zero pages (and the stranger could have asked for the tree's memory with GETs).
        var (workload, images, work) = await DumpWorkloadAsync();
        using var dumped = workload;
        var checksum = workload.InitialChecksum;
        var lazyPages = CountLazyPages(images);
        var failures = new List<LazyPageServerFailure>();
        using var source = new CriuImagesPageSource(images);
        await using var server = StartKillingOnFailure(source, workload, failures);
        using var stranger = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("setpriv",
            ["--reuid=65534", "--regid=65534", "--clear-groups", "bash", "-c",
                $"exec 3<>/dev/tcp/127.0.0.1/{server.Endpoint.Port} && echo connected && sleep 60"])
        {
            RedirectStandardOutput = true,
        })!;
        try
        {
            Assert.That(await stranger.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(10)), Is.EqualTo("connected"));
            Assert.That(server.WaitForConnectionAsync().Wait(TimeSpan.FromMilliseconds(500)), Is.False, "the stranger is not taken for the daemon");

            await using var daemon = await Client.StartLazyPagesDaemonAsync(new CriuLazyPagesOptions
            {
                ImagesDirectory = images, WorkDirectory = work, PageServer = server.Endpoint,
            });
            var restore = await Client.RestoreAsync(new CriuRestoreOptions { ImagesDirectory = images, WorkDirectory = work, LazyPages = true });
            workload.RootPid = restore.Pid;
            await server.WaitForConnectionAsync().WaitAsync(TimeSpan.FromSeconds(30));

            var verdict = workload.Check();
            var result = await server.Completion.WaitAsync(TimeSpan.FromSeconds(60));
            TestContext.Out.WriteLine($"server {result}; {verdict}");
            Assert.Multiple(() =>
            {
                Assert.That(verdict, Does.StartWith("ok").And.Contain($"mem={checksum}"), verdict);
                Assert.That(failures, Is.Empty);
                Assert.That(result.PagesServed, Is.EqualTo(lazyPages));
            });
        }
        finally
        {
            stranger.Kill();
        }
    }

    /// <summary>Starts a server whose failure handler records the failure and kills the workload's restored root.</summary>
    private static LazyPageServer StartKillingOnFailure(ILazyPageSource source, Workload workload, List<LazyPageServerFailure> failures) =>
        LazyPageServer.Start(source, new LazyPageServerOptions
        {
            OnFailure = failure =>
            {
                failures.Add(failure);
                _ = Mono.Unix.Native.Syscall.kill(workload.RootPid, Mono.Unix.Native.Signum.SIGKILL);
                return ValueTask.CompletedTask;
            },
        });

    /// <summary>Dumps the C workload with 16 MiB of patterned memory (its tree is gone afterwards); skips without userfaultfd.</summary>
    private async Task<(Workload Workload, string Images, string Work)> DumpWorkloadAsync()
    {
        var features = await Client.CheckFeaturesAsync();
        if (!features.LazyPages)
        {
            Testbed.Missing("userfaultfd lazy pages on this kernel");
        }

        var workload = Workload.StartProgram(NewDir("work"), 16);
        var images = NewDir("images");
        var work = NewDir("criu-work");
        await Client.DumpAsync(new CriuDumpOptions { ImagesDirectory = images, WorkDirectory = work, Pid = workload.RootPid });
        Workload.WaitFor(() => workload.IsAlive ? 0 : 1, "the dumped tree to be gone");
        return (workload, images, work);
    }

    /// <summary>How many pages the dump marked lazy, over every process of the tree.</summary>
    internal static long CountLazyPages(string imagesDirectory) => CountPages(imagesDirectory, lazy: true);

    /// <summary>How many pages the processes' pagemaps in <paramref name="imagesDirectory"/> mark lazy, or not lazy.</summary>
    private static long CountPages(string imagesDirectory, bool lazy) =>
        Directory.GetFiles(imagesDirectory, "pagemap-*.img")
            .Select(f => CriuPagemap.Read(imagesDirectory, int.Parse(Path.GetFileName(f)["pagemap-".Length..^".img".Length], System.Globalization.CultureInfo.InvariantCulture)))
            .SelectMany(m => m.Entries).Where(e => e.Flags.HasFlag(CriuPageState.Lazy) == lazy).Sum(e => (long)e.PageCount);

    /// <summary>Copies every image, with each <c>pages-*.img</c> replaced by a file of zeros of the same size.</summary>
    private static string CopyWithoutPageContents(string from, string to)
    {
        foreach (var file in Directory.GetFiles(from))
        {
            var target = Path.Combine(to, Path.GetFileName(file));
            if (Path.GetFileName(file).StartsWith("pages-", StringComparison.Ordinal))
            {
                using var zeros = File.Create(target);
                zeros.SetLength(new FileInfo(file).Length);
            }
            else
            {
                File.Copy(file, target);
            }
        }

        return to;
    }

    /// <summary>Serves <paramref name="requests"/> reads from <paramref name="inner"/>, then fails every one.</summary>
    private sealed class FailingAfter(ILazyPageSource inner, int requests) : ILazyPageSource
    {
        private int _reads;

        public ValueTask<int> ReadPagesAsync(int pid, ulong address, Memory<byte> destination, CancellationToken cancellationToken) =>
            Interlocked.Increment(ref _reads) > requests
                ? throw new LazyPageSourceException("the store is gone")
                : inner.ReadPagesAsync(pid, address, destination, cancellationToken);
    }

    /// <summary>Counts the pages read from each folder.</summary>
    private sealed class ReadsByFolder : IPageChunkVerifier
    {
        private readonly System.Collections.Concurrent.ConcurrentDictionary<string, long> _pages = new();

        public long Pages(string folder) => _pages.GetValueOrDefault(Path.GetFullPath(folder));

        public ValueTask VerifyAsync(string file, long offset, int length, CancellationToken cancellationToken)
        {
            _pages.AddOrUpdate(Path.GetDirectoryName(file)!, length / Page, (_, n) => n + (length / Page));
            return ValueTask.CompletedTask;
        }

        public override string ToString() => string.Join(", ", _pages.Select(p => $"{Path.GetFileName(p.Key)} {p.Value}"));
    }

    /// <summary>Refuses any range of <paramref name="file"/> whose bytes differ from <paramref name="sealedBytes"/>, naming the first changed byte.</summary>
    private sealed class ComparedWith(string file, byte[] sealedBytes) : IPageChunkVerifier
    {
        public ValueTask VerifyAsync(string file1, long offset, int length, CancellationToken cancellationToken)
        {
            if (file1 == file)
            {
                var now = new byte[length];
                using var handle = File.OpenHandle(file1);
                RandomAccess.Read(handle, now, offset);
                var differs = now.AsSpan().CommonPrefixLength(sealedBytes.AsSpan((int)offset, length));
                if (differs < length)
                {
                    throw new LazyPageSourceException($"{file1} at {offset + differs}: the byte differs from the sealed one");
                }
            }

            return ValueTask.CompletedTask;
        }
    }

    private sealed record LazyRun(LazyPageServer Server, CriuLazyPagesDaemon Daemon, CriuRestoreResult Restore) : IAsyncDisposable
    {
        public async ValueTask DisposeAsync()
        {
            await Daemon.DisposeAsync();
            await Server.DisposeAsync();
        }
    }
}
