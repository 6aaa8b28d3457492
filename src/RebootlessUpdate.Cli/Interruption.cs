using System.Runtime.InteropServices;

namespace RebootlessUpdate.Cli;

/// <summary>
/// SIGINT and SIGTERM cancel the run instead of ending the process: the pipeline stops at its next safe point,
/// rolls back, and the tool prints the report and exits <see cref="ExitCodes.Interrupted"/>. A second signal
/// does not cut the rollback short. Commands that run no pipeline end at the signal as any program would.
/// </summary>
internal sealed class Interruption : IDisposable
{
    private readonly CancellationTokenSource _cancel = new();
    private readonly PosixSignalRegistration _interrupt;
    private readonly PosixSignalRegistration _terminate;
    private int _signals;

    private readonly bool _graceful;

    /// <summary>With <paramref name="graceful"/> false, a signal ends the tool at once, as it would any program.</summary>
    public Interruption(bool graceful)
    {
        _graceful = graceful;
        _interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, Handle);
        _terminate = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Handle);
    }

    /// <summary>Cancelled at the first SIGINT or SIGTERM.</summary>
    public CancellationToken Token => _cancel.Token;

    private void Handle(PosixSignalContext context)
    {
        if (!_graceful)
        {
            return; // not cancelled: the signal's default action ends the tool
        }

        context.Cancel = true; // the tool ends by itself, once every workload runs and the report is out
        if (Interlocked.Increment(ref _signals) == 1)
        {
            Console.Error.WriteLine($"rebootless: {context.Signal}: stopping at the next safe point; every workload is put back before the tool exits.");
            _cancel.Cancel();
        }
        else
        {
            Console.Error.WriteLine("rebootless: still putting the workloads back; the tool exits when they run (SIGKILL would leave them to `rebootless resume`).");
        }
    }

    public void Dispose()
    {
        _interrupt.Dispose();
        _terminate.Dispose();
        _cancel.Dispose();
    }
}
