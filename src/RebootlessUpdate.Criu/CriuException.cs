namespace RebootlessUpdate.Criu;

/// <summary>
/// Base of every error this client raises about CRIU. Catch the subclass that
/// says who failed: <see cref="CriuUnavailableException"/> (criu cannot be
/// found or run), <see cref="CriuTransportException"/> (the connection broke),
/// <see cref="CriuRequestFailedException"/> (CRIU refused or failed the
/// request), <see cref="CriuVersionException"/> (this criu is too old for what
/// was asked). Misuse of the API stays <see cref="ArgumentException"/>.
/// </summary>
public abstract class CriuException : Exception
{
    /// <summary>Creates the exception.</summary>
    protected CriuException()
    {
    }

    /// <summary>Creates the exception.</summary>
    protected CriuException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception.</summary>
    protected CriuException(string message, Exception? innerException)
        : base(message, innerException)
    {
    }
}

/// <summary>criu cannot be found or started (wrong path, not executable, not installed).</summary>
public sealed class CriuUnavailableException : CriuException
{
    /// <summary>Creates the exception.</summary>
    public CriuUnavailableException()
    {
    }

    /// <summary>Creates the exception.</summary>
    public CriuUnavailableException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception.</summary>
    public CriuUnavailableException(string message, Exception? innerException)
        : base(message, innerException)
    {
    }
}

/// <summary>The installed criu is older than an option or request needs.</summary>
public sealed class CriuVersionException : CriuException
{
    /// <summary>Creates the exception.</summary>
    public CriuVersionException(string feature, CriuVersion minimum, CriuVersion actual)
        : base($"{feature} needs criu {minimum} or newer, but the installed criu is {actual}. Install a newer CRIU (4.0 or later is recommended) or do without {feature}.")
    {
        Feature = feature;
        Minimum = minimum;
        Actual = actual;
    }

    /// <summary>Creates the exception.</summary>
    public CriuVersionException()
    {
        Feature = string.Empty;
        Minimum = Actual = new CriuVersion(0, 0);
    }

    /// <summary>Creates the exception.</summary>
    public CriuVersionException(string message)
        : base(message)
    {
        Feature = string.Empty;
        Minimum = Actual = new CriuVersion(0, 0);
    }

    /// <summary>Creates the exception.</summary>
    public CriuVersionException(string message, Exception? innerException)
        : base(message, innerException)
    {
        Feature = string.Empty;
        Minimum = Actual = new CriuVersion(0, 0);
    }

    /// <summary>The option or request that needs the newer version.</summary>
    public string Feature { get; }

    /// <summary>The oldest criu that has it.</summary>
    public CriuVersion Minimum { get; }

    /// <summary>The installed criu.</summary>
    public CriuVersion Actual { get; }
}

/// <summary>
/// This kernel (or criu build) lacks a feature the request needs, found out
/// before anything was frozen (e.g. pre-dump without soft-dirty memory tracking,
/// on which criu 4.1 aborts with a BUG).
/// </summary>
public sealed class CriuFeatureUnavailableException : CriuException
{
    /// <summary>Creates the exception.</summary>
    public CriuFeatureUnavailableException()
    {
    }

    /// <summary>Creates the exception.</summary>
    public CriuFeatureUnavailableException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception.</summary>
    public CriuFeatureUnavailableException(string message, Exception? innerException)
        : base(message, innerException)
    {
    }
}
