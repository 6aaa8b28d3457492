using System.Buffers;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace RebootlessUpdate.Criu;

/// <summary>
/// Our own page server for one lazily restored tree: it speaks CRIU's page-server protocol to a
/// <c>criu lazy-pages --page-server</c> daemon (see <see cref="CriuLazyPagesOptions.PageServer"/>) and answers
/// its PS_IOV_GET requests from an <see cref="ILazyPageSource"/>, in request order, until the daemon sends
/// PS_IOV_CLOSE once the tree holds every page. It listens on 127.0.0.1 at a port of the kernel's choosing and
/// serves exactly one connection (a GET names only a pid, so one server belongs to one tree): once the daemon
/// has connected, the port is closed. A connection from a socket of another user than this process's is closed
/// at once and the server waits on for the daemon. If it cannot serve to the end it calls
/// <see cref="LazyPageServerOptions.OnFailure"/> before it lets the daemon go.
/// </summary>
public sealed partial class LazyPageServer : IAsyncDisposable
{
    /// <summary>
    /// The most pages one GET may ask for: CRIU's MAX_XFER_LEN (4 MiB), the cap of the daemon's background
    /// transfers; a fault asks for one page (docs/research/issue-16-page-server.md §1.5).
    /// </summary>
    internal const int MaxPagesPerRequest = 1024;

    private readonly ILazyPageSource _source;
    private readonly LazyPageServerOptions _options;
    private readonly ILogger _logger;
    private readonly Socket _listener;
    private readonly CancellationTokenSource _stop = new();
    private readonly TaskCompletionSource _connected = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource<LazyPageServerResult> _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Task _run;
    private long _requests;
    private long _pagesServed;
    private int _disposed;

    private LazyPageServer(ILazyPageSource source, LazyPageServerOptions options, Socket listener)
    {
        _source = source;
        _options = options;
        _logger = options.Logger ?? NullLogger.Instance;
        _listener = listener;
        Endpoint = new CriuPageServerEndpoint(IPAddress.Loopback.ToString(), ((IPEndPoint)listener.LocalEndPoint!).Port);
        _run = Task.Run(RunAsync);
    }

    /// <summary>Where the daemon is to connect: give it to <see cref="CriuLazyPagesOptions.PageServer"/>.</summary>
    public CriuPageServerEndpoint Endpoint { get; }

    /// <summary>The GET requests answered so far.</summary>
    public long Requests => Volatile.Read(ref _requests);

    /// <summary>The pages sent so far.</summary>
    public long PagesServed => Volatile.Read(ref _pagesServed);

    /// <summary>
    /// The session's end: a result once the daemon sent PS_IOV_CLOSE (it had every page delivered); otherwise it
    /// faults with a <see cref="LazyPageServerException"/> that says what failed, after
    /// <see cref="LazyPageServerOptions.OnFailure"/> returned (if that threw too, its exception is the task's second one).
    /// </summary>
    public Task<LazyPageServerResult> Completion => _completion.Task;

    /// <summary>Starts listening; the daemon may connect as soon as this returns.</summary>
    /// <exception cref="SocketException">No port could be opened on 127.0.0.1.</exception>
    public static LazyPageServer Start(ILazyPageSource source, LazyPageServerOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(source);
        options ??= new LazyPageServerOptions();
        options.Validate();
        var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            listener.Listen(1);
        }
        catch
        {
            listener.Dispose();
            throw;
        }

        return new LazyPageServer(source, options, listener);
    }

    /// <summary>
    /// Completes once the daemon has connected: it does so only after the restore handed it every task's
    /// userfaultfd, so a restored tree should be held until then.
    /// </summary>
    /// <exception cref="LazyPageServerException">The server was disposed before the daemon connected.</exception>
    public Task WaitForConnectionAsync(CancellationToken cancellationToken = default) => _connected.Task.WaitAsync(cancellationToken);

    /// <summary>
    /// Stops the server. A session still running is a failure (<see cref="LazyPageServerFailureKind.Stopped"/>):
    /// <see cref="LazyPageServerOptions.OnFailure"/> runs first, then the connection closes. Returns once the
    /// session has ended, provided the source honours its cancellation token.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            await _stop.CancelAsync().ConfigureAwait(false);
        }

        await _run.ConfigureAwait(false);
        _stop.Dispose();
    }

    private async Task RunAsync()
    {
        Socket connection;
        try
        {
            while (true)
            {
                connection = await _listener.AcceptAsync(_stop.Token).ConfigureAwait(false);
                if (connection.LocalEndPoint is IPEndPoint ours && connection.RemoteEndPoint is IPEndPoint peer && LoopbackPeer.IsOurUser(ours, peer))
                {
                    break;
                }

                // Any local user can connect to 127.0.0.1: a stranger taken for the daemon would close the port on
                // the real one (its tree then faults in zero pages) and could read the tree's memory with GETs.
                Log.StrangerRefused(_logger, Endpoint.Port, connection.RemoteEndPoint?.ToString() ?? "?");
                connection.Dispose();
            }
        }
        catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
        {
            var stopped = new LazyPageServerException(LazyPageServerFailureKind.Stopped,
                $"the page server on port {Endpoint.Port} was stopped before the daemon connected", e);
            _connected.TrySetException(stopped);
            _completion.TrySetException(stopped);
            return;
        }
        finally
        {
            // Exactly one connection: later ones are refused, so no stranger is served this tree's pages.
            _listener.Dispose();
        }

        using var stream = new NetworkStream(connection, ownsSocket: true);
        connection.NoDelay = true;
        var since = _options.TimeProvider.GetTimestamp();
        Log.Connected(_logger, Endpoint.Port, connection.RemoteEndPoint?.ToString() ?? "?");
        _connected.TrySetResult();
        LazyPageServerException failure;
        try
        {
            await ServeAsync(stream, _stop.Token).ConfigureAwait(false);
            var result = new LazyPageServerResult(Requests, PagesServed, _options.TimeProvider.GetElapsedTime(since));
            Log.Closed(_logger, Endpoint.Port, result.Requests, result.PagesServed, result.Connected.TotalSeconds);
            _completion.TrySetResult(result);
            return;
        }
        catch (LazyPageServerException e)
        {
            failure = e;
        }
        catch (Exception e)
        {
            // The connection broke (EOF is handled above), the server was disposed, or a bug: the daemon is
            // let go all the same, so the tree must be dealt with first.
            failure = _stop.IsCancellationRequested
                ? new LazyPageServerException(LazyPageServerFailureKind.Stopped,
                    $"the page server was stopped while serving the daemon ({Requests} requests, {PagesServed} pages served)", e)
                : new LazyPageServerException(LazyPageServerFailureKind.Disconnected,
                    $"the connection to the daemon broke after {Requests} requests: {e.Message}", e);
        }

        Log.Failed(_logger, Endpoint.Port, failure.Kind, failure.Message);
        var handlerError = await NotifyFailureAsync(failure).ConfigureAwait(false);
        _completion.TrySetException(handlerError is null ? [failure] : [failure, handlerError]);

        // Only now does the connection close (leaving this method): the tree was dealt with first.
    }

    /// <summary>Runs the caller's failure handler; returns what it threw, if anything (the session fails either way).</summary>
    private async Task<Exception?> NotifyFailureAsync(LazyPageServerException failure)
    {
        if (_options.OnFailure is not { } onFailure)
        {
            return null;
        }

        try
        {
            await onFailure(new LazyPageServerFailure(failure)).ConfigureAwait(false);
            return null;
        }
        catch (Exception e)
        {
            Log.FailureHandlerFailed(_logger, Endpoint.Port, e);
            return e;
        }
    }

    /// <summary>Answers requests one at a time, in the order they came, until PS_IOV_CLOSE has been answered.</summary>
    private async Task ServeAsync(NetworkStream stream, CancellationToken cancellationToken)
    {
        var header = new byte[PageServerIov.Size];
        while (true)
        {
            var got = await stream.ReadAtLeastAsync(header, header.Length, throwOnEndOfStream: false, cancellationToken).ConfigureAwait(false);
            if (got < header.Length)
            {
                throw new LazyPageServerException(LazyPageServerFailureKind.Disconnected, got == 0
                    ? $"the daemon closed the connection without PS_IOV_CLOSE; requests answered: {Requests}, pages served: {PagesServed}"
                    : $"the daemon closed the connection in the middle of a request header ({got} of {header.Length} bytes)");
            }

            var request = PageServerIov.Read(header);
            switch (request.Command)
            {
                case PageServerIov.Get:
                    await AnswerGetAsync(stream, request, cancellationToken).ConfigureAwait(false);
                    break;
                case PageServerIov.Close or PageServerIov.ForceClose:
                    // The status CRIU's disconnect_from_page_server waits for: 0, fine.
                    await stream.WriteAsync(new byte[sizeof(int)], cancellationToken).ConfigureAwait(false);
                    return;
                default:
                    throw new LazyPageServerException(LazyPageServerFailureKind.ProtocolViolation,
                        $"the daemon sent unknown command 0x{request.Command:x} (nr_pages {request.PageCount}, vaddr 0x{request.Address:x}, dst_id {request.DestinationId})");
            }
        }
    }

    private async Task AnswerGetAsync(NetworkStream stream, PageServerIov request, CancellationToken cancellationToken)
    {
        var (pid, pages) = Check(request);
        const int pageSize = ILazyPageSource.PageSize;
        var buffer = ArrayPool<byte>.Shared.Rent(PageServerIov.Size + (pages * pageSize));
        try
        {
            int served;
            try
            {
                served = await _source.ReadPagesAsync(pid, request.Address, buffer.AsMemory(PageServerIov.Size, pages * pageSize), cancellationToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                throw;
            }
            catch (Exception e)
            {
                throw new LazyPageServerException(LazyPageServerFailureKind.SourceFailed,
                    $"pid {pid} at 0x{request.Address:x} ({pages} pages): {e.Message}", e, pid, request.Address);
            }

            if (served < 1 || served > pages)
            {
                throw new LazyPageServerException(LazyPageServerFailureKind.SourceFailed,
                    $"pid {pid} at 0x{request.Address:x}: the source gave {served} pages for a request of {pages}", null, pid, request.Address);
            }

            // Fewer pages than asked is allowed: the daemon shrinks its read to the reply's nr_pages. The address and
            // pid must come back exactly, or the daemon drops the data (uffd_io_complete matches on them).
            PageServerIov.PagesReply(request, served).Write(buffer);
            await stream.WriteAsync(buffer.AsMemory(0, PageServerIov.Size + (served * pageSize)), cancellationToken).ConfigureAwait(false);
            Interlocked.Increment(ref _requests);
            Interlocked.Add(ref _pagesServed, served);
            Log.Served(_logger, pid, request.Address, pages, served);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>The pid and page count of a GET, or a protocol violation: the daemon never asks for what this refuses.</summary>
    private static (int Pid, int Pages) Check(PageServerIov request)
    {
        string? wrong = request switch
        {
            { PageCount: 0 } => "a GET for 0 pages",
            { PageCount: > MaxPagesPerRequest } => $"a GET for {request.PageCount} pages (CRIU asks for {MaxPagesPerRequest} at most)",
            { DestinationId: 0 or > int.MaxValue } => $"a GET for pid {request.DestinationId}",
            _ when request.Address % ILazyPageSource.PageSize != 0 => $"a GET at 0x{request.Address:x}, not on a page boundary",
            _ => null,
        };
        return wrong is null
            ? ((int)request.DestinationId, (int)request.PageCount)
            : throw new LazyPageServerException(LazyPageServerFailureKind.ProtocolViolation, "the daemon sent " + wrong);
    }

    private static partial class Log
    {
        [LoggerMessage(20, LogLevel.Information, "page server on port {Port}: the lazy-pages daemon connected from {Peer}")]
        public static partial void Connected(ILogger logger, int port, string peer);

        [LoggerMessage(21, LogLevel.Information, "page server on port {Port}: the daemon is done after {Requests} requests, {Pages} pages in {Seconds:0.###} s")]
        public static partial void Closed(ILogger logger, int port, long requests, long pages, double seconds);

        [LoggerMessage(22, LogLevel.Error, "page server on port {Port} failed ({Kind}): {Reason}")]
        public static partial void Failed(ILogger logger, int port, LazyPageServerFailureKind kind, string reason);

        [LoggerMessage(23, LogLevel.Error, "page server on port {Port}: the failure handler failed")]
        public static partial void FailureHandlerFailed(ILogger logger, int port, Exception exception);

        [LoggerMessage(25, LogLevel.Warning, "page server on port {Port}: refused a connection from {Peer}, a socket of another user than ours")]
        public static partial void StrangerRefused(ILogger logger, int port, string peer);

        [LoggerMessage(24, LogLevel.Trace, "page server: pid {Pid} at 0x{Address:x}, {Asked} pages asked, {Served} served")]
        public static partial void Served(ILogger logger, int pid, ulong address, int asked, int served);
    }
}
