using System.ComponentModel;
using System.Diagnostics;
using System.Text;

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
/// The one way RebootlessUpdate and its CRIU client run a tool (kexec, systemctl, runc, mkfs, blkid, fusermount,
/// pramfs, the front of <c>criu lazy-pages</c>; CRIU's own worker is spawned by the client's transport): arguments
/// passed as a list (no shell), standard input closed, both outputs read to the end, and a bound on time after which
/// the tool and every process it started are killed. Cancellation kills it the same way and then throws.
/// </summary>
internal static class ProcessRunner
{
    /// <summary>How long to wait for a killed tool to be reaped before giving up on it.</summary>
    private static readonly TimeSpan ReapAfterKill = TimeSpan.FromSeconds(10);

    /// <summary>How long the outputs are read after a tool exited, at least (they end at once unless a process it left holds them).</summary>
    private static readonly TimeSpan MinimumDrain = TimeSpan.FromSeconds(1);

    /// <summary>Runs <paramref name="file"/> to its end or until <paramref name="timeout"/>.</summary>
    /// <exception cref="ToolNotStartedException">The file cannot be started.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled; the tool was killed.</exception>
    public static ToolRun Run(string file, IEnumerable<string> args, TimeSpan timeout, CancellationToken cancellationToken = default) =>
        Run(file, args, timeout, null, cancellationToken);

    /// <summary>As <see cref="Run(string, IEnumerable{string}, TimeSpan, CancellationToken)"/>, with <paramref name="environment"/> set on top of ours.</summary>
    public static ToolRun Run(string file, IEnumerable<string> args, TimeSpan timeout, IReadOnlyList<KeyValuePair<string, string>>? environment,
        CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        using var process = Start(file, args, redirectInput: true, environment);
        process.StandardInput.Close();
        var started = Stopwatch.GetTimestamp();
        var stdout = new Output(process.StandardOutput);
        var stderr = new Output(process.StandardError);
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
            Output.WaitBoth(stdout, stderr, ReapAfterKill);
            return new ToolRun(-1, stdout.Text, stderr.Text, TimedOut: true);
        }

        // Both pipes end at once unless a process it left behind holds them: then what was written by the deadline
        // (at least a second after the exit) is the output.
        var left = timeout - Stopwatch.GetElapsedTime(started);
        Output.WaitBoth(stdout, stderr, left > MinimumDrain ? left : MinimumDrain);
        return new ToolRun(process.ExitCode, stdout.Text, stderr.Text, TimedOut: false);
    }

    /// <inheritdoc cref="Run(string, IEnumerable{string}, TimeSpan, CancellationToken)"/>
    public static Task<ToolRun> RunAsync(string file, IReadOnlyList<string> args, TimeSpan timeout, CancellationToken cancellationToken) =>
        Task.Factory.StartNew(() => Run(file, args, timeout, cancellationToken), cancellationToken,
            TaskCreationOptions.LongRunning | TaskCreationOptions.DenyChildAttach, TaskScheduler.Default);

    /// <summary>
    /// Starts a long-running tool (a daemon the caller owns): its outputs are redirected, the caller reads them.
    /// </summary>
    /// <exception cref="ToolNotStartedException">The file cannot be started.</exception>
    public static Process Start(string file, IEnumerable<string> args, bool redirectInput = false,
        IReadOnlyList<KeyValuePair<string, string>>? environment = null)
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

        foreach (var (name, value) in environment ?? [])
        {
            psi.Environment[name] = value;
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

    /// <summary>One output of a tool, read as it comes, so that what was written is there even if the pipe never ends.</summary>
    private sealed class Output
    {
        private readonly StringBuilder _text = new();

        public Output(StreamReader reader) => Done = PumpAsync(reader);

        /// <summary>Completes when the pipe ended (or broke); never faults.</summary>
        public Task Done { get; }

        public string Text
        {
            get
            {
                lock (_text)
                {
                    return _text.ToString();
                }
            }
        }

        public static void WaitBoth(Output a, Output b, TimeSpan bound) => Task.WhenAll(a.Done, b.Done).Wait(bound);

        private async Task PumpAsync(StreamReader reader)
        {
            var buffer = new char[4096];
            try
            {
                int n;
                while ((n = await reader.ReadAsync(buffer.AsMemory(), CancellationToken.None).ConfigureAwait(false)) > 0)
                {
                    lock (_text)
                    {
                        _text.Append(buffer, 0, n);
                    }
                }
            }
            catch (Exception e) when (e is IOException or ObjectDisposedException)
            {
                // The process was disposed while something it left behind held the pipe: what was read is the output.
            }
        }
    }
}
