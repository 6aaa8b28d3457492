using System.Globalization;

namespace RebootlessUpdate.Criu;

/// <summary>
/// A request's watchdog expired (<see cref="CriuClientOptions.RequestTimeout"/>): criu worked
/// on it longer than allowed, or stopped responding. By the time this is thrown the swrk
/// worker has been killed (SIGKILL) and reaped, so the kernel has released every process it
/// had seized; a cgroup it froze through the freezer stays frozen until someone thaws it.
/// With a <c>criu service</c> only the connection is shut down: its worker is not ours to kill.
/// </summary>
public sealed class CriuTimeoutException : CriuException
{
    /// <summary>Creates the exception.</summary>
    public CriuTimeoutException(CriuRequestType request, TimeSpan timeout, int? workerPid, string peer, string? logFile,
        IReadOnlyList<string> logExcerpt, string? criuOutput)
        : base(Compose(request, timeout, workerPid, peer, logFile, logExcerpt))
    {
        Request = request;
        Timeout = timeout;
        WorkerPid = workerPid;
        LogFile = logFile;
        LogExcerpt = logExcerpt;
        CriuOutput = criuOutput;
    }

    /// <summary>Creates the exception.</summary>
    public CriuTimeoutException()
    {
        LogExcerpt = [];
    }

    /// <summary>Creates the exception.</summary>
    public CriuTimeoutException(string message)
        : base(message)
    {
        LogExcerpt = [];
    }

    /// <summary>Creates the exception.</summary>
    public CriuTimeoutException(string message, Exception? innerException)
        : base(message, innerException)
    {
        LogExcerpt = [];
    }

    /// <summary>The request that timed out.</summary>
    public CriuRequestType Request { get; }

    /// <summary>The watchdog's limit (criu's time on the request).</summary>
    public TimeSpan Timeout { get; }

    /// <summary>The pid of the swrk worker that was killed; null for a service connection.</summary>
    public int? WorkerPid { get; }

    /// <summary>The CRIU log of the request, when one was written.</summary>
    public string? LogFile { get; }

    /// <summary>The last lines of that log.</summary>
    public IReadOnlyList<string> LogExcerpt { get; }

    /// <summary>What the criu process printed (stdout/stderr), when anything.</summary>
    public string? CriuOutput { get; }

    /// <summary>The last <paramref name="lines"/> lines of a log (read from its end: a level-4 dump log can be large).</summary>
    internal static IReadOnlyList<string> TailLog(string? path, int lines = 6)
    {
        if (path is null)
        {
            return [];
        }

        try
        {
            using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            var length = Math.Min(file.Length, 4096);
            file.Seek(-length, SeekOrigin.End);
            var buffer = new byte[length];
            file.ReadExactly(buffer);
            var text = System.Text.Encoding.UTF8.GetString(buffer).Split('\n', StringSplitOptions.RemoveEmptyEntries);
            var cut = length < file.Length ? 1 : 0; // then the first piece may be a cut line
            return [.. text.Skip(cut).TakeLast(lines)];
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return [];
        }
    }

    private static string Compose(CriuRequestType request, TimeSpan timeout, int? workerPid, string peer, string? logFile, IReadOnlyList<string> logExcerpt)
    {
        var name = Transport.CriuSession.Name(request);
        var limit = timeout.TotalSeconds.ToString("0.###", CultureInfo.InvariantCulture);
        var what = workerPid is not null
            ? "did not finish it and was killed (SIGKILL), which releases the processes it held"
            : "did not finish it; the connection was shut down (the service's worker is not ours to kill: check it)";
        // One line (the tool prints it as one): the last few log lines joined; all of them are in LogExcerpt.
        var log = logExcerpt.Count > 0 ? " criu's log ends: " + string.Join(" | ", logExcerpt.TakeLast(3).Select(l => l.Trim())) : string.Empty;
        // criu's parasite prints new_sp just before its final sigreturn, where criu waits for a hardware breakpoint.
        var breakpoint = logExcerpt.Count > 0 && logExcerpt[^1].Contains("new_sp=", StringComparison.Ordinal)
            ? " It stopped where criu waits for a hardware breakpoint: on a machine that does not fire them, have criu avoid "
                + "them (CriuClientOptions.Breakpoints, the tool's --criu-breakpoints avoid; a criu service needs CRIU_FAULT=130)."
            : string.Empty;
        return $"criu {name} timed out after {limit} s: {peer} {what}. "
            + "If criu is only slow (a large dump), raise the timeout (CriuClientOptions.RequestTimeout, the tool's --criu-timeout); "
            + $"otherwise find out what stopped criu{(logFile is null ? "" : $" (its log: {logFile})")}.{breakpoint}{log}";
    }
}
