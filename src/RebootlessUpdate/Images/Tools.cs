using RebootlessUpdate.Processes;

namespace RebootlessUpdate.Images;

/// <summary>Runs a system tool of the stores (mkfs.ext4, blkid, fusermount3, pramfs) and words its failures for the store.</summary>
internal static class Tools
{
    /// <summary>
    /// Runs the tool; its exit code and both outputs (stdout, then stderr). With <c>throwOnMissing</c> false, a tool
    /// that cannot be started gives exit code -1 and no output.
    /// </summary>
    /// <exception cref="ImageStoreException">The tool cannot be started, or did not finish within the timeout (it was killed).</exception>
    internal static (int ExitCode, string Output) Run(string file, IEnumerable<string> args, TimeSpan timeout, bool throwOnMissing = true)
    {
        var list = args.ToList();
        ToolRun run;
        try
        {
            run = ProcessRunner.Run(file, list, timeout);
        }
        catch (ToolNotStartedException e)
        {
            return throwOnMissing ? throw new ImageStoreException($"{e.Message}; install it (e2fsprogs / util-linux)", e) : (-1, string.Empty);
        }

        return run.TimedOut
            ? throw new ImageStoreException($"{file} {string.Join(' ', list)} did not finish within {timeout}; killed")
            : (run.ExitCode, run.Stdout + run.Stderr);
    }
}
