using Google.Protobuf;
using Microsoft.Extensions.Logging;
using Mono.Unix.Native;
using RebootlessUpdate.Criu.Protocol;
using RebootlessUpdate.Criu.Transport;

namespace RebootlessUpdate.Criu;

/// <summary>
/// A client of CRIU's RPC protocol. Each request runs in its own
/// <c>criu swrk</c> worker, started with exactly one inherited socket; the
/// worker is reaped and its output kept for error reports. Thread-safe: any
/// number of requests may run at once.
/// </summary>
public sealed partial class CriuClient
{
    private static readonly TimeSpan WorkerExitGrace = TimeSpan.FromSeconds(10);
    private readonly CriuClientOptions _options;
    private readonly ILogger _logger;

    /// <summary>Creates a client; nothing is started until a request is made.</summary>
    public CriuClient(CriuClientOptions? options = null)
    {
        _options = options ?? new CriuClientOptions();
        _logger = _options.LoggerFactory.CreateLogger<CriuClient>();
    }

    /// <summary>Asks CRIU's version (VERSION).</summary>
    public async Task<CriuVersion> GetVersionAsync(CancellationToken cancellationToken = default)
    {
        var resp = await ExecuteAsync(new criu_req { Type = criu_req_type.Version }, null, null, cancellationToken).ConfigureAwait(false);
        var v = resp.Version ?? throw new CriuTransportException("criu answered VERSION without a version");
        return new CriuVersion(v.MajorNumber, v.MinorNumber, v.HasSublevel ? v.Sublevel : 0, v.HasGitid ? v.Gitid : null);
    }

    /// <summary>Runs CRIU's kernel check (CHECK); throws <see cref="CriuException"/> when the kernel lacks something.</summary>
    public async Task CheckAsync(CancellationToken cancellationToken = default) =>
        await ExecuteAsync(new criu_req { Type = criu_req_type.Check }, null, null, cancellationToken).ConfigureAwait(false);

    /// <summary>Asks which optional features work here (FEATURE_CHECK).</summary>
    public async Task<CriuFeatures> CheckFeaturesAsync(CancellationToken cancellationToken = default)
    {
        // CRIU checks only the features the request names: ask for all of them.
        var req = new criu_req
        {
            Type = criu_req_type.FeatureCheck,
            Features = new criu_features { MemTrack = true, LazyPages = true, PidfdStore = true },
        };
        var resp = await ExecuteAsync(req, null, null, cancellationToken).ConfigureAwait(false);
        var f = resp.Features ?? new criu_features();
        return new CriuFeatures(f.MemTrack, f.LazyPages, f.PidfdStore);
    }

    /// <summary>Checkpoints a process tree (DUMP).</summary>
    /// <exception cref="ArgumentException">The options are invalid.</exception>
    /// <exception cref="CriuException">CRIU failed; the message says why.</exception>
    /// <exception cref="CriuTransportException">CRIU could not be reached.</exception>
    public async Task<CriuDumpResult> DumpAsync(CriuDumpOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        await ExecuteAsync(new criu_req { Type = criu_req_type.Dump }, options, options.OnNotification, cancellationToken).ConfigureAwait(false);
        var stats = CriuStatsImage.ReadDump(Path.Combine(options.WorkDirectory ?? options.ImagesDirectory, "stats-dump"));
        return new CriuDumpResult(stats, options.LogPath);
    }

    /// <summary>Restores a process tree (RESTORE); returns its root pid.</summary>
    /// <exception cref="ArgumentException">The options are invalid.</exception>
    /// <exception cref="CriuException">CRIU failed; the message says why.</exception>
    /// <exception cref="CriuTransportException">CRIU could not be reached.</exception>
    public async Task<CriuRestoreResult> RestoreAsync(CriuRestoreOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        var resp = await ExecuteAsync(new criu_req { Type = criu_req_type.Restore }, options, options.OnNotification, cancellationToken).ConfigureAwait(false);
        var pid = resp.Restore?.Pid ?? throw new CriuTransportException("criu answered RESTORE without the restored pid");
        var stats = CriuStatsImage.ReadRestore(Path.Combine(options.WorkDirectory ?? options.ImagesDirectory, "stats-restore"));
        return new CriuRestoreResult(pid, stats, options.LogPath);
    }

    private async Task<criu_resp> ExecuteAsync(criu_req req, CriuProcessOptions? options,
        Func<CriuNotification, CancellationToken, ValueTask>? onNotification, CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        var kind = (CriuRequestType)(int)req.Type;
        using var fds = new DescriptorSet();
        if (options is not null)
        {
            req.Opts = options.ToProto();
            // Folders are descriptors on the wire: CRIU opens /proc/<client>/fd/<n>.
            req.Opts.ImagesDirFd = fds.OpenDirectory(options.ImagesDirectory, "images folder");
            if (options.WorkDirectory is not null)
            {
                req.Opts.WorkDirFd = fds.OpenDirectory(options.WorkDirectory, "work folder");
            }
        }
        else if (req.Type == criu_req_type.Check)
        {
            // CHECK insists on an images folder although it writes nothing there.
            req.Opts = new criu_opts { ImagesDirFd = fds.OpenDirectory(Path.GetTempPath(), "temporary folder") };
        }

        await using var worker = SwrkWorker.Start(_options.ResolveCriuPath());
        Log.RequestSent(_logger, kind, worker.Pid);
        using var killOnCancel = cancellationToken.Register(static w => ((SwrkWorker)w!).Kill(), worker);
        worker.Socket.Send(req.ToByteArray());
        Exception? handlerFailure = null;
        while (true)
        {
            var bytes = await worker.Socket.ReceiveAsync(cancellationToken).ConfigureAwait(false);
            if (bytes is null)
            {
                var exit = await worker.WaitForExitAsync(WorkerExitGrace).ConfigureAwait(false);
                throw new CriuTransportException(
                    $"criu exited without answering the {kind.ToString().ToUpperInvariant()} request (exit status {exit?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "unknown"}). criu printed: {Trim(worker.Stderr)}",
                    0, worker.Stderr);
            }

            var resp = Parse(bytes, kind);
            if (resp.Type == criu_req_type.Notify)
            {
                handlerFailure ??= await NotifyAsync(worker, resp, onNotification, cancellationToken).ConfigureAwait(false);
                continue;
            }

            if (resp.Type != req.Type)
            {
                throw new CriuTransportException($"criu answered a {kind.ToString().ToUpperInvariant()} request with a {resp.Type} response");
            }

            if (!resp.Success)
            {
                var error = new CriuException(kind, resp.CrErrno, resp.HasCrErrmsg ? resp.CrErrmsg : null,
                    options?.LogPath, CriuException.ExcerptLog(options?.LogPath), handlerFailure, worker.Stderr);
                Log.RequestFailed(_logger, kind, error.Message);
                throw error;
            }

            Log.RequestSucceeded(_logger, kind);
            return resp;
        }
    }

    private async Task<Exception?> NotifyAsync(SwrkWorker worker, criu_resp resp,
        Func<CriuNotification, CancellationToken, ValueTask>? onNotification, CancellationToken cancellationToken)
    {
        var n = new CriuNotification(resp.Notify?.Script ?? string.Empty, resp.Notify is { HasPid: true } x ? x.Pid : null);
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

        // Anything but notify_success=true makes CRIU abort the operation.
        worker.Socket.Send(new criu_req { Type = criu_req_type.Notify, NotifySuccess = failure is null }.ToByteArray());
        return failure;
    }

    private static criu_resp Parse(byte[] bytes, CriuRequestType kind)
    {
        criu_resp resp;
        try
        {
            resp = criu_resp.Parser.ParseFrom(bytes);
        }
        catch (InvalidProtocolBufferException e)
        {
            throw new CriuTransportException($"criu sent an unreadable response to {kind.ToString().ToUpperInvariant()}: {e.Message}", e);
        }

        // Google.Protobuf does not enforce proto2 `required`: check here.
        return resp.IsInitialized()
            ? resp
            : throw new CriuTransportException($"criu sent a response to {kind.ToString().ToUpperInvariant()} without its required fields");
    }

    private static string Trim(string text) =>
        string.IsNullOrWhiteSpace(text) ? "(nothing)" : text.Length > 2000 ? text[^2000..].Trim() : text.Trim();

    private static partial class Log
    {
        [LoggerMessage(1, LogLevel.Debug, "criu {Request} request sent to swrk worker {WorkerPid}")]
        public static partial void RequestSent(ILogger logger, CriuRequestType request, int workerPid);

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
