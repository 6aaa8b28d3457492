using System.Diagnostics;
using System.Text;

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

/// <summary>Runs a helper program for a test and waits for it, bounded.</summary>
public static class ProcessRunner
{
    /// <summary>
    /// Runs <paramref name="file"/> with <paramref name="args"/>; kills its whole
    /// process tree and throws <see cref="TimeoutException"/> after <paramref name="timeout"/>.
    /// </summary>
    public static ProcessResult Run(string file, IEnumerable<string> args, TimeSpan timeout, string? workingDirectory = null)
    {
        var psi = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        if (workingDirectory is not null)
        {
            psi.WorkingDirectory = workingDirectory;
        }

        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }

        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {file}");
        p.StandardInput.Close();
        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        p.OutputDataReceived += (_, e) => { if (e.Data is not null) { lock (stdout) { stdout.AppendLine(e.Data); } } };
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) { lock (stderr) { stderr.AppendLine(e.Data); } } };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        if (!p.WaitForExit(timeout))
        {
            p.Kill(entireProcessTree: true);
            p.WaitForExit(TimeSpan.FromSeconds(10));
            throw new TimeoutException($"{file} {string.Join(' ', args)} did not finish within {timeout}; killed.\n{stdout}\n{stderr}");
        }

        p.WaitForExit(); // flushes the asynchronous readers
        return new ProcessResult(p.ExitCode, stdout.ToString(), stderr.ToString());
    }
}
