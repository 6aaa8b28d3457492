using Mono.Unix.Native;

namespace RebootlessUpdate.Criu.Transport;

/// <summary>
/// One connection to a CRIU worker: the socket, and for swrk the worker
/// process (for its output, and to kill it when a request is abandoned).
/// </summary>
internal sealed class CriuConnection : IAsyncDisposable
{
    private readonly SwrkWorker? _worker;

    public CriuConnection(SeqpacketSocket socket, SwrkWorker? worker, string description)
    {
        Socket = socket;
        _worker = worker;
        Description = description;
    }

    public SeqpacketSocket Socket { get; }

    /// <summary>"swrk worker 1234" or "service /run/criu.sock", for messages.</summary>
    public string Description { get; }

    /// <summary>The swrk worker's pid; null for a service connection.</summary>
    public int? WorkerPid => _worker?.Pid;

    /// <summary>What the worker printed (swrk only).</summary>
    public string Output => _worker?.Stderr ?? string.Empty;

    /// <summary>Ends the connection abruptly: kills a swrk worker, or shuts the socket down.</summary>
    public void Abort()
    {
        if (_worker is not null)
        {
            _worker.Kill();
        }
        else
        {
            _ = Syscall.shutdown(Socket.Fd, ShutdownOption.SHUT_RDWR);
        }
    }

    /// <summary>Waits briefly for the worker's remaining output (swrk only), before an error is built from it.</summary>
    public Task DrainOutputAsync(TimeSpan timeout) => _worker?.DrainOutputAsync(timeout) ?? Task.CompletedTask;

    /// <summary>Exit status of a swrk worker after the peer closed (null when unknown or not swrk).</summary>
    public Task<int?> WaitForWorkerExitAsync(TimeSpan timeout) =>
        _worker?.WaitForExitAsync(timeout) ?? Task.FromResult<int?>(null);

    public async ValueTask DisposeAsync()
    {
        if (_worker is not null)
        {
            await _worker.DisposeAsync().ConfigureAwait(false);
        }
        else
        {
            Socket.Dispose();
        }
    }
}
