namespace RebootlessUpdate.Images;

/// <summary>
/// An image store refused or failed an operation. The message names the store
/// or set, what was wrong and what to do about it.
/// </summary>
public class ImageStoreException : Exception
{
    /// <summary>Creates the exception.</summary>
    public ImageStoreException()
    {
    }

    /// <summary>Creates the exception.</summary>
    public ImageStoreException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception.</summary>
    public ImageStoreException(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}

/// <summary>
/// Another update holds the store's exclusive lock. <see cref="HolderPid"/>
/// names the process that holds it, when it recorded itself.
/// </summary>
public sealed class ImageStoreLockedException : ImageStoreException
{
    /// <summary>Creates the exception for the lock file <paramref name="lockFile"/>.</summary>
    public ImageStoreLockedException(string lockFile, int? holderPid)
        : base($"the image store is in use by another update: {lockFile} is locked by "
               + (holderPid is { } pid ? $"pid {pid}" : "a process that did not record its pid")
               + "; wait for it to finish (or stop it) and try again")
    {
        LockFile = lockFile;
        HolderPid = holderPid;
    }

    /// <summary>Creates the exception.</summary>
    public ImageStoreLockedException()
    {
        LockFile = string.Empty;
    }

    /// <summary>Creates the exception.</summary>
    public ImageStoreLockedException(string message)
        : base(message)
    {
        LockFile = string.Empty;
    }

    /// <summary>Creates the exception.</summary>
    public ImageStoreLockedException(string message, Exception innerException)
        : base(message, innerException)
    {
        LockFile = string.Empty;
    }

    /// <summary>The lock file.</summary>
    public string LockFile { get; }

    /// <summary>Pid of the process holding the lock, when known.</summary>
    public int? HolderPid { get; }
}

/// <summary>
/// The store has (or would have) too little free space for a checkpoint:
/// raised before an update that would not fit, and when a dump ran out of space.
/// </summary>
public sealed class StoreFullException : ImageStoreException
{
    /// <summary>Creates the exception.</summary>
    public StoreFullException(string message, long freeBytes, long? requiredBytes, Exception? innerException = null)
        : base(message, innerException!)
    {
        FreeBytes = freeBytes;
        RequiredBytes = requiredBytes;
    }

    /// <summary>Creates the exception.</summary>
    public StoreFullException()
    {
    }

    /// <summary>Creates the exception.</summary>
    public StoreFullException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception.</summary>
    public StoreFullException(string message, Exception innerException)
        : base(message, innerException)
    {
    }

    /// <summary>Free bytes of the store when the problem was seen.</summary>
    public long FreeBytes { get; }

    /// <summary>The estimated need, when the refusal came from an estimate.</summary>
    public long? RequiredBytes { get; }
}

/// <summary>A path in a set (or its manifest) escapes the set or is not a plain file.</summary>
public sealed class UnsafeSetPathException : ImageStoreException
{
    /// <summary>Creates the exception.</summary>
    public UnsafeSetPathException(string path, string reason)
        : base($"unsafe path in checkpoint set: '{path}' {reason}; a set may only hold plain files and folders inside it")
    {
        SetPath = path;
    }

    /// <summary>Creates the exception.</summary>
    public UnsafeSetPathException()
    {
        SetPath = string.Empty;
    }

    /// <summary>Creates the exception.</summary>
    public UnsafeSetPathException(string message)
        : base(message)
    {
        SetPath = string.Empty;
    }

    /// <summary>Creates the exception.</summary>
    public UnsafeSetPathException(string message, Exception innerException)
        : base(message, innerException)
    {
        SetPath = string.Empty;
    }

    /// <summary>The offending path, relative to the set's images folder.</summary>
    public string SetPath { get; }
}

/// <summary>
/// The store path, or a folder or file inside the store, is not one rebootless can trust:
/// a folder on the way that others may write to, another user's symbolic link, a set
/// folder that is a link or belongs to someone else, a FIFO where a file must be.
/// Nothing was created, changed or read through it.
/// </summary>
public sealed class UnsafeStorePathException : ImageStoreException
{
    /// <summary>Creates the exception for <paramref name="path"/> met while opening the store at <paramref name="storeRoot"/>.</summary>
    public UnsafeStorePathException(string storeRoot, string path, string reason)
        : base($"refusing the image store {storeRoot}: {path} {reason}; "
               + "keep the store where only root can change the way to it (every folder owned by root and not writable by others, or sticky like /tmp with the next folder root's) and inside it only what rebootless made")
    {
        StoreRoot = storeRoot;
        UnsafePath = path;
        Reason = reason;
    }

    /// <summary>Creates the exception.</summary>
    public UnsafeStorePathException()
    {
        StoreRoot = UnsafePath = Reason = string.Empty;
    }

    /// <summary>Creates the exception.</summary>
    public UnsafeStorePathException(string message)
        : base(message)
    {
        StoreRoot = UnsafePath = Reason = string.Empty;
    }

    /// <summary>Creates the exception.</summary>
    public UnsafeStorePathException(string message, Exception innerException)
        : base(message, innerException)
    {
        StoreRoot = UnsafePath = Reason = string.Empty;
    }

    /// <summary>The store's root folder.</summary>
    public string StoreRoot { get; }

    /// <summary>The folder, link or file that cannot be trusted.</summary>
    public string UnsafePath { get; }

    /// <summary>Why not.</summary>
    public string Reason { get; }
}

/// <summary>A checkpoint set failed verification and must not be restored.</summary>
public sealed class CheckpointSetVerificationException : ImageStoreException
{
    /// <summary>Creates the exception from a failed verification.</summary>
    public CheckpointSetVerificationException(VerificationResult result)
        : base(ArgumentNullExceptionHelper.NotNull(result).Describe() + "; the set cannot be restored")
    {
        Result = result;
    }

    /// <summary>Creates the exception.</summary>
    public CheckpointSetVerificationException()
    {
    }

    /// <summary>Creates the exception.</summary>
    public CheckpointSetVerificationException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception.</summary>
    public CheckpointSetVerificationException(string message, Exception innerException)
        : base(message, innerException)
    {
    }

    /// <summary>The verification that failed (every mismatch it found).</summary>
    public VerificationResult? Result { get; }
}

/// <summary>No checkpoint set with the given id exists in the store.</summary>
public sealed class CheckpointSetNotFoundException : ImageStoreException
{
    /// <summary>Creates the exception.</summary>
    public CheckpointSetNotFoundException(string setId, string storeRoot)
        : base($"no checkpoint set '{setId}' in the image store at {storeRoot}; list the store's sets to see what it holds")
    {
        SetId = setId;
    }

    /// <summary>Creates the exception.</summary>
    public CheckpointSetNotFoundException()
    {
        SetId = string.Empty;
    }

    /// <summary>Creates the exception.</summary>
    public CheckpointSetNotFoundException(string message, Exception innerException)
        : base(message, innerException)
    {
        SetId = string.Empty;
    }

    /// <summary>The id that was asked for.</summary>
    public string SetId { get; }
}

internal static class ArgumentNullExceptionHelper
{
    public static T NotNull<T>(T? value)
        where T : class
    {
        ArgumentNullException.ThrowIfNull(value);
        return value;
    }
}
