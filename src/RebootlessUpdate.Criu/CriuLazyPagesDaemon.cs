using System.Diagnostics;

namespace RebootlessUpdate.Criu;

/// <summary>
/// A <c>criu lazy-pages</c> daemon: it serves the memory of a lazily restored
/// tree (userfaultfd) from the images folder, then exits when every page has
/// been delivered. CRIU's RPC has no request for it, so it is started through
/// criu's command line. Start it before <see cref="CriuClient.RestoreAsync"/>
/// with <see cref="CriuRestoreOptions.LazyPages"/>.
/// </summary>
public sealed class CriuLazyPagesDaemon : IAsyncDisposable
{
    private readonly Process _process;

    private CriuLazyPagesDaemon(Process process, string logFile)
    {
        _process = process;
        LogFile = logFile;
    }

    /// <summary>The daemon's pid.</summary>
    public int Pid => _process.Id;

    /// <summary>Its CRIU log.</summary>
    public string LogFile { get; }

    /// <summary>True once it has served everything and exited.</summary>
    public bool HasExited => _process.HasExited;

    /// <summary>
    /// Starts the daemon over <paramref name="imagesDirectory"/> and waits until
    /// its socket is ready (at most <paramref name="timeout"/>, default 30 s).
    /// </summary>
    /// <exception cref="CriuUnavailableException">criu cannot be started.</exception>
    /// <exception cref="CriuTransportException">The daemon exited or did not get ready in time.</exception>
    public static async Task<CriuLazyPagesDaemon> StartAsync(CriuClientOptions options, string imagesDirectory, TimeSpan? timeout = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (!Directory.Exists(imagesDirectory))
        {
            throw new ArgumentException($"the images folder '{imagesDirectory}' does not exist.", nameof(imagesDirectory));
        }

        var socket = Path.Combine(imagesDirectory, "lazy-pages.socket");
        File.Delete(socket);
        var psi = new ProcessStartInfo(options.ResolveCriuPath())
        {
            UseShellExecute = false,
            RedirectStandardError = true,
            RedirectStandardOutput = true,
            ArgumentList = { "lazy-pages", "-D", imagesDirectory, "-o", "lazy-pages.log", "-v4" },
        };
        Process process;
        try
        {
            process = Process.Start(psi) ?? throw new CriuUnavailableException($"cannot start {psi.FileName} lazy-pages");
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new CriuUnavailableException($"cannot start {psi.FileName} lazy-pages: {e.Message}", e);
        }

        var daemon = new CriuLazyPagesDaemon(process, Path.Combine(imagesDirectory, "lazy-pages.log"));
        var deadline = Stopwatch.StartNew();
        while (!File.Exists(socket))
        {
            if (process.HasExited || deadline.Elapsed > (timeout ?? TimeSpan.FromSeconds(30)))
            {
                await daemon.DisposeAsync().ConfigureAwait(false);
                var excerpt = string.Join("\n  ", CriuRequestFailedException.ExcerptLog(daemon.LogFile));
                throw new CriuTransportException($"criu lazy-pages did not get ready (exit {(process.HasExited ? process.ExitCode : "none: timed out")}).\n  {excerpt}");
            }

            await Task.Delay(20, cancellationToken).ConfigureAwait(false);
        }

        return daemon;
    }

    /// <summary>Waits until the daemon has served every page and exited.</summary>
    public Task WaitForExitAsync(CancellationToken cancellationToken = default) => _process.WaitForExitAsync(cancellationToken);

    /// <summary>Stops the daemon if it still runs (the lazily restored tree then faults on pages not yet copied).</summary>
    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            _process.Kill();
        }

        await _process.WaitForExitAsync().ConfigureAwait(false);
        _process.Dispose();
    }
}
