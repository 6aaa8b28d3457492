using System.Diagnostics;
using System.Globalization;

namespace RebootlessUpdate.Criu;

/// <summary>Options of a <c>criu lazy-pages</c> daemon. Immutable; validated when started.</summary>
public sealed record CriuLazyPagesOptions
{
    /// <summary>The images folder whose pages it serves (it only reads there). Required.</summary>
    public required string ImagesDirectory { get; init; }

    /// <summary>
    /// Where the daemon puts its socket (<c>lazy-pages.socket</c>), log and pid file. The
    /// lazy restore must use the same folder as its <see cref="CriuProcessOptions.WorkDirectory"/>:
    /// CRIU finds the socket there. Default: the images folder (CRIU's default), which leaves
    /// three files in it; give a separate folder to keep a sealed images folder unchanged.
    /// </summary>
    public string? WorkDirectory { get; init; }

    /// <summary>Its log file name inside the work folder. Default <c>lazy-pages.log</c>.</summary>
    public string LogFile { get; init; } = "lazy-pages.log";

    /// <summary>CRIU log level 0-4 (4 logs every page request). Default 2 (errors and warnings).</summary>
    public int LogLevel { get; init; } = 2;

    /// <summary>How long to wait for the socket. Default 30 s.</summary>
    public TimeSpan StartTimeout { get; init; } = TimeSpan.FromSeconds(30);

    internal string EffectiveWorkDirectory => WorkDirectory ?? ImagesDirectory;

    internal void Validate()
    {
        if (!Directory.Exists(ImagesDirectory))
        {
            throw new ArgumentException($"the images folder '{ImagesDirectory}' does not exist.", nameof(ImagesDirectory));
        }

        if (WorkDirectory is not null && !Directory.Exists(WorkDirectory))
        {
            throw new ArgumentException($"the work folder '{WorkDirectory}' does not exist.", nameof(WorkDirectory));
        }

        if (LogFile.Length == 0 || LogFile.Contains('/', StringComparison.Ordinal))
        {
            throw new ArgumentException($"LogFile '{LogFile}' must be a plain file name (CRIU puts it in the work folder).", nameof(LogFile));
        }

        if (LogLevel is < 0 or > 4)
        {
            throw new ArgumentOutOfRangeException(nameof(LogLevel), LogLevel, "CRIU log levels are 0 to 4.");
        }

        if (StartTimeout <= TimeSpan.Zero)
        {
            throw new ArgumentOutOfRangeException(nameof(StartTimeout), StartTimeout, "must be positive.");
        }
    }
}

/// <summary>
/// A <c>criu lazy-pages</c> daemon: it serves the memory of a lazily restored
/// tree (userfaultfd) from the images folder, copies the rest in the background
/// once the tree runs, and exits by itself when every page has been delivered.
/// CRIU's RPC has no request for it, so it is started through criu's command line,
/// detached (<c>--daemon</c>: its own session, standard streams on /dev/null, not a
/// child of this process), so it outlives the caller without holding its pipes.
/// Start it before <see cref="CriuClient.RestoreAsync"/> with
/// <see cref="CriuRestoreOptions.LazyPages"/> and the same work folder.
/// </summary>
public sealed class CriuLazyPagesDaemon : IAsyncDisposable
{
    /// <summary>The socket's name in the work folder (CRIU's).</summary>
    public const string SocketName = "lazy-pages.socket";

    private const string PidFileName = "lazy-pages.pid";

    private CriuLazyPagesDaemon(int pid, ulong startTime, string workDirectory, string logFile)
    {
        Pid = pid;
        StartTime = startTime;
        WorkDirectory = workDirectory;
        LogFile = logFile;
    }

    /// <summary>The daemon's pid.</summary>
    public int Pid { get; }

    /// <summary>Its start time (clock ticks since boot): tells it from a later process with the same pid.</summary>
    public ulong StartTime { get; }

    /// <summary>The folder holding its socket, log and pid file.</summary>
    public string WorkDirectory { get; }

    /// <summary>Its CRIU log.</summary>
    public string LogFile { get; }

    /// <summary>True once it has exited (served everything, or stopped).</summary>
    public bool HasExited => !IsRunning(Pid, StartTime);

    /// <summary>
    /// Starts the daemon over <paramref name="imagesDirectory"/> (socket and log in the
    /// images folder) and waits until its socket is ready (at most <paramref name="timeout"/>, default 30 s).
    /// </summary>
    /// <exception cref="CriuUnavailableException">criu cannot be started.</exception>
    /// <exception cref="CriuTransportException">The daemon did not get ready.</exception>
    public static Task<CriuLazyPagesDaemon> StartAsync(CriuClientOptions options, string imagesDirectory, TimeSpan? timeout = null,
        CancellationToken cancellationToken = default) =>
        StartAsync(options, new CriuLazyPagesOptions { ImagesDirectory = imagesDirectory, StartTimeout = timeout ?? TimeSpan.FromSeconds(30) }, cancellationToken);

    /// <summary>Starts the daemon and waits until its socket is ready.</summary>
    /// <exception cref="CriuUnavailableException">criu cannot be started.</exception>
    /// <exception cref="CriuTransportException">The daemon did not get ready (the message quotes its log).</exception>
    public static async Task<CriuLazyPagesDaemon> StartAsync(CriuClientOptions options, CriuLazyPagesOptions lazy, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(lazy);
        lazy.Validate();
        var work = lazy.EffectiveWorkDirectory;
        var socket = Path.Combine(work, SocketName);
        var pidFile = Path.Combine(work, PidFileName);
        var logFile = Path.Combine(work, lazy.LogFile);
        File.Delete(socket);
        File.Delete(pidFile);
        var psi = new ProcessStartInfo(options.ResolveCriuPath())
        {
            UseShellExecute = false,
            RedirectStandardInput = true,
            RedirectStandardError = true,
            RedirectStandardOutput = true,
            ArgumentList =
            {
                "lazy-pages", "-D", lazy.ImagesDirectory, "-W", work, "--daemon", "--pidfile", PidFileName,
                "-o", lazy.LogFile, "-v" + lazy.LogLevel.ToString(CultureInfo.InvariantCulture),
            },
        };
        Process front;
        try
        {
            front = Process.Start(psi) ?? throw new CriuUnavailableException($"cannot start {psi.FileName} lazy-pages");
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new CriuUnavailableException($"cannot start {psi.FileName} lazy-pages: {e.Message}", e);
        }

        using (front)
        {
            front.StandardInput.Close();
            var output = front.StandardOutput.ReadToEndAsync(CancellationToken.None);
            var error = front.StandardError.ReadToEndAsync(CancellationToken.None);
            // The front process returns once the socket listens and the daemon is forked off.
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            timeout.CancelAfter(lazy.StartTimeout);
            try
            {
                await front.WaitForExitAsync(timeout.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                front.Kill();
                await front.WaitForExitAsync(CancellationToken.None).ConfigureAwait(false);
                StopFromPidFile(pidFile);
                cancellationToken.ThrowIfCancellationRequested();
                throw new CriuTransportException($"criu lazy-pages did not get ready within {lazy.StartTimeout.TotalSeconds:0} s.\n  " + Excerpt(logFile));
            }

            var said = ((await output.ConfigureAwait(false)) + (await error.ConfigureAwait(false))).Trim();
            if (front.ExitCode != 0 || !File.Exists(socket) || ReadPid(pidFile) is not { } pid)
            {
                StopFromPidFile(pidFile);
                throw new CriuTransportException($"criu lazy-pages did not get ready (exit {front.ExitCode}){(said.Length == 0 ? "" : ": " + said)}.\n  " + Excerpt(logFile));
            }

            // Gone already (its pid may even be reused): never treat another process as the daemon.
            var started = StartTimeOf(pid) ?? throw new CriuTransportException(
                $"criu lazy-pages (pid {pid}) exited right after getting ready.\n  " + Excerpt(logFile));
            return new CriuLazyPagesDaemon(pid, started, work, logFile);
        }
    }

    /// <summary>Waits until the daemon has served every page and exited (it is not a child: polled).</summary>
    public async Task WaitForExitAsync(CancellationToken cancellationToken = default)
    {
        while (!HasExited)
        {
            await Task.Delay(20, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Stops the daemon if it still runs (a lazily restored tree then faults on pages not yet copied).</summary>
    public async ValueTask DisposeAsync()
    {
        if (!HasExited)
        {
            _ = Mono.Unix.Native.Syscall.kill(Pid, Mono.Unix.Native.Signum.SIGKILL);
        }

        for (var i = 0; i < 250 && !HasExited; i++)
        {
            await Task.Delay(20).ConfigureAwait(false);
        }
    }

    private static string Excerpt(string logFile) => string.Join("\n  ", CriuRequestFailedException.ExcerptLog(logFile));

    private static int? ReadPid(string pidFile)
    {
        try
        {
            return int.TryParse(File.ReadAllText(pidFile).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var pid) && pid > 0 ? pid : null;
        }
        catch (IOException)
        {
            return null;
        }
    }

    /// <summary>A daemon that got forked but was not judged ready is ours to stop.</summary>
    private static void StopFromPidFile(string pidFile)
    {
        if (ReadPid(pidFile) is { } pid && StartTimeOf(pid) is not null && IsCriu(pid))
        {
            _ = Mono.Unix.Native.Syscall.kill(pid, Mono.Unix.Native.Signum.SIGKILL);
        }
    }

    /// <summary>
    /// Pids of every <c>criu lazy-pages</c> daemon running on this host. While one runs, the tree it serves
    /// still misses pages: checkpointing that tree then would record them as holes.
    /// </summary>
    public static IReadOnlyList<int> FindRunning()
    {
        var found = new List<int>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (int.TryParse(Path.GetFileName(dir), NumberStyles.None, CultureInfo.InvariantCulture, out var pid)
                && CriuArguments(pid) is { } args && args.Contains("lazy-pages", StringComparer.Ordinal))
            {
                found.Add(pid);
            }
        }

        return found;
    }

    /// <summary>True when <paramref name="pid"/> runs criu (a pid file can outlive its process and name a stranger).</summary>
    private static bool IsCriu(int pid) => CriuArguments(pid) is not null;

    /// <summary>
    /// The arguments after the criu program in <paramref name="pid"/>'s command line, or null when it does
    /// not run criu (by name: criu may run through a loader or wrapper, so its comm can differ).
    /// </summary>
    private static string[]? CriuArguments(int pid)
    {
        string[] argv;
        try
        {
            argv = File.ReadAllText($"/proc/{pid.ToString(CultureInfo.InvariantCulture)}/cmdline").Split('\0');
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }

        var at = Array.FindIndex(argv, a => a == "criu" || a.EndsWith("/criu", StringComparison.Ordinal));
        return at < 0 ? null : argv[(at + 1)..];
    }

    private static bool IsRunning(int pid, ulong startTime) => StartTimeOf(pid) is { } now && (startTime == 0 || now == startTime);

    /// <summary>The start time of a live (not zombie) process, from /proc/PID/stat; null when it is gone.</summary>
    private static ulong? StartTimeOf(int pid)
    {
        string stat;
        try
        {
            stat = File.ReadAllText($"/proc/{pid.ToString(CultureInfo.InvariantCulture)}/stat");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }

        // The command may hold spaces and parentheses: the fields follow the last ')'.
        var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        return fields[0] is "Z" or "X" ? null
            : ulong.TryParse(fields[19], NumberStyles.None, CultureInfo.InvariantCulture, out var start) ? start : null;
    }
}
