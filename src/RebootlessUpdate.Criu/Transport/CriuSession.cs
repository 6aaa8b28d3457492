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
    private readonly CriuConnection _connection;
    private readonly ILogger _logger;

    public CriuSession(CriuConnection connection, ILogger logger)
    {
        _connection = connection;
        _logger = logger;
    }

    public CriuConnection Connection => _connection;

    public async Task<criu_resp> RequestAsync(criu_req req, Func<CriuNotification, CancellationToken, ValueTask>? onNotification,
        string? logPath, CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        var kind = (CriuRequestType)(int)req.Type;
        var name = Name(kind);
        using var abortOnCancel = cancellationToken.Register(static c => ((CriuConnection)c!).Abort(), _connection);
        Log.RequestSent(_logger, kind, _connection.Description);
        // A failed send (peer gone) shows up as end of connection on the receive below.
        _ = _connection.Socket.Send(req.ToByteArray());
        Exception? handlerFailure = null;
        while (true)
        {
            var (bytes, descriptors) = await _connection.Socket.ReceiveWithDescriptorsAsync(cancellationToken).ConfigureAwait(false);
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
            if (resp.Type == criu_req_type.Notify)
            {
                var failure = await NotifyAsync(resp, descriptors, onNotification, cancellationToken).ConfigureAwait(false);
                handlerFailure ??= failure;
                continue;
            }

            Close(descriptors); // only notifications carry descriptors

            if (resp.Type != ExpectedResponse(req.Type))
            {
                throw new CriuTransportException($"{_connection.Description} answered a {name} request with a {Name((CriuRequestType)(int)resp.Type)} response");
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

    private async Task<Exception?> NotifyAsync(criu_resp resp, IReadOnlyList<int> descriptors,
        Func<CriuNotification, CancellationToken, ValueTask>? onNotification, CancellationToken cancellationToken)
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
                await onNotification(n, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception e) when (e is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
            {
                failure = e;
                Log.NotificationFailed(_logger, n.Script, e);
            }
        }

        // Anything but notify_success=true makes CRIU abort the operation
        // ("RPC client reported script error").
        _ = _connection.Socket.Send(new criu_req { Type = criu_req_type.Notify, NotifySuccess = failure is null }.ToByteArray());
        return failure;
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
    }
}
