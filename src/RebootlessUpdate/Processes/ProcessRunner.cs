using System.ComponentModel;
using System.Diagnostics;

namespace RebootlessUpdate.Processes;

/// <summary>How a tool run by <see cref="ProcessRunner"/> ended.</summary>
/// <param name="ExitCode">Its exit status (meaningless when <see cref="TimedOut"/>).</param>
/// <param name="Stdout">What it wrote to standard output.</param>
/// <param name="Stderr">What it wrote to standard error.</param>
/// <param name="TimedOut">It did not finish in time and was killed, with every process it started.</param>
internal sealed record ToolRun(int ExitCode, string Stdout, string Stderr, bool TimedOut)
{
    /// <summary>Standard output then standard error, trimmed: for messages.</summary>
    public string Output => (Stdout + Stderr).Trim();

    /// <summary>It ran to the end and exited 0.</summary>
    public bool Succeeded => !TimedOut && ExitCode == 0;

    /// <summary>The first non-empty line of standard error, else of standard output, else "exit N".</summary>
    public string FirstLine =>
        (Stderr + "\n" + Stdout).Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).FirstOrDefault()
        ?? $"exit {ExitCode}";
}

/// <summary>The file of a tool could not be started (missing, not executable).</summary>
internal sealed class ToolNotStartedException(string file, Exception inner)
    : Exception($"cannot run {file}: {inner.Message}", inner)
{
    /// <summary>The file that was to be run.</summary>
    public string File { get; } = file;
}

/// <summary>
/// The one way this library runs a system tool (kexec, systemctl, runc, mkfs, blkid, fusermount, pramfs): arguments
/// passed as a list (no shell), standard input closed, both outputs read to the end, and a bound on time after which
/// the tool and every process it started are killed. Cancellation kills it the same way and then throws.
/// </summary>
internal static class ProcessRunner
{
    /// <summary>How long to wait for a killed tool to be reaped before giving up on it.</summary>
    private static readonly TimeSpan ReapAfterKill = TimeSpan.FromSeconds(10);

    /// <summary>Runs <paramref name="file"/> to its end or until <paramref name="timeout"/>.</summary>
    /// <exception cref="ToolNotStartedException">The file cannot be started.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled; the tool was killed.</exception>
    public static ToolRun Run(string file, IEnumerable<string> args, TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        using var process = Start(file, args, redirectInput: true);
        process.StandardInput.Close();
        var stdout = process.StandardOutput.ReadToEndAsync(CancellationToken.None);
        var stderr = process.StandardError.ReadToEndAsync(CancellationToken.None);
        bool exited;
        try
        {
            exited = process.WaitForExitAsync(CancellationToken.None).Wait(timeout, cancellationToken);
        }
        catch (OperationCanceledException)
        {
            Kill(process);
            throw;
        }

        if (!exited)
        {
            Kill(process);
            return new ToolRun(-1, Drained(stdout, ReapAfterKill), Drained(stderr, ReapAfterKill), TimedOut: true);
        }

        // A process it left behind may still hold the pipes open: what was written by then is the output.
        return new ToolRun(process.ExitCode, Drained(stdout, timeout), Drained(stderr, timeout), TimedOut: false);
    }

    /// <inheritdoc cref="Run"/>
    public static Task<ToolRun> RunAsync(string file, IReadOnlyList<string> args, TimeSpan timeout, CancellationToken cancellationToken) =>
        Task.Factory.StartNew(() => Run(file, args, timeout, cancellationToken), cancellationToken,
            TaskCreationOptions.LongRunning | TaskCreationOptions.DenyChildAttach, TaskScheduler.Default);

    /// <summary>
    /// Starts a long-running tool (a daemon the caller owns): its outputs are redirected, the caller reads them.
    /// </summary>
    /// <exception cref="ToolNotStartedException">The file cannot be started.</exception>
    public static Process Start(string file, IEnumerable<string> args, bool redirectInput = false)
    {
        var psi = new ProcessStartInfo(file)
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = redirectInput,
        };
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }

        try
        {
            return Process.Start(psi) ?? throw new ToolNotStartedException(file, new InvalidOperationException("no process was started"));
        }
        catch (Win32Exception e)
        {
            throw new ToolNotStartedException(file, e);
        }
    }

    /// <summary>Kills the process and every process it started, and reaps it (bounded).</summary>
    public static void Kill(Process process)
    {
        try
        {
            process.Kill(entireProcessTree: true);
        }
        catch (InvalidOperationException)
        {
            // it exited on its own meanwhile
        }

        process.WaitForExit(ReapAfterKill);
    }

    /// <summary>An output read to its end, or empty when its pipe stays open longer than <paramref name="bound"/>.</summary>
    private static string Drained(Task<string> output, TimeSpan bound) => output.Wait(bound) ? output.Result : string.Empty;
}
