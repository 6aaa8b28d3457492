namespace RebootlessUpdate.Criu.Transport;

/// <summary>
/// The caller's cancellation of one request, as far as it may stop criu.
/// <para>
/// A request that has criu hold a seized tree (DUMP, PRE_DUMP, SINGLE_PRE_DUMP) is never aborted by
/// a cancellation before criu is told to stop: killing criu while its parasite is inside a task (from
/// the infection to the cure) can leave that task running half-injected code, and it dies. Instead
/// criu is stopped at its word: its next notification is answered with failure, so criu cures the
/// parasite, resumes the tree and answers the request with a failure that is reported as the
/// cancellation. A criu that never gets there is hung, and the request's watchdog (criu's time
/// budget) kills it as for any request. Once criu was answered "no" at a notification (a point where
/// no parasite is inside a task), a cancellation that comes later aborts at once: it is how a caller
/// ends a criu that does not act on a veto.
/// </para>
/// <para>
/// After a DUMP's point of no return (post-dump answered "go on", when criu ends the dumped tree
/// itself) criu gets <c>finishGrace</c> to finish: a dump that finished is reported as done, never
/// as a cancellation that would claim the tree still runs. Every other request (restore among
/// them) is aborted at once.
/// </para>
/// </summary>
internal sealed class CallerCancellation : IDisposable
{
    private readonly CancellationTokenSource _cancelled;
    private readonly TimeSpan _finishGrace;
    private CancellationTokenRegistration _caller;

    public CallerCancellation(CriuRequestType request, TimeSpan finishGrace, TimeProvider time, CancellationToken caller)
    {
        Caller = caller;
        _finishGrace = finishGrace;
        _cancelled = new CancellationTokenSource(Timeout.InfiniteTimeSpan, time);
        Settles = HoldsSeizedTree(request);
        if (!Settles)
        {
            _caller = caller.Register(static c => ((CancellationTokenSource)c!).Cancel(), _cancelled);
        }
    }

    /// <summary>The caller's token, for the <see cref="OperationCanceledException"/> it is owed.</summary>
    public CancellationToken Caller { get; }

    /// <summary>True when a cancellation is told to criu at its next message rather than by aborting.</summary>
    public bool Settles { get; }

    /// <summary>True once the caller cancelled: criu must be told to stop at its next notification.</summary>
    public bool Requested => Caller.IsCancellationRequested;

    /// <summary>Cancelled when the caller's cancellation aborts the request.</summary>
    public CancellationToken Token => _cancelled.Token;

    /// <summary>True when the caller's cancellation aborted the request.</summary>
    public bool Aborted => _cancelled.IsCancellationRequested;

    /// <summary>
    /// Called before criu is told to finish: from now on a cancellation waits the finish grace
    /// before it aborts. Returns false when the caller cancelled first: then criu must not be
    /// told to go on.
    /// </summary>
    public bool PassPointOfNoReturn()
    {
        // Dispose waits for a callback already running, so Requested and Aborted are final afterwards.
        _caller.Dispose();
        if (Requested || Aborted)
        {
            return false;
        }

        _caller = Caller.Register(static c => ((CallerCancellation)c!).AbortAfter(((CallerCancellation)c!)._finishGrace), this);
        return true;
    }

    /// <summary>
    /// Called when criu is answered "no" at a notification: it winds down from a point where no parasite is inside a
    /// task. A cancellation that came first keeps waiting for criu's answer (criu resumes the tree at its word). One
    /// that comes later (criu told to stop and still not done: a veto it does not act on) aborts at once.
    /// </summary>
    public void CriuToldToStop()
    {
        if (!Settles)
        {
            return;
        }

        // Dispose waits for a callback already running, so Requested is final afterwards.
        _caller.Dispose();
        if (!Requested)
        {
            _caller = Caller.Register(static c => ((CancellationTokenSource)c!).Cancel(), _cancelled);
        }
    }

    /// <summary>True for the notification after whose successful answer criu finishes <paramref name="request"/> on its own.</summary>
    public static bool IsPointOfNoReturn(CriuRequestType request, string script) =>
        request == CriuRequestType.Dump && script == "post-dump";

    /// <summary>The requests during which criu holds a seized (ptraced, later infected) tree that it releases itself.</summary>
    private static bool HoldsSeizedTree(CriuRequestType request) =>
        request is CriuRequestType.Dump or CriuRequestType.PreDump or CriuRequestType.SinglePreDump;

    private void AbortAfter(TimeSpan grace)
    {
        try
        {
            _cancelled.CancelAfter(grace);
        }
        catch (ObjectDisposedException)
        {
            // The request ended while the caller cancelled: nothing left to abort.
        }
    }

    public void Dispose()
    {
        _caller.Dispose();
        _cancelled.Dispose();
    }
}
