namespace RebootlessUpdate.Images.Luo;

/// <summary>A LUO call the kernel refused: what was asked, and why in words an operator can act on.</summary>
internal sealed class LuoException : Exception
{
    /// <summary>Creates the exception.</summary>
    public LuoException(string message, int errno)
        : base(message)
    {
        Errno = errno;
    }

    /// <summary>Creates the exception.</summary>
    public LuoException()
    {
    }

    /// <summary>Creates the exception.</summary>
    public LuoException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception.</summary>
    public LuoException(string message, Exception innerException)
        : base(message, innerException)
    {
    }

    /// <summary>The errno the kernel answered.</summary>
    public int Errno { get; }
}
