using Microsoft.Extensions.Logging;
using RebootlessUpdate.Processes;

namespace RebootlessUpdate.Criu;

/// <summary>
/// criu probes the kernel's features (its "kerndat") at the start of every dump, restore and lazy-pages daemon, and
/// keeps the result in <c>/run/criu.kdat</c> (a tmpfs, so a new boot starts without it); every later criu of the boot
/// loads that file instead. On a kernel just booted, the first criu's probe costs seconds under emulation, and
/// restores and daemons started together each probe on their own. One <c>criu check --feature uffd-noncoop</c> (the
/// smallest command that probes and writes the cache) started early, while the resume does other work, pays it once.
/// </summary>
internal static partial class KernelProbeCache
{
    /// <summary>Where criu keeps the probe (criu's KERNDAT_CACHE_FILE).</summary>
    internal const string CacheFile = "/run/criu.kdat";

    /// <summary>How long the probe may take before it is given up (a restore then probes on its own, as before).</summary>
    internal static readonly TimeSpan Limit = TimeSpan.FromSeconds(60);

    /// <summary>Runs the probe unless the cache is there; never throws (it only saves time).</summary>
    public static async Task PrimeAsync(CriuClientOptions options, ILogger logger, string cacheFile = CacheFile, TimeSpan? limit = null)
    {
        if (File.Exists(cacheFile))
        {
            return;
        }

        var started = System.Diagnostics.Stopwatch.GetTimestamp();
        try
        {
            var run = await ProcessRunner.RunAsync(options.ResolveCriuPath(), ["check", "--feature", "uffd-noncoop"], limit ?? Limit, CancellationToken.None).ConfigureAwait(false);
            Log.Primed(logger, run.TimedOut ? "timed out" : $"exit {run.ExitCode}", System.Diagnostics.Stopwatch.GetElapsedTime(started).TotalSeconds, File.Exists(cacheFile));
        }
        catch (Exception e) when (e is CriuUnavailableException or ToolNotStartedException or IOException or InvalidOperationException or UnauthorizedAccessException)
        {
            Log.NotPrimed(logger, e.Message);
        }
    }

    private static partial class Log
    {
        [LoggerMessage(30, LogLevel.Debug, "criu's kernel probe: {Outcome} after {Seconds:0.###} s; cache written: {Cached}")]
        public static partial void Primed(ILogger logger, string outcome, double seconds, bool cached);

        [LoggerMessage(31, LogLevel.Debug, "criu's kernel probe did not run: {Reason}")]
        public static partial void NotPrimed(ILogger logger, string reason);
    }
}
