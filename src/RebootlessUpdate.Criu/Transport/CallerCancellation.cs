namespace RebootlessUpdate.Criu.Transport;

/// <summary>
/// The caller's cancellation of one request, as far as it may stop criu. Until criu passes the
/// request's point of no return it aborts the connection at once. After that (a DUMP answered
/// "go on" at post-dump, when criu ends the dumped tree itself) it gives criu a short grace to
/// finish first: a dump that finished is reported as done, never as a cancellation that would
/// claim the tree still runs; a criu that does not finish within the grace is still aborted.
/// </summary>
internal sealed class CallerCancellation : IDisposable
{
    private readonly CancellationTokenSource _cancelled;
    private readonly TimeSpan _finishGrace;
    private CancellationTokenRegistration _caller;

    public CallerCancellation(TimeSpan finishGrace, TimeProvider time, CancellationToken caller)
    {
        Caller = caller;
        _finishGrace = finishGrace;
        _cancelled = new CancellationTokenSource(Timeout.InfiniteTimeSpan, time);
        _caller = caller.Register(static c => ((CancellationTokenSource)c!).Cancel(), _cancelled);
    }

    /// <summary>The caller's token, for the <see cref="OperationCanceledException"/> it is owed.</summary>
    public CancellationToken Caller { get; }

    /// <summary>Cancelled when the caller's cancellation aborts the request.</summary>
    public CancellationToken Token => _cancelled.Token;

    /// <summary>True when the caller's cancellation aborted the request.</summary>
    public bool Aborted => _cancelled.IsCancellationRequested;

    /// <summary>
    /// Called before criu is told to finish: from now on a cancellation waits the grace before it
    /// aborts. Returns false when the caller cancelled first: then criu must not be told to go on.
    /// </summary>
    public bool PassPointOfNoReturn()
    {
        // Dispose waits for a callback already running, so Aborted is final afterwards.
        _caller.Dispose();
        if (Aborted)
        {
            return false;
        }

        _caller = Caller.Register(() => _cancelled.CancelAfter(_finishGrace));
        return true;
    }

    /// <summary>True for the notification after whose successful answer criu finishes <paramref name="request"/> on its own.</summary>
    public static bool IsPointOfNoReturn(CriuRequestType request, string script) =>
        request == CriuRequestType.Dump && script == "post-dump";

    public void Dispose()
    {
        _caller.Dispose();
        _cancelled.Dispose();
    }
}
