using Microsoft.Extensions.Time.Testing;
using Mono.Unix.Native;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Criu.Protocol;

namespace RebootlessUpdate.UnitTests.Criu;

/// <summary>
/// The request watchdog and cancellation against an in-memory peer that stops answering,
/// on a fake clock: criu's time is counted, the handler's is not, and the outcome is typed.
/// </summary>
public class CriuWatchdogTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);
    private string _images = null!;
    private FakeTimeProvider _clock = null!;

    [SetUp]
    public void SetUp()
    {
        _images = Directory.CreateTempSubdirectory("rebootless-fake-").FullName;
        _clock = new FakeTimeProvider();
    }

    [TearDown]
    public void TearDown() => Directory.Delete(_images, recursive: true);

    private CriuClientOptions Options(TimeSpan timeout) => new() { RequestTimeout = timeout, TimeProvider = _clock };

    /// <summary>A peer that takes one request of <paramref name="type"/>, says so, and never answers.</summary>
    private static Func<FakeCriuPeer, Task> Silent(criu_req_type type, TaskCompletionSource received) => async peer =>
    {
        await peer.ExpectAsync(type);
        received.SetResult();
        try
        {
            await peer.NextAsync(); // until the client gives up and closes
        }
        catch (InvalidOperationException)
        {
        }
    };

    [Test]
    public async Task A_peer_that_stops_answering_fails_the_request_with_a_timeout_naming_request_and_limit()
    {
        var received = new TaskCompletionSource();
        var client = FakeCriuPeer.Client(Silent(criu_req_type.FeatureCheck, received), options: Options(TimeSpan.FromSeconds(30)));

        var request = client.CheckFeaturesAsync();
        await received.Task.WaitAsync(Bound);
        _clock.Advance(TimeSpan.FromSeconds(29));
        await Task.Delay(200);
        Assert.That(request.IsCompleted, Is.False, "29 s of 30 used");

        _clock.Advance(TimeSpan.FromSeconds(2));
        var e = Assert.ThrowsAsync<CriuTimeoutException>(async () => await request.WaitAsync(Bound));

        Assert.Multiple(() =>
        {
            Assert.That(e!.Request, Is.EqualTo(CriuRequestType.FeatureCheck));
            Assert.That(e.Timeout, Is.EqualTo(TimeSpan.FromSeconds(30)));
            Assert.That(e.WorkerPid, Is.Null, "not a swrk worker");
            Assert.That(e.Message, Does.StartWith("criu FEATURE_CHECK timed out after 30 s: fake criu did not finish it; the connection was shut down").And.Contain("--criu-timeout"));
        });
    }

    [Test]
    public async Task Time_in_a_notification_handler_is_not_counted_but_criu_time_before_and_after_it_is()
    {
        var inHandler = new TaskCompletionSource();
        var release = new TaskCompletionSource();
        var answered = new TaskCompletionSource();
        var client = FakeCriuPeer.Client(async peer =>
        {
            await peer.ExpectAsync(criu_req_type.Dump);
            peer.Write(new criu_resp { Type = criu_req_type.Notify, Success = true, Notify = new criu_notify { Script = "post-dump" } });
            await peer.ExpectAsync(criu_req_type.Notify);
            answered.SetResult();
            try
            {
                await peer.NextAsync();
            }
            catch (InvalidOperationException)
            {
            }
        }, options: Options(TimeSpan.FromSeconds(10)));
        var handlerCancelled = false;

        var dump = client.DumpAsync(new CriuDumpOptions
        {
            ImagesDirectory = _images,
            Pid = 42,
            OnNotification = async (_, ct) =>
            {
                inHandler.SetResult();
                await release.Task;
                handlerCancelled = ct.IsCancellationRequested;
            },
        });

        await inHandler.Task.WaitAsync(Bound);
        // The clock ran a little while criu had the turn (the request until the notification); hold the handler for an hour.
        _clock.Advance(TimeSpan.FromHours(1));
        await Task.Delay(200);
        Assert.That(dump.IsCompleted, Is.False, "an hour in the handler does not count");
        release.SetResult();
        await answered.Task.WaitAsync(Bound);

        _clock.Advance(TimeSpan.FromSeconds(9));
        await Task.Delay(200);
        Assert.That(dump.IsCompleted, Is.False, "9 s of criu's 10");
        _clock.Advance(TimeSpan.FromSeconds(2));

        Assert.That(async () => await dump.WaitAsync(Bound), Throws.TypeOf<CriuTimeoutException>().With.Property(nameof(CriuTimeoutException.Request)).EqualTo(CriuRequestType.Dump));
        Assert.That(handlerCancelled, Is.False);
    }

    [Test]
    public async Task A_request_timeout_on_the_options_overrides_the_clients()
    {
        var received = new TaskCompletionSource();
        var client = FakeCriuPeer.Client(Silent(criu_req_type.Dump, received), options: Options(TimeSpan.FromMinutes(10)));

        var dump = client.DumpAsync(new CriuDumpOptions { ImagesDirectory = _images, Pid = 42, RequestTimeout = TimeSpan.FromSeconds(2) });
        await received.Task.WaitAsync(Bound);
        _clock.Advance(TimeSpan.FromSeconds(3));

        Assert.That(async () => await dump.WaitAsync(Bound), Throws.TypeOf<CriuTimeoutException>().With.Property(nameof(CriuTimeoutException.Timeout)).EqualTo(TimeSpan.FromSeconds(2)));
    }

    [Test]
    public async Task An_infinite_timeout_never_fires()
    {
        var received = new TaskCompletionSource();
        var client = FakeCriuPeer.Client(Silent(criu_req_type.FeatureCheck, received), options: Options(Timeout.InfiniteTimeSpan));
        using var cts = new CancellationTokenSource();

        var request = client.CheckFeaturesAsync(cts.Token);
        await received.Task.WaitAsync(Bound);
        _clock.Advance(TimeSpan.FromDays(365));
        await Task.Delay(200);
        Assert.That(request.IsCompleted, Is.False);
        await cts.CancelAsync();
        Assert.That(async () => await request.WaitAsync(Bound), Throws.InstanceOf<OperationCanceledException>());
    }

    [Test]
    public void Timeouts_that_are_not_positive_are_refused_before_anything_runs()
    {
        Assert.Multiple(() =>
        {
            Assert.That(() => new CriuClient(new CriuClientOptions { RequestTimeout = TimeSpan.Zero }), Throws.InstanceOf<ArgumentOutOfRangeException>());
            Assert.That(() => new CriuClient(new CriuClientOptions { RequestTimeout = TimeSpan.FromDays(400) }), Throws.InstanceOf<ArgumentOutOfRangeException>());
            var client = FakeCriuPeer.Client(_ => Task.CompletedTask);
            Assert.That(() => client.DumpAsync(new CriuDumpOptions { ImagesDirectory = _images, Pid = 42, RequestTimeout = TimeSpan.FromSeconds(-5) }),
                Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("RequestTimeout"));
        });
    }

    [Test]
    public async Task Check_gives_criu_a_private_0700_folder_and_removes_it_afterwards()
    {
        string? seen = null;
        Stat stat = default;
        var client = FakeCriuPeer.Client(async peer =>
        {
            var req = await peer.ExpectAsync(criu_req_type.Check);
            // The descriptor is ours (the fake runs in this process): see what it names.
            seen = new FileInfo($"/proc/self/fd/{req.Opts.ImagesDirFd}").LinkTarget;
            Assert.That(Syscall.stat(seen!, out stat), Is.Zero);
            Assert.That(req.Opts.LogFile, Is.EqualTo("check.log"));
            peer.Write(FakeCriuPeer.Ok(criu_req_type.Check));
        });

        await client.CheckAsync();

        Assert.Multiple(() =>
        {
            Assert.That(seen, Is.Not.EqualTo(Path.GetTempPath().TrimEnd('/')), "not the shared temp folder itself");
            Assert.That(Path.GetDirectoryName(seen), Is.EqualTo(Path.GetTempPath().TrimEnd('/')));
            Assert.That(Path.GetFileName(seen), Does.StartWith("rebootless-criu-check-"));
            Assert.That((uint)stat.st_mode & 0xFFF, Is.EqualTo(0x1C0), "mode 0700");
            Assert.That(stat.st_uid, Is.EqualTo(Syscall.geteuid()));
            Assert.That(Directory.Exists(seen), Is.False, "removed after the request");
        });
    }
}
