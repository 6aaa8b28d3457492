namespace RebootlessUpdate.TestSupport;

/// <summary>The outcome of <see cref="ProcessRunner.Run"/>.</summary>
/// <param name="ExitCode">Exit status of the process.</param>
/// <param name="Output">Everything written to stdout.</param>
/// <param name="Error">Everything written to stderr.</param>
public sealed record ProcessResult(int ExitCode, string Output, string Error)
{
    /// <summary>Stdout and stderr, for assertion messages.</summary>
    public override string ToString() => $"exit {ExitCode}\n--- stdout ---\n{Output}\n--- stderr ---\n{Error}";
}

/// <summary>
/// Runs a helper program for a test and waits for it, bounded: the product's one process runner
/// (<see cref="Processes.ProcessRunner"/>), with a test's failure mode (a timeout throws).
/// </summary>
public static class ProcessRunner
{
    /// <summary>
    /// Runs <paramref name="file"/> with <paramref name="args"/>; kills its whole
    /// process tree and throws <see cref="TimeoutException"/> after <paramref name="timeout"/>.
    /// <paramref name="environment"/> is set on top of ours.
    /// </summary>
    public static ProcessResult Run(string file, IEnumerable<string> args, TimeSpan timeout, IReadOnlyList<KeyValuePair<string, string>>? environment = null)
    {
        var list = args.ToList();
        var run = Processes.ProcessRunner.Run(file, list, timeout, environment);
        if (run.TimedOut)
        {
            throw new TimeoutException($"{file} {string.Join(' ', list)} did not finish within {timeout}; killed.\n{run.Stdout}\n{run.Stderr}");
        }

        return new ProcessResult(run.ExitCode, run.Stdout, run.Stderr);
    }
}
