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
