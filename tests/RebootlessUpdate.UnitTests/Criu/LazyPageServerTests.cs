using System.Net.Sockets;
using RebootlessUpdate.Criu;

namespace RebootlessUpdate.UnitTests.Criu;

/// <summary>
/// <see cref="LazyPageServer"/> against a fake <c>criu lazy-pages</c> daemon over real TCP: replies in CRIU's
/// format and order, and on every way a session can fail, the failure handler runs before the daemon sees the
/// connection close (a daemon let go leaves its tree to zero pages).
/// </summary>
public class LazyPageServerTests
{
    private const ulong Heap = 0x7f12_3456_0000;
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);

    [Test]
    public async Task A_get_is_answered_with_criu_s_reply_header_and_the_source_s_pages()
    {
        await using var server = LazyPageServer.Start(new PatternPageSource());
        using var daemon = await FakeLazyPagesDaemon.ConnectAsync(server.Endpoint);

        await daemon.SendGetAsync(42, Heap, 3);
        var reply = await daemon.ReadReplyAsync().WaitAsync(Bound);

        Assert.Multiple(() =>
        {
            Assert.That(server.Endpoint.Address, Is.EqualTo("127.0.0.1"));
            Assert.That(reply.Command, Is.EqualTo(0x40006u), "PS_IOV_ADD_F with PE_PRESENT in the high bits");
            Assert.That(reply.Pages, Is.EqualTo(3u));
            Assert.That(reply.Address, Is.EqualTo(Heap), "echoed exactly");
            Assert.That(reply.Pid, Is.EqualTo(42ul), "dst_id echoed exactly");
            Assert.That(reply.Data, Is.EqualTo(PatternPageSource.Expected(42, Heap, 3)));
            Assert.That(server.Requests, Is.EqualTo(1));
            Assert.That(server.PagesServed, Is.EqualTo(3));
        });
    }

    [Test]
    public async Task Pipelined_gets_are_answered_one_whole_reply_at_a_time_in_request_order()
    {
        await using var server = LazyPageServer.Start(new PatternPageSource());
        using var daemon = await FakeLazyPagesDaemon.ConnectAsync(server.Endpoint);
        (int Pid, ulong Address, uint Pages)[] asked = [(7, Heap + 0x10000, 16), (7, Heap, 1), (9, Heap + 0x5000, 1024), (7, Heap + 0x1000, 2)];

        await daemon.WriteAsync([.. asked.Select(a => FakeLazyPagesDaemon.Header(FakeLazyPagesDaemon.Get, a.Pages, a.Address, (ulong)a.Pid))]);
        foreach (var (pid, address, pages) in asked)
        {
            var reply = await daemon.ReadReplyAsync().WaitAsync(Bound);
            Assert.That((reply.Pid, reply.Address, reply.Pages), Is.EqualTo(((ulong)pid, address, pages)));
            Assert.That(reply.Data, Is.EqualTo(PatternPageSource.Expected(pid, address, (int)pages)));
        }

        Assert.That(server.PagesServed, Is.EqualTo(16 + 1 + 1024 + 2));
    }

    [Test]
    public async Task A_header_that_arrives_in_pieces_is_read_whole()
    {
        await using var server = LazyPageServer.Start(new PatternPageSource());
        using var daemon = await FakeLazyPagesDaemon.ConnectAsync(server.Endpoint);
        var header = FakeLazyPagesDaemon.Header(FakeLazyPagesDaemon.Get, 2, Heap, 42);

        foreach (var piece in header.Chunk(5))
        {
            await daemon.WriteAsync(piece);
            await Task.Delay(20);
        }

        var reply = await daemon.ReadReplyAsync().WaitAsync(Bound);
        Assert.That((reply.Pid, reply.Address, reply.Pages), Is.EqualTo((42ul, Heap, 2u)));
    }

    [Test]
    public async Task A_source_that_gives_fewer_pages_than_asked_shrinks_the_reply_s_nr_pages()
    {
        await using var server = LazyPageServer.Start(new PatternPageSource { PagesPerRead = 3 });
        using var daemon = await FakeLazyPagesDaemon.ConnectAsync(server.Endpoint);

        await daemon.SendGetAsync(42, Heap, 8);
        await daemon.SendGetAsync(42, Heap + (3 * 4096), 5);
        var first = await daemon.ReadReplyAsync().WaitAsync(Bound);
        var second = await daemon.ReadReplyAsync().WaitAsync(Bound);

        Assert.Multiple(() =>
        {
            Assert.That((first.Address, first.Pages), Is.EqualTo((Heap, 3u)), "a shorter prefix, which the daemon accepts");
            Assert.That(first.Data, Is.EqualTo(PatternPageSource.Expected(42, Heap, 3)));
            Assert.That((second.Address, second.Pages), Is.EqualTo((Heap + (3 * 4096), 3u)), "the stream stayed in step");
            Assert.That(server.PagesServed, Is.EqualTo(6));
        });
    }

    [Test]
    public async Task Close_is_answered_with_status_0_and_completes_with_the_session_s_counts()
    {
        await using var server = LazyPageServer.Start(new PatternPageSource());
        using var daemon = await FakeLazyPagesDaemon.ConnectAsync(server.Endpoint);
        await server.WaitForConnectionAsync().WaitAsync(Bound);

        await daemon.SendGetAsync(42, Heap, 1);
        await daemon.SendGetAsync(43, Heap, 4);
        await daemon.ReadReplyAsync();
        await daemon.ReadReplyAsync();
        var status = await daemon.CloseAsync().WaitAsync(Bound);
        var result = await server.Completion.WaitAsync(Bound);

        Assert.Multiple(() =>
        {
            Assert.That(status, Is.Zero);
            Assert.That(result.Requests, Is.EqualTo(2));
            Assert.That(result.PagesServed, Is.EqualTo(5));
            Assert.That(result.BytesServed, Is.EqualTo(5 * 4096));
            Assert.That(result.Connected, Is.GreaterThan(TimeSpan.Zero));
        });
        Assert.That(await daemon.ReadUntilClosedAsync().WaitAsync(Bound), Is.Zero, "nothing after the status");
    }

    public static IEnumerable<TestCaseData> Failures()
    {
        static TestCaseData Case(string name, LazyPageServerFailureKind kind, string message, Func<FakeLazyPagesDaemon, Task> act) =>
            new TestCaseData(kind, message, act).SetArgDisplayNames(name);

        yield return Case("unknown command", LazyPageServerFailureKind.ProtocolViolation, "the daemon sent unknown command 0x99",
            d => d.WriteAsync(FakeLazyPagesDaemon.Header(0x99, 1, Heap, 42)));
        yield return Case("GET for 0 pages", LazyPageServerFailureKind.ProtocolViolation, "a GET for 0 pages",
            d => d.SendGetAsync(42, Heap, 0));
        yield return Case("GET for too many pages", LazyPageServerFailureKind.ProtocolViolation, "a GET for 1025 pages",
            d => d.SendGetAsync(42, Heap, 1025));
        yield return Case("GET off a page boundary", LazyPageServerFailureKind.ProtocolViolation, "not on a page boundary",
            d => d.SendGetAsync(42, Heap + 12, 1));
        yield return Case("EOF without CLOSE", LazyPageServerFailureKind.Disconnected, "without PS_IOV_CLOSE; requests answered: 1, pages served: 1",
            d => { d.HangUp(); return Task.CompletedTask; });
        yield return Case("EOF inside a header", LazyPageServerFailureKind.Disconnected, "in the middle of a request header (10 of 24 bytes)",
            async d => { await d.WriteAsync(FakeLazyPagesDaemon.Header(FakeLazyPagesDaemon.Get, 1, Heap, 42)[..10]); d.HangUp(); });
        yield return Case("source throws", LazyPageServerFailureKind.SourceFailed, $"pid 66 at 0x{Heap:x} (1 pages): no pagemap covers it",
            d => d.SendGetAsync(66, Heap, 1));
    }

    [TestCaseSource(nameof(Failures))]
    public async Task A_failed_session_calls_the_failure_handler_before_the_daemon_sees_the_connection_close(
        LazyPageServerFailureKind kind, string message, Func<FakeLazyPagesDaemon, Task> act)
    {
        var source = new PatternPageSource
        {
            BeforeRead = (pid, _, _) => pid == 66 ? throw new LazyPageSourceException("no pagemap covers it") : Task.CompletedTask,
        };
        var handled = new List<LazyPageServerFailure>();
        var handlerDone = false;
        await using var server = LazyPageServer.Start(source, new LazyPageServerOptions
        {
            OnFailure = async failure =>
            {
                handled.Add(failure);
                await Task.Delay(200); // killing a tree takes a while; the daemon must not be let go meanwhile
                handlerDone = true;
            },
        });
        using var daemon = await FakeLazyPagesDaemon.ConnectAsync(server.Endpoint);

        await daemon.SendGetAsync(42, Heap, 1);
        await daemon.ReadReplyAsync().WaitAsync(Bound);
        await act(daemon);
        await daemon.ReadUntilClosedAsync().WaitAsync(Bound);
        var closedAfterHandler = handlerDone;
        var e = Assert.ThrowsAsync<LazyPageServerException>(() => server.Completion.WaitAsync(Bound));

        TestContext.Out.WriteLine(e!.Message);
        Assert.Multiple(() =>
        {
            Assert.That(closedAfterHandler, Is.True, "the connection closed only after the handler returned");
            Assert.That(handled, Has.Count.EqualTo(1));
            Assert.That(handled[0].Kind, Is.EqualTo(kind));
            Assert.That(handled[0].Exception, Is.SameAs(e));
            Assert.That(e.Kind, Is.EqualTo(kind));
            Assert.That(e.Message, Does.Contain(message));
        });
        if (kind == LazyPageServerFailureKind.SourceFailed)
        {
            Assert.Multiple(() =>
            {
                Assert.That(e.Pid, Is.EqualTo(66));
                Assert.That(e.Address, Is.EqualTo(Heap));
                Assert.That(e.InnerException, Is.InstanceOf<LazyPageSourceException>());
            });
        }
    }

    [Test]
    public async Task A_failure_handler_that_throws_still_lets_the_session_fail_and_adds_its_exception()
    {
        await using var server = LazyPageServer.Start(new PatternPageSource(), new LazyPageServerOptions
        {
            OnFailure = _ => throw new InvalidOperationException("could not kill the tree"),
        });
        using var daemon = await FakeLazyPagesDaemon.ConnectAsync(server.Endpoint);

        daemon.HangUp();
        await daemon.ReadUntilClosedAsync().WaitAsync(Bound);
        var completion = server.Completion;
        Assert.ThrowsAsync<LazyPageServerException>(() => completion.WaitAsync(Bound));

        Assert.That(completion.Exception!.InnerExceptions.Select(x => x.GetType()),
            Is.EqualTo(new[] { typeof(LazyPageServerException), typeof(InvalidOperationException) }));
    }

    [Test]
    public async Task A_second_connection_is_not_served_and_the_first_goes_on()
    {
        await using var server = LazyPageServer.Start(new PatternPageSource());
        using var daemon = await FakeLazyPagesDaemon.ConnectAsync(server.Endpoint);
        await server.WaitForConnectionAsync().WaitAsync(Bound);

        var served = 0;
        try
        {
            using var stranger = await FakeLazyPagesDaemon.ConnectAsync(server.Endpoint);
            await stranger.SendGetAsync(42, Heap, 1);
            served = await stranger.ReadUntilClosedAsync().WaitAsync(Bound);
        }
        catch (SocketException e)
        {
            TestContext.Out.WriteLine($"refused: {e.SocketErrorCode}");
        }

        await daemon.SendGetAsync(42, Heap, 1);
        var reply = await daemon.ReadReplyAsync().WaitAsync(Bound);
        Assert.Multiple(() =>
        {
            Assert.That(served, Is.Zero, "the second connection got not a byte");
            Assert.That(reply.Data, Is.EqualTo(PatternPageSource.Expected(42, Heap, 1)));
            Assert.That(server.Requests, Is.EqualTo(1));
        });
    }

    [Test]
    public async Task Disposing_while_a_get_is_in_flight_returns_promptly_after_the_failure_handler()
    {
        var reading = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var source = new PatternPageSource
        {
            BeforeRead = async (_, _, token) =>
            {
                reading.TrySetResult();
                await Task.Delay(Timeout.Infinite, token); // a store that never answers, but honours cancellation
            },
        };
        var handled = new List<LazyPageServerFailureKind>();
        var server = LazyPageServer.Start(source, new LazyPageServerOptions
        {
            OnFailure = f => { handled.Add(f.Kind); return ValueTask.CompletedTask; },
        });
        using var daemon = await FakeLazyPagesDaemon.ConnectAsync(server.Endpoint);
        await daemon.SendGetAsync(42, Heap, 1);
        await reading.Task.WaitAsync(Bound);

        await server.DisposeAsync().AsTask().WaitAsync(Bound);

        var e = Assert.ThrowsAsync<LazyPageServerException>(() => server.Completion.WaitAsync(Bound));
        var received = await daemon.ReadUntilClosedAsync().WaitAsync(Bound);
        Assert.Multiple(() =>
        {
            Assert.That(handled, Is.EqualTo(new[] { LazyPageServerFailureKind.Stopped }));
            Assert.That(e!.Kind, Is.EqualTo(LazyPageServerFailureKind.Stopped));
            Assert.That(received, Is.Zero, "no partial reply");
        });
    }

    [Test]
    public async Task Disposing_before_the_daemon_connects_fails_the_wait_without_calling_the_handler()
    {
        var called = false;
        var server = LazyPageServer.Start(new PatternPageSource(), new LazyPageServerOptions
        {
            OnFailure = _ => { called = true; return ValueTask.CompletedTask; },
        });
        var waiting = server.WaitForConnectionAsync();

        await server.DisposeAsync().AsTask().WaitAsync(Bound);

        var e = Assert.ThrowsAsync<LazyPageServerException>(() => waiting.WaitAsync(Bound));
        Assert.Multiple(() =>
        {
            Assert.That(e!.Kind, Is.EqualTo(LazyPageServerFailureKind.Stopped));
            Assert.That(e.Message, Does.Contain("before the daemon connected"));
            Assert.That(server.Completion.IsFaulted, Is.True);
            Assert.That(called, Is.False, "no daemon, no tree depending on it");
        });
        Assert.ThrowsAsync<SocketException>(() => FakeLazyPagesDaemon.ConnectAsync(server.Endpoint), "the port is closed");
    }

    [Test]
    public void A_lazy_pages_daemon_with_a_page_server_of_port_0_is_refused_before_criu_runs()
    {
        var images = Directory.CreateTempSubdirectory("rebootless-lazy-").FullName;
        try
        {
            var options = new CriuLazyPagesOptions { ImagesDirectory = images, PageServer = new CriuPageServerEndpoint("127.0.0.1", 0) };
            var e = Assert.ThrowsAsync<ArgumentException>(() => CriuLazyPagesDaemon.StartAsync(new CriuClientOptions { CriuPath = "/nonexistent/criu" }, options));
            Assert.That(e!.ParamName, Is.EqualTo("PageServer"));
        }
        finally
        {
            Directory.Delete(images, recursive: true);
        }
    }
}
