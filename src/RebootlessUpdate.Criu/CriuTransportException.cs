namespace RebootlessUpdate.Criu;

/// <summary>
/// Talking to CRIU failed below the protocol: criu could not be started, the
/// socket broke, or criu exited without answering. <see cref="CriuStderr"/>
/// holds what criu printed, when anything.
/// </summary>
public class CriuTransportException : CriuException
{
    /// <summary>Creates the exception.</summary>
    public CriuTransportException(string message, int errno = 0, string? criuStderr = null, Exception? inner = null)
        : base(message, inner)
    {
        Errno = errno;
        CriuStderr = criuStderr;
    }

    /// <summary>Creates the exception.</summary>
    public CriuTransportException()
    {
    }

    /// <summary>Creates the exception.</summary>
    public CriuTransportException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception.</summary>
    public CriuTransportException(string message, Exception innerException)
        : base(message, innerException)
    {
    }

    /// <summary>The errno of the failed system call, 0 when none.</summary>
    public int Errno { get; }

    /// <summary>What criu wrote to stderr/stdout before the failure, when known.</summary>
    public string? CriuStderr { get; }

    /// <summary>True when the cause is an I/O problem that a new connection may not have.</summary>
    public bool IsTransient => Errno != 0;
}
