using RebootlessUpdate.Criu.Protocol;
using RebootlessUpdate.Criu.Transport;

namespace RebootlessUpdate.Criu;

/// <summary>A page server started with PAGE_SERVER: it runs on its own and exits after one dump.</summary>
/// <param name="Pid">
/// The page server's pid, when CRIU reports it: criu 4.1 answers 0 for a
/// daemonized page server, reported here as null. Use
/// <see cref="CriuClient.StartPageServerChildAsync"/> to be able to wait for it.
/// </param>
/// <param name="Port">The port it listens on.</param>
/// <param name="Address">The address it listens on.</param>
public sealed record CriuPageServer(int? Pid, int Port, string Address)
{
    /// <summary>The endpoint to give <see cref="CriuDumpOptions.PageServer"/>.</summary>
    public CriuPageServerEndpoint Endpoint => new(Address, Port);
}

/// <summary>
/// A page server started as a child of a kept-open worker (PAGE_SERVER_CHLD);
/// the worker can wait for it (WAIT_PID). Disposing ends the connection.
/// </summary>
public sealed class CriuPageServerChild : IAsyncDisposable
{
    private readonly CriuSession _session;
    private bool _exited;

    internal CriuPageServerChild(CriuSession session, int pid, int port, string address)
    {
        _session = session;
        Pid = pid;
        Port = port;
        Address = address;
    }

    /// <summary>The page server's pid.</summary>
    public int Pid { get; }

    /// <summary>The port it listens on.</summary>
    public int Port { get; }

    /// <summary>The address it listens on.</summary>
    public string Address { get; }

    /// <summary>The endpoint to give <see cref="CriuDumpOptions.PageServer"/>.</summary>
    public CriuPageServerEndpoint Endpoint => new(Address, Port);

    /// <summary>Waits until the page server exits (WAIT_PID); returns its raw wait status.</summary>
    public async Task<int> WaitAsync(CancellationToken cancellationToken = default)
    {
        var resp = await CriuClient.SendAsync(_session, new criu_req { Type = criu_req_type.WaitPid, Pid = (uint)Pid }, null, cancellationToken).ConfigureAwait(false);
        _exited = true;
        return resp.Status;
    }

    /// <summary>
    /// Closes the connection (the worker then exits). A page server that was
    /// never waited for is killed: it would otherwise wait for a dump forever.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        if (!_exited && Pid > 0)
        {
            _ = Mono.Unix.Native.Syscall.kill(Pid, Mono.Unix.Native.Signum.SIGKILL);
        }

        await _session.DisposeAsync().ConfigureAwait(false);
    }
}

/// <summary>Options of CPUINFO_DUMP / CPUINFO_CHECK: only the images folder matters.</summary>
internal sealed record CriuCpuInfoOptions : CriuProcessOptions
{
    private protected override string RequestName => "cpuinfo";
}
