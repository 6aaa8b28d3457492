using Microsoft.Extensions.Time.Testing;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Criu.Protocol;

namespace RebootlessUpdate.UnitTests.Criu;

/// <summary>
/// Where a DUMP's cancellation stops counting, against an in-memory peer: until criu is told to
/// go on at post-dump, a cancellation aborts the request and criu never hears "go on" (the tree
/// resumes); once told, criu ends the tree itself, so the request is let finish and its result is
/// returned rather than a cancellation that would claim the tree still runs, unless criu does not
/// finish within a short grace: then it is aborted after all.
/// </summary>
public class CriuCancellationTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);
    private string _images = null!;

    [SetUp]
    public void SetUp() => _images = Directory.CreateTempSubdirectory("rebootless-fake-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(_images, recursive: true);

    private static criu_resp Notify(string script) => new() { Type = criu_req_type.Notify, Success = true, Notify = new criu_notify { Script = script, Pid = 7 } };

    [Test]
    public async Task A_dump_asks_for_notifications_even_without_a_handler()
    {
        criu_req? seen = null;
        var client = FakeCriuPeer.Client(async peer =>
        {
            seen = await peer.ExpectAsync(criu_req_type.Dump);
            peer.Write(FakeCriuPeer.Ok(criu_req_type.Dump));
        });

        await client.DumpAsync(new CriuDumpOptions { ImagesDirectory = _images, Pid = 42 }).WaitAsync(Bound);

        Assert.That(seen!.Opts.NotifyScripts, Is.True, "criu waits at post-dump only when it notifies");
    }

    [Test]
    public async Task Cancelling_after_post_dump_was_answered_lets_the_dump_finish()
    {
        var answered = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        var cancelled = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var client = FakeCriuPeer.Client(async peer =>
        {
            await peer.ExpectAsync(criu_req_type.Dump);
            peer.Write(Notify("post-dump"));
            answered.SetResult((await peer.ExpectAsync(criu_req_type.Notify)).NotifySuccess);
            await cancelled.Task;
            peer.Write(FakeCriuPeer.Ok(criu_req_type.Dump));
        });
        using var cts = new CancellationTokenSource();

        var dump = client.DumpAsync(new CriuDumpOptions { ImagesDirectory = _images, Pid = 42 }, cts.Token);
        Assert.That(await answered.Task.WaitAsync(Bound), Is.True, "criu was told to go on");
        await cts.CancelAsync();
        cancelled.SetResult();

        var result = await dump.WaitAsync(Bound);
        Assert.That(result, Is.Not.Null, "the finished dump is reported, not a cancellation");
    }

    [Test]
    public async Task A_criu_that_does_not_finish_after_post_dump_is_aborted_when_the_grace_ends()
    {
        var answered = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var clock = new FakeTimeProvider();
        var client = FakeCriuPeer.Client(async peer =>
        {
            await peer.ExpectAsync(criu_req_type.Dump);
            peer.Write(Notify("post-dump"));
            await peer.ExpectAsync(criu_req_type.Notify);
            answered.SetResult();
            try
            {
                await peer.NextAsync(); // hangs, like a stopped criu, until the client aborts
            }
            catch (InvalidOperationException)
            {
            }
        }, options: new CriuClientOptions { TimeProvider = clock });
        using var cts = new CancellationTokenSource();

        var dump = client.DumpAsync(new CriuDumpOptions { ImagesDirectory = _images, Pid = 42 }, cts.Token);
        await answered.Task.WaitAsync(Bound);
        await cts.CancelAsync();
        clock.Advance(TimeSpan.FromSeconds(4));
        await Task.Delay(200);
        Assert.That(dump.IsCompleted, Is.False, "within the grace criu may still finish");

        clock.Advance(TimeSpan.FromSeconds(2));
        var e = Assert.CatchAsync<Exception>(async () => await dump.WaitAsync(Bound));
        Assert.That(e, Is.InstanceOf<OperationCanceledException>(), e!.ToString());
        Assert.That(((OperationCanceledException)e).CancellationToken, Is.EqualTo(cts.Token));
    }

    [Test]
    public async Task Cancelling_while_the_post_dump_handler_runs_never_tells_criu_to_go_on()
    {
        var inHandler = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var released = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var peerSaw = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var client = FakeCriuPeer.Client(async peer =>
        {
            await peer.ExpectAsync(criu_req_type.Dump);
            peer.Write(Notify("post-dump"));
            try
            {
                var answer = await peer.NextAsync();
                peerSaw.SetResult($"{answer.Type} success={answer.NotifySuccess}");
            }
            catch (InvalidOperationException)
            {
                peerSaw.SetResult("closed");
            }
        });
        using var cts = new CancellationTokenSource();

        var dump = client.DumpAsync(new CriuDumpOptions
        {
            ImagesDirectory = _images,
            Pid = 42,
            OnNotification = async (_, _) =>
            {
                inHandler.SetResult();
                // A handler that ignores the token: the client, not the handler, must hold the line.
                await released.Task.WaitAsync(Bound, CancellationToken.None);
            },
        }, cts.Token);
        await inHandler.Task.WaitAsync(Bound);
        await cts.CancelAsync();
        released.SetResult();

        var e = Assert.CatchAsync<Exception>(async () => await dump.WaitAsync(Bound));
        Assert.That(e, Is.InstanceOf<OperationCanceledException>(), e!.ToString());
        var saw = await peerSaw.Task.WaitAsync(Bound);
        Assert.Multiple(() =>
        {
            Assert.That(((OperationCanceledException)e).CancellationToken, Is.EqualTo(cts.Token));
            Assert.That(saw, Is.EqualTo("closed"), "no answer to post-dump: the connection was aborted");
        });
    }
}
