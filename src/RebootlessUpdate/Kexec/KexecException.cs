using System.Runtime.InteropServices;

namespace RebootlessUpdate.Kexec;

/// <summary>Why a kexec operation failed; see <see cref="KexecException.Reason"/>.</summary>
public enum KexecFailureReason
{
    /// <summary>The failure has no more specific classification; read the message and <see cref="KexecException.Errno"/>.</summary>
    Unknown = 0,

    /// <summary>The file is not an x86 bzImage kernel (no setup header, truncated, or not a kernel at all).</summary>
    NotAKernel,

    /// <summary>A kernel, initrd or tool file does not exist or cannot be read.</summary>
    FileNotFound,

    /// <summary>The composed command line is longer than the target kernel accepts.</summary>
    CommandLineTooLong,

    /// <summary>A command-line parameter cannot be expressed (a quote or control character in it, an empty name, ...).</summary>
    InvalidCommandLine,

    /// <summary>EPERM: the caller lacks CAP_SYS_BOOT, kexec was disabled (<c>kexec_load_disabled</c>), or kernel lockdown forbids it.</summary>
    NotPermitted,

    /// <summary>EKEYREJECTED, EBADMSG, ENOKEY, EKEYREVOKED, EKEYEXPIRED, ENOPKG: the kernel's signature is missing, malformed or not trusted, and signatures are enforced.</summary>
    SignatureRejected,

    /// <summary>ENOEXEC: the running kernel has no loader that accepts this image (not a kernel, wrong architecture, truncated).</summary>
    NotExecutable,

    /// <summary>EBUSY: another kexec load or unload is in progress.</summary>
    Busy,

    /// <summary>EINVAL: the kernel rejected an argument (flags, command line, a file that is not a regular file).</summary>
    InvalidArgument,

    /// <summary>ENOSYS: the running kernel has no <c>kexec_file_load</c> (built without <c>CONFIG_KEXEC_FILE</c>).</summary>
    NotSupported,

    /// <summary>ENOMEM: the kernel could not find (contiguous) memory for the segments.</summary>
    OutOfMemory,

    /// <summary>EBADF or EFAULT: a descriptor or pointer handed to the kernel was not valid (a bug in the caller or this library).</summary>
    BadDescriptor,

    /// <summary>kexec-tools failed (exit status and its output are in the message).</summary>
    ToolFailed,

    /// <summary>The jump was refused: not armed, a precondition of arming failed, or the environment does not allow it.</summary>
    JumpRefused,

    /// <summary>The jump was attempted but the system kept running on this kernel.</summary>
    JumpFailed,
}

/// <summary>
/// A kexec operation failed. The message names what failed, why, and what to
/// do; <see cref="Reason"/> classifies it and <see cref="Errno"/> keeps the
/// kernel's error number when one caused it.
/// </summary>
public sealed class KexecException : Exception
{
    /// <summary>Creates the exception.</summary>
    public KexecException(KexecFailureReason reason, string message, int errno = 0, Exception? innerException = null)
        : base(message, innerException)
    {
        Reason = reason;
        Errno = errno;
    }

    /// <summary>Creates the exception.</summary>
    public KexecException()
    {
    }

    /// <summary>Creates the exception.</summary>
    public KexecException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception.</summary>
    public KexecException(string message, Exception innerException)
        : base(message, innerException)
    {
    }

    /// <summary>What kind of failure this is.</summary>
    public KexecFailureReason Reason { get; }

    /// <summary>The errno the kernel returned, or 0 when the failure did not come from a system call.</summary>
    public int Errno { get; }

    /// <summary>The symbolic name and text of <see cref="Errno"/> (e.g. "EPERM (Operation not permitted)"), or null.</summary>
    public string? ErrnoDescription => Errno == 0 ? null : KexecErrno.Describe(Errno);
}

/// <summary>The errno values this driver distinguishes (x86-64 Linux numbering).</summary>
internal static class KexecErrno
{
    public const int EPERM = 1;
    public const int ENOENT = 2;
    public const int EINTR = 4;
    public const int ENOEXEC = 8;
    public const int EBADF = 9;
    public const int ENOMEM = 12;
    public const int EACCES = 13;
    public const int EFAULT = 14;
    public const int EBUSY = 16;
    public const int EINVAL = 22;
    public const int ENOSYS = 38;
    public const int ENOPKG = 65;
    public const int EBADMSG = 74;
    public const int ENOKEY = 126;
    public const int EKEYEXPIRED = 127;
    public const int EKEYREVOKED = 128;
    public const int EKEYREJECTED = 129;

    private static readonly Dictionary<int, string> Names = new()
    {
        [EPERM] = "EPERM", [ENOENT] = "ENOENT", [EINTR] = "EINTR", [ENOEXEC] = "ENOEXEC", [EBADF] = "EBADF",
        [ENOMEM] = "ENOMEM", [EACCES] = "EACCES", [EFAULT] = "EFAULT", [EBUSY] = "EBUSY", [EINVAL] = "EINVAL",
        [ENOSYS] = "ENOSYS", [ENOPKG] = "ENOPKG", [EBADMSG] = "EBADMSG", [ENOKEY] = "ENOKEY",
        [EKEYEXPIRED] = "EKEYEXPIRED", [EKEYREVOKED] = "EKEYREVOKED", [EKEYREJECTED] = "EKEYREJECTED",
    };

    public static string Describe(int errno) =>
        $"{(Names.TryGetValue(errno, out var name) ? name : "errno " + errno.ToString(System.Globalization.CultureInfo.InvariantCulture))} ({Marshal.GetPInvokeErrorMessage(errno)})";
}
