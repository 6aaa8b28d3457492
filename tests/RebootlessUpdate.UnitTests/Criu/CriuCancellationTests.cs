using Microsoft.Extensions.Time.Testing;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Criu.Protocol;

namespace RebootlessUpdate.UnitTests.Criu;

/// <summary>
/// How a DUMP's cancellation reaches criu, against an in-memory peer. Until criu is told to go on
/// at post-dump, a cancellation is told to criu at its next notification (answered with failure,
/// so criu cures its parasite and resumes the tree) and reported once criu answers; a criu that
/// never sends anything is killed by the request's watchdog, never by the cancellation. Once told to go on, criu ends the tree
/// itself, so the request is let finish and its result is returned rather than a cancellation
/// that would claim the tree still runs, unless criu does not finish within a short grace: then
/// it is aborted after all. A request that holds no tree (here FEATURE_CHECK) is aborted at once.
/// </summary>
public class CriuCancellationTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);
    private string _images = null!;

    [SetUp]
    public void SetUp() => _images = Directory.CreateTempSubdirectory("rebootless-fake-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(_images, recursive: true);

    private static criu_resp Failed(criu_req_type type) => new() { Type = type, Success = false, CrErrno = 0 };

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
            var answer = await peer.NextAsync();
            peerSaw.SetResult($"{answer.Type} success={answer.NotifySuccess}");
            peer.Write(Failed(criu_req_type.Dump));
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
            Assert.That(saw, Is.EqualTo("Notify success=False"), "post-dump answered with failure: criu resumes the tree");
        });
    }

    [Test]
    public async Task Cancelling_before_post_dump_stops_criu_at_its_next_notification_without_calling_the_handler()
    {
        var received = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var cancelled = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var answers = new List<bool>();
        var client = FakeCriuPeer.Client(async peer =>
        {
            await peer.ExpectAsync(criu_req_type.Dump);
            received.SetResult();
            await cancelled.Task; // criu is busy with the seized tree meanwhile
            peer.Write(Notify("post-dump"));
            answers.Add((await peer.ExpectAsync(criu_req_type.Notify)).NotifySuccess);
            // While criu winds down it may notify again (network-unlock): still no handler, still "no".
            peer.Write(Notify("network-unlock"));
            answers.Add((await peer.ExpectAsync(criu_req_type.Notify)).NotifySuccess);
            peer.Write(Failed(criu_req_type.Dump));
        });
        using var cts = new CancellationTokenSource();
        var handled = new List<string>();

        var dump = client.DumpAsync(new CriuDumpOptions
        {
            ImagesDirectory = _images,
            Pid = 42,
            OnNotification = (n, _) =>
            {
                handled.Add(n.Script);
                return ValueTask.CompletedTask;
            },
        }, cts.Token);
        await received.Task.WaitAsync(Bound);
        await cts.CancelAsync();
        await Task.Delay(200);
        Assert.That(dump.IsCompleted, Is.False, "criu is not killed while it holds the tree: it is told at its next message");
        cancelled.SetResult();

        var e = Assert.CatchAsync<Exception>(async () => await dump.WaitAsync(Bound));
        Assert.Multiple(() =>
        {
            Assert.That(e, Is.InstanceOf<OperationCanceledException>(), e!.ToString());
            Assert.That(((OperationCanceledException)e).CancellationToken, Is.EqualTo(cts.Token), "the caller's token");
            Assert.That(answers, Is.EqualTo(new[] { false, false }), "every notification after the cancellation is answered with failure");
            Assert.That(handled, Is.Empty, "no handler runs once the caller cancelled");
            Assert.That(e.InnerException, Is.TypeOf<CriuRequestFailedException>(), "criu's own answer is kept inside");
        });
    }

    [Test]
    public async Task A_criu_that_sends_nothing_after_a_cancellation_is_killed_by_its_watchdog_not_by_the_cancellation()
    {
        var received = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var peerSaw = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var clock = new FakeTimeProvider();
        var client = FakeCriuPeer.Client(async peer =>
        {
            await peer.ExpectAsync(criu_req_type.Dump);
            received.SetResult();
            try
            {
                await peer.NextAsync(); // a stuck criu: nothing until the client aborts
                peerSaw.SetResult("a message");
            }
            catch (InvalidOperationException)
            {
                peerSaw.SetResult("closed");
            }
        }, options: new CriuClientOptions { TimeProvider = clock, RequestTimeout = TimeSpan.FromMinutes(10) });
        using var cts = new CancellationTokenSource();

        var dump = client.DumpAsync(new CriuDumpOptions { ImagesDirectory = _images, Pid = 42 }, cts.Token);
        await received.Task.WaitAsync(Bound);
        clock.Advance(TimeSpan.FromMinutes(1));
        await cts.CancelAsync();
        clock.Advance(TimeSpan.FromMinutes(8));
        await Task.Delay(200);
        Assert.That(dump.IsCompleted, Is.False, "a dump under way may take as long as its watchdog allows: the cancellation waits for criu's word");

        clock.Advance(TimeSpan.FromMinutes(2));
        var e = Assert.CatchAsync<Exception>(async () => await dump.WaitAsync(Bound));
        Assert.Multiple(async () =>
        {
            Assert.That(e, Is.InstanceOf<OperationCanceledException>(), e!.ToString());
            Assert.That(((OperationCanceledException)e).CancellationToken, Is.EqualTo(cts.Token));
            Assert.That(e.InnerException, Is.TypeOf<CriuTimeoutException>(), "killed as hung, when its watchdog expired");
            Assert.That(await peerSaw.Task.WaitAsync(Bound), Is.EqualTo("closed"), "aborted");
        });
    }

    [Test]
    public async Task A_cancellation_after_criu_was_told_no_aborts_a_criu_that_does_not_act_on_it()
    {
        var answered = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        var peerSaw = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var client = FakeCriuPeer.Client(async peer =>
        {
            await peer.ExpectAsync(criu_req_type.Dump);
            peer.Write(Notify("post-dump"));
            answered.SetResult((await peer.ExpectAsync(criu_req_type.Notify)).NotifySuccess);
            try
            {
                await peer.NextAsync(); // told "no" at post-dump, but stuck: never resumes the tree nor answers
                peerSaw.SetResult("a message");
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
            OnNotification = (_, _) => throw new InvalidOperationException("vetoed"), // the pipeline's rollback at post-dump
        }, cts.Token);
        Assert.That(await answered.Task.WaitAsync(Bound), Is.False, "criu was told no");
        await Task.Delay(200);
        Assert.That(dump.IsCompleted, Is.False);
        await cts.CancelAsync();

        var e = Assert.CatchAsync<Exception>(async () => await dump.WaitAsync(Bound));
        Assert.Multiple(async () =>
        {
            Assert.That(e, Is.InstanceOf<OperationCanceledException>(), e!.ToString());
            Assert.That(((OperationCanceledException)e).CancellationToken, Is.EqualTo(cts.Token));
            Assert.That(await peerSaw.Task.WaitAsync(Bound), Is.EqualTo("closed"), "aborted at once: no parasite is inside a task any more");
        });
    }

    [Test]
    public async Task A_pre_dump_that_finishes_after_a_cancellation_reports_its_result()
    {
        var received = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var cancelled = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var client = FakeCriuPeer.Client(async peer =>
        {
            var req = await peer.NextAsync();
            if (req.Type == criu_req_type.FeatureCheck)
            {
                peer.Write(new criu_resp { Type = criu_req_type.FeatureCheck, Success = true, Features = new criu_features { MemTrack = true } });
                return;
            }

            Assert.That(req.Type, Is.EqualTo(criu_req_type.PreDump));
            received.SetResult();
            await cancelled.Task;
            peer.Write(FakeCriuPeer.Ok(criu_req_type.PreDump));
        });
        using var cts = new CancellationTokenSource();
        await using var session = await client.StartPreDumpSessionAsync().WaitAsync(Bound);

        var preDump = session.PreDumpAsync(new CriuDumpOptions { ImagesDirectory = _images, Pid = 42 }, cts.Token);
        await received.Task.WaitAsync(Bound);
        await cts.CancelAsync();
        await Task.Delay(200);
        Assert.That(preDump.IsCompleted, Is.False, "a pre-dump holds the tree too: criu is let reach its answer");
        cancelled.SetResult();

        Assert.That(await preDump.WaitAsync(Bound), Is.Not.Null, "criu finished and resumed the tree: its result counts");
    }

    [Test]
    public async Task A_request_that_holds_no_tree_is_aborted_at_once()
    {
        var received = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var client = FakeCriuPeer.Client(async peer =>
        {
            await peer.ExpectAsync(criu_req_type.FeatureCheck);
            received.SetResult();
            try
            {
                await peer.NextAsync();
            }
            catch (InvalidOperationException)
            {
            }
        });
        using var cts = new CancellationTokenSource();

        var check = client.CheckFeaturesAsync(cts.Token);
        await received.Task.WaitAsync(Bound);
        await cts.CancelAsync();

        var e = Assert.CatchAsync<Exception>(async () => await check.WaitAsync(Bound));
        Assert.That(e, Is.InstanceOf<OperationCanceledException>(), e!.ToString());
        Assert.That(((OperationCanceledException)e).CancellationToken, Is.EqualTo(cts.Token));
    }
}
