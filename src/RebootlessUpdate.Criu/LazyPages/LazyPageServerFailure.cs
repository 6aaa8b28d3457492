namespace RebootlessUpdate.Criu;

/// <summary>What a <see cref="LazyPageServer"/> hands <see cref="LazyPageServerOptions.OnFailure"/>.</summary>
public readonly struct LazyPageServerFailure
{
    internal LazyPageServerFailure(LazyPageServerException exception) => Exception = exception;

    /// <summary>What failed, as the server's <see cref="LazyPageServer.Completion"/> will fault with it.</summary>
    public LazyPageServerException Exception { get; }

    /// <summary>Who failed.</summary>
    public LazyPageServerFailureKind Kind => Exception.Kind;
}

/// <summary>Who made a <see cref="LazyPageServer"/> session fail.</summary>
public enum LazyPageServerFailureKind
{
    /// <summary>The page source could not give pages the daemon asked for (absent from the set, damaged, unreadable).</summary>
    SourceFailed,

    /// <summary>The daemon sent something CRIU's page-server protocol does not allow here.</summary>
    ProtocolViolation,

    /// <summary>The connection ended without PS_IOV_CLOSE: the daemon died or was killed.</summary>
    Disconnected,

    /// <summary>The server was disposed before the session ended, or before the daemon connected.</summary>
    Stopped,
}

/// <summary>A <see cref="LazyPageServer"/> could not serve its daemon to the end; the message says why.</summary>
public sealed class LazyPageServerException : CriuException
{
    internal LazyPageServerException(LazyPageServerFailureKind kind, string message, Exception? innerException = null, int? pid = null, ulong? address = null)
        : base(message, innerException)
    {
        Kind = kind;
        Pid = pid;
        Address = address;
    }

    /// <summary>Who failed.</summary>
    public LazyPageServerFailureKind Kind { get; }

    /// <summary>The pid (as the images name it) whose pages were being served, when one was.</summary>
    public int? Pid { get; }

    /// <summary>The address of the pages being served, when some were.</summary>
    public ulong? Address { get; }
}
