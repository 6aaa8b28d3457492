using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.RegularExpressions;

namespace RebootlessUpdate.Criu;

/// <summary>
/// CRIU answered a request with failure (the request reached CRIU; CRIU says no). The message always names the request,
/// then the cause CRIU logged first (<see cref="Cause"/>), the errno with its meaning, CRIU's own message when it sent
/// one, and the error lines of CRIU's log with some context, so the reader can act on it.
/// </summary>
public sealed partial class CriuRequestFailedException : CriuException
{
    /// <summary>Creates the exception.</summary>
    public CriuRequestFailedException(CriuRequestType request, int errno, string? criuMessage, string? logFile,
        IReadOnlyList<string> logExcerpt, Exception? inner = null, string? criuOutput = null)
        : base(Compose(request, errno, criuMessage, logFile, logExcerpt, inner, criuOutput), inner)
    {
        Cause = FindCause(errno, criuMessage, logExcerpt, criuOutput);
        CriuOutput = criuOutput;
        Request = request;
        Errno = errno;
        CriuMessage = criuMessage;
        LogFile = logFile;
        LogExcerpt = logExcerpt;
    }

    /// <summary>Creates the exception.</summary>
    public CriuRequestFailedException()
    {
        LogExcerpt = [];
    }

    /// <summary>Creates the exception.</summary>
    public CriuRequestFailedException(string message)
        : base(message)
    {
        LogExcerpt = [];
    }

    /// <summary>Creates the exception.</summary>
    public CriuRequestFailedException(string message, Exception innerException)
        : base(message, innerException)
    {
        LogExcerpt = [];
    }

    /// <summary>The request that failed.</summary>
    public CriuRequestType Request { get; }

    /// <summary>CRIU's <c>cr_errno</c> (0 when it sent none).</summary>
    public int Errno { get; }

    /// <summary>CRIU's <c>cr_errmsg</c>, when it sent one (often empty before CRIU 4.2).</summary>
    public string? CriuMessage { get; }

    /// <summary>The CRIU log of the request, when one was written.</summary>
    public string? LogFile { get; }

    /// <summary>What the criu process printed (stdout/stderr), when anything.</summary>
    public string? CriuOutput { get; }

    /// <summary>The log's error lines, each with a little context before it.</summary>
    public IReadOnlyList<string> LogExcerpt { get; }

    /// <summary>
    /// What went wrong, as CRIU put it first: its first error line (from the log, else from what it printed when it
    /// could not write a log, else its message); a pid collision ("Can't fork for N: File exists") is said in plain
    /// words. Null when CRIU said nothing but the errno.
    /// </summary>
    public string? Cause { get; }

    private static string Compose(CriuRequestType request, int errno, string? criuMessage, string? logFile,
        IReadOnlyList<string> logExcerpt, Exception? inner, string? criuOutput)
    {
        var sb = new StringBuilder();
        sb.Append("criu ").Append(Transport.CriuSession.Name(request)).Append(" failed: ");
        // The cause first: an errno alone ("56, Invalid request code") rarely says what to fix.
        var cause = FindCause(errno, criuMessage, logExcerpt, criuOutput);
        if (cause is not null)
        {
            sb.Append(cause).Append("; ");
        }

        sb.Append(errno != 0 ? $"errno {errno} ({Marshal.GetPInvokeErrorMessage(errno)})" : "no errno reported");
        // criu 4.1 reports its first logged error as the message; on hosts where it
        // may not raise RLIMIT_NOFILE that is a harmless line, not the failure.
        if (!string.IsNullOrWhiteSpace(criuMessage) && !IsHarmless(criuMessage) && cause?.Contains(criuMessage.Trim(), StringComparison.Ordinal) != true)
        {
            sb.Append("; criu says: ").Append(criuMessage.Trim());
        }

        if (inner is not null)
        {
            sb.Append("; a notification handler failed: ").Append(inner.Message);
        }

        if (logExcerpt.Count > 0)
        {
            sb.Append("\nfrom ").Append(logFile).Append(":\n  ").AppendJoin("\n  ", logExcerpt);
        }
        else if (logFile is not null)
        {
            sb.Append(" (no error lines in ").Append(logFile).Append(')');
        }

        if (!string.IsNullOrWhiteSpace(criuOutput))
        {
            var text = criuOutput.Trim();
            sb.Append("\ncriu printed:\n  ").Append(text.Length > 2000 ? text[^2000..] : text);
        }

        return sb.ToString();
    }

    private static bool IsHarmless(string line) => line.Contains("rlimit: Can't setup RLIMIT_NOFILE", StringComparison.Ordinal);

    /// <summary>The cause CRIU gave first (see <see cref="Cause"/>), or null.</summary>
    internal static string? FindCause(int errno, string? criuMessage, IReadOnlyList<string> logExcerpt, string? criuOutput)
    {
        var printed = criuOutput?.Split('\n') ?? [];
        string[] message = string.IsNullOrWhiteSpace(criuMessage) ? [] : [criuMessage];
        // A restore into a PID namespace where the tree's pid is taken (criu/cr-restore.c: clone3 with set_tid fails).
        foreach (var line in logExcerpt.Concat(printed).Concat(message))
        {
            if (CantFork().Match(line) is { Success: true } m && (errno == 17 || line.Contains("File exists", StringComparison.Ordinal)))
            {
                var pid = m.Groups["pid"].Value;
                return $"pid {pid} that the restored tree needs is still in use on this host (CRIU: Can't fork for {pid}: File exists)";
            }
        }

        // criu goes on from a refused seize of a live task to a misleading "Unable to detach" error: the refusal is the
        // cause. (compel warns the same for a zombie child or an exiting thread, which criu skips: no cause then.)
        if (RefusedSeizeIn(logExcerpt) is { } refused)
        {
            return $"criu could not seize process {refused.Pid} ({refused.Why}"
                + (refused.Why == "Operation not permitted" ? ": another tracer, such as a debugger, may hold it)" : ")");
        }

        return FirstError(logExcerpt) ?? FirstError(printed) ?? message.FirstOrDefault(m => !IsHarmless(m))?.Trim();

        static string? FirstError(IEnumerable<string> lines) => lines
            .Where(l => !IsHarmless(l))
            .Select(l => LogError().Match(l))
            .Where(m => m.Success)
            .Select(m => m.Groups["text"].Value.Trim())
            .FirstOrDefault(t => t.Length > 0);
    }

    /// <summary>
    /// The task whose seize the kernel refused and on which criu then failed ("Unable to interrupt task: N (why)",
    /// followed by "Unable to detach from N"), from a log excerpt; null when there was none.
    /// </summary>
    internal static (int Pid, string Why)? RefusedSeizeIn(IReadOnlyList<string> lines)
    {
        var failedOn = FailedDetaches(lines);
        return lines.Select(l => SeizeRefused().Match(l)).Where(m => m.Success && failedOn.Contains(m.Groups["pid"].Value))
            .Select(m => ((int, string)?)(int.Parse(m.Groups["pid"].Value, CultureInfo.InvariantCulture), m.Groups["why"].Value))
            .FirstOrDefault();
    }

    /// <summary>The task criu seized nothing of and could not detach from, that <see cref="Cause"/> names (see <see cref="RefusedSeizeIn"/>).</summary>
    internal int? RefusedSeizePid => RefusedSeizeIn(LogExcerpt)?.Pid;

    private static HashSet<string> FailedDetaches(IEnumerable<string> lines) =>
        [.. lines.Select(l => DetachFailed().Match(l)).Where(m => m.Success).Select(m => m.Groups["pid"].Value)];

    /// <summary>compel's error when criu lets go of a task it never seized: "Unable to detach from 1234: No such process".</summary>
    [GeneratedRegex(@"Unable to detach from (?<pid>\d+):")]
    private static partial Regex DetachFailed();

    /// <summary>compel's warning when PTRACE_SEIZE of a task fails: "Unable to interrupt task: 1234 (Operation not permitted)".</summary>
    [GeneratedRegex(@"Unable to interrupt task: (?<pid>\d+) \((?<why>[^)]*)\)")]
    private static partial Regex SeizeRefused();

    /// <summary>"Can't fork for 1234" (criu 3.x and 4.x word it so).</summary>
    [GeneratedRegex(@"Can't fork for (?<pid>\d+)")]
    private static partial Regex CantFork();

    /// <summary>A CRIU error line: "(00.012345) Error (criu/file.c:123): text", or "Error (criu/file.c:123): text" on stderr.</summary>
    [GeneratedRegex(@"Error \([^)]*\):\s*(?<text>.*)$")]
    private static partial Regex LogError();

    /// <summary>
    /// The error lines of a CRIU log (and compel's warning that the seize of a task was refused, when criu then failed
    /// on that task with a misleading error), each preceded by up to <paramref name="context"/> lines, at most <paramref name="maxLines"/>
    /// lines in all.
    /// </summary>
    internal static IReadOnlyList<string> ExcerptLog(string? path, int context = 2, int maxLines = 40)
    {
        if (path is null || !File.Exists(path))
        {
            return [];
        }

        string[] lines;
        try
        {
            lines = File.ReadAllLines(path);
        }
        catch (IOException)
        {
            return [];
        }
        catch (UnauthorizedAccessException)
        {
            return [];
        }

        var keep = new SortedSet<int>();
        var failedOn = FailedDetaches(lines);
        for (var i = 0; i < lines.Length; i++)
        {
            // CRIU 4.1 logs a harmless "Error ... rlimit: Can't setup RLIMIT_NOFILE" on every
            // run where it may not raise its own limit; it is not the failure.
            if ((lines[i].Contains("Error", StringComparison.Ordinal) && !IsHarmless(lines[i]))
                || (SeizeRefused().Match(lines[i]) is { Success: true } refused && failedOn.Contains(refused.Groups["pid"].Value)))
            {
                for (var j = Math.Max(0, i - context); j <= i; j++)
                {
                    keep.Add(j);
                }
            }
        }

        return [.. keep.Take(maxLines).Select(i => lines[i])];
    }
}
