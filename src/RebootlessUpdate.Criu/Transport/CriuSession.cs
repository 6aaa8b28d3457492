using Google.Protobuf;
using Microsoft.Extensions.Logging;
using RebootlessUpdate.Criu.Protocol;

namespace RebootlessUpdate.Criu.Transport;

/// <summary>
/// Requests and replies on one connection: sends a request, answers every
/// notification CRIU sends meanwhile, and returns the final response or
/// throws the error that says who failed and why.
/// </summary>
internal sealed partial class CriuSession : IAsyncDisposable
{
    private static readonly TimeSpan WorkerExitGrace = TimeSpan.FromSeconds(10);

    /// <summary>How long a request cancelled past its point of no return waits for criu to finish.</summary>
    private static readonly TimeSpan FinishGrace = TimeSpan.FromSeconds(5);

    private readonly CriuConnection _connection;
    private readonly ILogger _logger;
    private readonly TimeSpan _defaultTimeout;
    private readonly TimeProvider _time;

    public CriuSession(CriuConnection connection, ILogger logger, CriuClientOptions options)
    {
        _connection = connection;
        _logger = logger;
        _defaultTimeout = options.RequestTimeout;
        _time = options.TimeProvider;
    }

    public CriuConnection Connection => _connection;

    /// <summary>
    /// Sends <paramref name="req"/> and returns CRIU's final response. A watchdog of
    /// <paramref name="timeout"/> (default: the client's) runs while criu has the turn;
    /// when it expires the connection is aborted (a swrk worker is killed, which wakes every
    /// wait here) and the request ends with <see cref="CriuTimeoutException"/> after the worker
    /// is reaped. A cancellation by <paramref name="cancellationToken"/> ends it with
    /// <see cref="OperationCanceledException"/>: at once by the same abort, or, for a request
    /// that holds a seized tree, by answering criu's next notification with failure and never by
    /// a kill (<see cref="CallerCancellation"/>).
    /// </summary>
    public async Task<criu_resp> RequestAsync(criu_req req, Func<CriuNotification, CancellationToken, ValueTask>? onNotification,
        string? logPath, TimeSpan? timeout, CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        var kind = (CriuRequestType)(int)req.Type;
        var limit = timeout ?? _defaultTimeout;
        using var watchdog = new Watchdog(limit, _time);
        using var caller = new CallerCancellation(kind, FinishGrace, _time, cancellationToken);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(caller.Token, watchdog.Token);
        using var abort = linked.Token.Register(static c => ((CriuConnection)c!).Abort(), _connection);
        try
        {
            return await ExchangeAsync(req, kind, onNotification, logPath, watchdog, caller, linked.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not CriuTimeoutException && (caller.Aborted || watchdog.Expired))
        {
            // The connection was aborted on purpose: whatever failed after that is a consequence
            // (typically "closed the connection, exit status 137", the worker's SIGKILL).
            // Reap the worker first, so no criu is left behind when the caller sees the outcome.
            await _connection.WaitForWorkerExitAsync(WorkerExitGrace).ConfigureAwait(false);
            if (caller.Aborted)
            {
                Log.Cancelled(_logger, kind, _connection.Description);
                throw new OperationCanceledException($"the criu {Name(kind)} request was cancelled; {_connection.Description} was stopped.", e, cancellationToken);
            }

            await _connection.DrainOutputAsync(TimeSpan.FromMilliseconds(200)).ConfigureAwait(false);
            var error = new CriuTimeoutException(kind, limit, _connection.WorkerPid, _connection.Description, logPath,
                CriuTimeoutException.TailLog(logPath), _connection.Output);
            Log.TimedOut(_logger, kind, error.Message);
            if (caller.Requested)
            {
                // Cancelled, but criu never reached a message to be told at: it was taken for hung and killed.
                throw new OperationCanceledException($"the criu {Name(kind)} request was cancelled; {_connection.Description} did not stop at its word and was killed when its watchdog expired.", error, cancellationToken);
            }

            throw error;
        }
    }

    private async Task<criu_resp> ExchangeAsync(criu_req req, CriuRequestType kind, Func<CriuNotification, CancellationToken, ValueTask>? onNotification,
        string? logPath, Watchdog watchdog, CallerCancellation caller, CancellationToken cancellationToken)
    {
        var name = Name(kind);
        // A handler stops when the caller cancels, even while criu is only told to stop at its word.
        using var handlerToken = CancellationTokenSource.CreateLinkedTokenSource(caller.Caller, cancellationToken);
        Log.RequestSent(_logger, kind, _connection.Description);
        // criu's turn starts with the send: a send blocked on a stopped criu is ended by the abort too.
        watchdog.Start();
        // A failed send (peer gone) shows up as end of connection on the receive below.
        _ = _connection.Socket.Send(req.ToByteArray());
        Exception? handlerFailure = null;
        while (true)
        {
            var (bytes, descriptors) = await _connection.Socket.ReceiveWithDescriptorsAsync(cancellationToken).ConfigureAwait(false);
            watchdog.Pause();
            if (bytes is null)
            {
                var exit = await _connection.WaitForWorkerExitAsync(WorkerExitGrace).ConfigureAwait(false);
                var status = exit is { } e ? $" (exit status {e})" : string.Empty;
                throw new CriuTransportException(
                    $"{_connection.Description} closed the connection without answering the {name} request{status}." +
                    (handlerFailure is not null ? $" A notification handler had failed: {handlerFailure.Message}." : string.Empty) +
                    $" criu printed: {Trim(_connection.Output)}",
                    0, _connection.Output, handlerFailure);
            }

            var resp = ParseOrClose(bytes, name, descriptors);
            if (cancellationToken.IsCancellationRequested && (resp.Type == criu_req_type.Notify || !resp.Success))
            {
                // Aborted while the message arrived: it no longer counts. A success still does:
                // criu finished the request, and what it did is not undone by the abort.
                Close(descriptors);
                cancellationToken.ThrowIfCancellationRequested();
            }

            if (resp.Type == criu_req_type.Notify)
            {
                // criu waits for the answer: the handler's time is not criu's. Once the caller
                // cancelled, no handler runs: every notification is answered with failure.
                var failure = caller.Requested
                    ? Refuse(descriptors, resp)
                    : await NotifyAsync(resp, descriptors, onNotification, handlerToken.Token, cancellationToken).ConfigureAwait(false);
                handlerFailure ??= failure;
                if (failure is null && CallerCancellation.IsPointOfNoReturn(kind, resp.Notify?.Script ?? string.Empty) && !caller.PassPointOfNoReturn())
                {
                    // Cancelled before criu was told to finish: told to stop instead, criu resumes the tree.
                    cancellationToken.ThrowIfCancellationRequested();
                    failure = Refuse([], resp);
                }

                if (failure is not null)
                {
                    caller.CriuToldToStop();
                }

                // Anything but notify_success=true makes CRIU abort the operation
                // ("RPC client reported script error").
                watchdog.Start();
                _ = _connection.Socket.Send(new criu_req { Type = criu_req_type.Notify, NotifySuccess = failure is null }.ToByteArray());
                continue;
            }

            Close(descriptors); // only notifications carry descriptors

            if (resp.Type != ExpectedResponse(req.Type))
            {
                throw new CriuTransportException($"{_connection.Description} answered a {name} request with a {Name((CriuRequestType)(int)resp.Type)} response");
            }

            if (!resp.Success && caller.Requested)
            {
                // criu stopped at our word and released the tree before it answered: nothing is
                // left for the worker to do, so ending it now harms nothing.
                _connection.Abort();
                await _connection.WaitForWorkerExitAsync(WorkerExitGrace).ConfigureAwait(false);
                Log.Cancelled(_logger, kind, _connection.Description);
                // criu's own answer stays inside: after a cancellation it is usually "a script failed" (our refusal),
                // but it may be a failure of its own that came first.
                var answer = new CriuRequestFailedException(kind, resp.CrErrno, resp.HasCrErrmsg ? resp.CrErrmsg : null,
                    logPath, CriuRequestFailedException.ExcerptLog(logPath), handlerFailure, _connection.Output);
                throw new OperationCanceledException($"the criu {name} request was cancelled; {_connection.Description} stopped and released the processes.", answer, caller.Caller);
            }

            if (!resp.Success)
            {
                await _connection.DrainOutputAsync(TimeSpan.FromSeconds(2)).ConfigureAwait(false);
                var error = new CriuRequestFailedException(kind, resp.CrErrno, resp.HasCrErrmsg ? resp.CrErrmsg : null,
                    logPath, CriuRequestFailedException.ExcerptLog(logPath), handlerFailure, _connection.Output);
                Log.RequestFailed(_logger, kind, error.Message);
                throw error;
            }

            Log.RequestSucceeded(_logger, kind);
            return resp;
        }
    }

    /// <summary>The failure a notification is answered with once the caller cancelled; its descriptors are closed unread.</summary>
    private OperationCanceledException Refuse(IReadOnlyList<int> descriptors, criu_resp resp)
    {
        Close(descriptors);
        Log.Refused(_logger, resp.Notify?.Script ?? string.Empty);
        return new OperationCanceledException("the request was cancelled; criu was told to stop at this notification.");
    }

    /// <summary>
    /// Calls the handler with <paramref name="handlerToken"/>; returns its failure (null when it
    /// succeeded). Only the abort of the connection (<paramref name="aborted"/>) escapes as an
    /// exception. The caller answers criu.
    /// </summary>
    private async Task<Exception?> NotifyAsync(criu_resp resp, IReadOnlyList<int> descriptors,
        Func<CriuNotification, CancellationToken, ValueTask>? onNotification, CancellationToken handlerToken, CancellationToken aborted)
    {
        // The first descriptor goes to the handler as an owned handle; any others are closed.
        Microsoft.Win32.SafeHandles.SafeFileHandle? handle = null;
        if (descriptors.Count > 0 && onNotification is not null)
        {
            handle = new Microsoft.Win32.SafeHandles.SafeFileHandle(descriptors[0], ownsHandle: true);
            Close(descriptors.Skip(1));
        }
        else
        {
            Close(descriptors);
        }

        var n = new CriuNotification(resp.Notify?.Script ?? string.Empty, resp.Notify is { HasPid: true } x ? x.Pid : null, handle);
        Log.Notification(_logger, n.Script, n.Pid ?? 0);
        Exception? failure = null;
        if (onNotification is not null)
        {
            try
            {
                await onNotification(n, handlerToken).ConfigureAwait(false);
            }
            catch (Exception e) when (!aborted.IsCancellationRequested)
            {
                failure = e;
                Log.NotificationFailed(_logger, n.Script, e);
            }
        }

        return failure;
    }

    /// <summary>
    /// The request's watchdog: a budget of criu's time, spent only while criu has the turn
    /// (from a send until criu's next message). Its token is cancelled when the budget is used up.
    /// </summary>
    private sealed class Watchdog : IDisposable
    {
        private readonly CancellationTokenSource _expired;
        private readonly TimeSpan _limit;
        private readonly TimeProvider _time;
        private TimeSpan _used;
        private long? _since;

        public Watchdog(TimeSpan limit, TimeProvider time)
        {
            _limit = limit;
            _time = time;
            _expired = new CancellationTokenSource(Timeout.InfiniteTimeSpan, time);
        }

        public CancellationToken Token => _expired.Token;

        public bool Expired => _expired.IsCancellationRequested;

        public void Start()
        {
            if (_limit == Timeout.InfiniteTimeSpan || _since is not null)
            {
                return;
            }

            _since = _time.GetTimestamp();
            var left = _limit - _used;
            if (left > TimeSpan.Zero)
            {
                _expired.CancelAfter(left);
            }
            else
            {
                _expired.Cancel();
            }
        }

        public void Pause()
        {
            if (_since is not { } since)
            {
                return;
            }

            _expired.CancelAfter(Timeout.InfiniteTimeSpan);
            _used += _time.GetElapsedTime(since);
            _since = null;
        }

        public void Dispose() => _expired.Dispose();
    }

    private static void Close(IEnumerable<int> descriptors)
    {
        foreach (var fd in descriptors)
        {
            _ = Mono.Unix.Native.Syscall.close(fd);
        }
    }

    private criu_resp ParseOrClose(byte[] bytes, string name, IReadOnlyList<int> descriptors)
    {
        try
        {
            return Parse(bytes, name);
        }
        catch
        {
            Close(descriptors);
            throw;
        }
    }

    private criu_resp Parse(byte[] bytes, string name)
    {
        criu_resp resp;
        try
        {
            resp = criu_resp.Parser.ParseFrom(bytes);
        }
        catch (InvalidProtocolBufferException e)
        {
            throw new CriuTransportException($"{_connection.Description} sent an unreadable response ({bytes.Length} bytes) to {name}: {e.Message}", e);
        }

        // Google.Protobuf does not enforce proto2 `required`: check here.
        return resp.IsInitialized()
            ? resp
            : throw new CriuTransportException($"{_connection.Description} sent a response to {name} without its required fields (type, success)");
    }

    /// <summary>CRIU answers PAGE_SERVER_CHLD with a PAGE_SERVER response (criu 4.1); every other request with its own type.</summary>
    private static criu_req_type ExpectedResponse(criu_req_type request) =>
        request == criu_req_type.PageServerChld ? criu_req_type.PageServer : request;

    internal static string Name(CriuRequestType kind) => kind switch
    {
        CriuRequestType.PreDump => "PRE_DUMP",
        CriuRequestType.PageServer => "PAGE_SERVER",
        CriuRequestType.CpuInfoDump => "CPUINFO_DUMP",
        CriuRequestType.CpuInfoCheck => "CPUINFO_CHECK",
        CriuRequestType.FeatureCheck => "FEATURE_CHECK",
        CriuRequestType.WaitPid => "WAIT_PID",
        CriuRequestType.PageServerChild => "PAGE_SERVER_CHLD",
        CriuRequestType.SinglePreDump => "SINGLE_PRE_DUMP",
        _ => kind.ToString().ToUpperInvariant(),
    };

    private static string Trim(string text) =>
        string.IsNullOrWhiteSpace(text) ? "(nothing)" : text.Length > 2000 ? text[^2000..].Trim() : text.Trim();

    public ValueTask DisposeAsync() => _connection.DisposeAsync();

    private static partial class Log
    {
        [LoggerMessage(1, LogLevel.Debug, "criu {Request} request sent to {Peer}")]
        public static partial void RequestSent(ILogger logger, CriuRequestType request, string peer);

        [LoggerMessage(2, LogLevel.Debug, "criu {Request} succeeded")]
        public static partial void RequestSucceeded(ILogger logger, CriuRequestType request);

        [LoggerMessage(3, LogLevel.Warning, "criu {Request} failed: {Reason}")]
        public static partial void RequestFailed(ILogger logger, CriuRequestType request, string reason);

        [LoggerMessage(4, LogLevel.Debug, "criu notification {Script} (pid {Pid})")]
        public static partial void Notification(ILogger logger, string script, int pid);

        [LoggerMessage(5, LogLevel.Warning, "notification handler for {Script} failed; criu will abort the request")]
        public static partial void NotificationFailed(ILogger logger, string script, Exception exception);

        [LoggerMessage(6, LogLevel.Error, "criu {Request} timed out: {Reason}")]
        public static partial void TimedOut(ILogger logger, CriuRequestType request, string reason);

        [LoggerMessage(7, LogLevel.Warning, "criu {Request} cancelled; {Peer} was stopped")]
        public static partial void Cancelled(ILogger logger, CriuRequestType request, string peer);

        [LoggerMessage(8, LogLevel.Information, "criu notification {Script} answered with failure: the request was cancelled")]
        public static partial void Refused(ILogger logger, string script);
    }
}
