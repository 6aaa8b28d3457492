using RebootlessUpdate.Criu;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests;

/// <summary><see cref="LazyPageServer"/> against the testbed's real <c>criu lazy-pages --page-server</c>.</summary>
[NonParallelizable]
public class LazyPageServerCriuTests : CriuTestFixture
{
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
        await using var server = StartKillingOnFailure(source, workload, failures);
        await using var daemon = await Client.StartLazyPagesDaemonAsync(new CriuLazyPagesOptions
        {
            ImagesDirectory = daemonImages, WorkDirectory = work, LogLevel = 4, PageServer = server.Endpoint,
        });
        var restore = await Client.RestoreAsync(new CriuRestoreOptions { ImagesDirectory = images, WorkDirectory = work, LazyPages = true });
        workload.RootPid = restore.Pid;
        await server.WaitForConnectionAsync().WaitAsync(TimeSpan.FromSeconds(30));

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

        var restored = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var treeGoneBeforeClose = false;
        using var source = new CriuImagesPageSource(images);
        await using var server = LazyPageServer.Start(new FailingAfter(source, requests: 20), new LazyPageServerOptions
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
        TestContext.Out.WriteLine($"{e!.Message}; served {server.PagesServed} pages in {server.Requests} requests");

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
    internal static long CountLazyPages(string imagesDirectory) =>
        Directory.GetFiles(imagesDirectory, "pagemap-*.img")
            .Select(f => CriuPagemap.Read(imagesDirectory, int.Parse(Path.GetFileName(f)["pagemap-".Length..^".img".Length], System.Globalization.CultureInfo.InvariantCulture)))
            .SelectMany(m => m.Entries).Where(e => e.Flags.HasFlag(CriuPageState.Lazy)).Sum(e => (long)e.PageCount);

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
}
