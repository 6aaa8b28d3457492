using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace RebootlessUpdate.Criu;

/// <summary>How a <see cref="CriuClient"/> reaches CRIU.</summary>
public sealed record CriuClientOptions
{
    /// <summary>
    /// The criu binary: a path, or a name looked up on PATH. Default <c>criu</c>.
    /// A wrapper script works too (it must exec criu, keeping its arguments and fds).
    /// </summary>
    public string CriuPath { get; init; } = "criu";

    /// <summary>
    /// Address of a running <c>criu service --address PATH</c> to use instead of
    /// starting a <c>criu swrk</c> worker per request. In service mode CRIU
    /// rejects restore-as-sibling and inherited descriptors. Default: none (swrk).
    /// </summary>
    public string? ServiceAddress { get; init; }

    /// <summary>Logging for requests, notifications and failures. Default: none.</summary>
    public ILoggerFactory LoggerFactory { get; init; } = NullLoggerFactory.Instance;

    /// <summary>The default of <see cref="RequestTimeout"/>: 10 minutes.</summary>
    public static readonly TimeSpan DefaultRequestTimeout = TimeSpan.FromMinutes(10);

    /// <summary>
    /// The watchdog of every request: how long criu may work on one request before it is
    /// taken for hung. When it expires the swrk worker is killed (SIGKILL; the kernel then
    /// releases every process it had seized), a service connection is shut down, and the
    /// request fails with <see cref="CriuTimeoutException"/>. It counts criu's time only:
    /// from sending the request (or the answer to a notification) until criu's next message.
    /// Time spent in <see cref="CriuProcessOptions.OnNotification"/> is not counted (criu
    /// waits for it, e.g. a dump held at post-dump); bound that with the cancellation token.
    /// <see cref="CriuProcessOptions.RequestTimeout"/> overrides it for one request;
    /// <see cref="Timeout.InfiniteTimeSpan"/> turns the watchdog off. Default 10 minutes
    /// (<see cref="DefaultRequestTimeout"/>): ample for dumping tens of GiB to a local disk.
    /// </summary>
    public TimeSpan RequestTimeout { get; init; } = DefaultRequestTimeout;

    /// <summary>
    /// Whether the criu workers this client starts may use hardware breakpoints (see <see cref="CriuBreakpoints"/>).
    /// Default <see cref="CriuBreakpoints.Auto"/>: probed once per process. A <c>criu service</c> at
    /// <see cref="ServiceAddress"/> is not started by the client: where breakpoints do not fire, start it with
    /// <c>CRIU_FAULT=130</c> in its environment.
    /// </summary>
    public CriuBreakpoints Breakpoints { get; init; } = CriuBreakpoints.Auto;

    /// <summary>The clock of the request watchdog. Default <see cref="TimeProvider.System"/>.</summary>
    public TimeProvider TimeProvider { get; init; } = TimeProvider.System;

    private static readonly TimeSpan MaxRequestTimeout = TimeSpan.FromMilliseconds(int.MaxValue);

    /// <summary>A timeout is positive, or infinite (no watchdog).</summary>
    internal static void ValidateTimeout(TimeSpan timeout, string name)
    {
        if ((timeout <= TimeSpan.Zero && timeout != Timeout.InfiniteTimeSpan) || timeout > MaxRequestTimeout)
        {
            throw new ArgumentOutOfRangeException(name, timeout, "a request timeout must be positive and at most 24 days, or Timeout.InfiniteTimeSpan for none.");
        }
    }

    internal string ResolveCriuPath()
    {
        if (CriuPath.Contains('/', StringComparison.Ordinal))
        {
            return File.Exists(CriuPath)
                ? CriuPath
                : throw new CriuUnavailableException($"criu not found at '{CriuPath}'. Install CRIU 4.0 or newer, or set CriuClientOptions.CriuPath.");
        }

        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? string.Empty).Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            var candidate = Path.Combine(dir, CriuPath);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        throw new CriuUnavailableException($"'{CriuPath}' is not on PATH. Install CRIU 4.0 or newer, or set CriuClientOptions.CriuPath.");
    }
}
