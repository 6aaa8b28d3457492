using System.Globalization;
using System.Runtime.InteropServices;
using Mono.Unix.Native;
using RebootlessUpdate.Criu.Interop;
using RebootlessUpdate.Processes;

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

    /// <summary>
    /// A page server to fetch page contents from (<c>--page-server --address A --port P</c>), e.g. a
    /// <see cref="LazyPageServer"/>'s <see cref="LazyPageServer.Endpoint"/>, instead of the images folder's
    /// <c>pages-*.img</c>. The daemon still reads the pagemaps and the rest of the images folder locally, and
    /// connects only once the restore has handed it the tree. Default: none (pages come from the images folder).
    /// </summary>
    public CriuPageServerEndpoint? PageServer { get; init; }

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

        if (PageServer is { } server && (string.IsNullOrWhiteSpace(server.Address) || server.Port is <= 0 or > 65535))
        {
            throw new ArgumentException($"the page server {server.Address}:{server.Port} needs an address and a port 1-65535.", nameof(PageServer));
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
public sealed partial class CriuLazyPagesDaemon : IAsyncDisposable
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
        if (Find(work) is { } previous)
        {
            // Left by an earlier restore of this folder (its caller was killed): a new restore means the tree it
            // was for does not run, and once its pid file is replaced nothing could ever find it again.
            await previous.DisposeAsync().ConfigureAwait(false);
        }

        File.Delete(socket);
        File.Delete(pidFile);
        var criu = options.ResolveCriuPath();
        string[] args =
        [
            "lazy-pages", "-D", lazy.ImagesDirectory, "-W", work, "--daemon", "--pidfile", PidFileName,
            "-o", lazy.LogFile, "-v" + lazy.LogLevel.ToString(CultureInfo.InvariantCulture),
            .. lazy.PageServer is { } server
                ? ["--page-server", "--address", server.Address, "--port", server.Port.ToString(CultureInfo.InvariantCulture)]
                : Array.Empty<string>(),
        ];
        ToolRun front;
        try
        {
            // The front process returns once the socket listens and the daemon is forked off.
            front = await ProcessRunner.RunAsync(criu, args, lazy.StartTimeout, cancellationToken).ConfigureAwait(false);
        }
        catch (ToolNotStartedException e)
        {
            throw new CriuUnavailableException($"cannot start {criu} lazy-pages: {e.InnerException!.Message}", e);
        }
        catch (OperationCanceledException)
        {
            StopFromPidFile(pidFile);
            throw;
        }

        if (front.TimedOut)
        {
            StopFromPidFile(pidFile);
            throw new CriuTransportException($"criu lazy-pages did not get ready within {lazy.StartTimeout.TotalSeconds:0} s.\n  " + Excerpt(logFile));
        }

        if (front.ExitCode != 0 || !File.Exists(socket) || ReadPid(pidFile) is not { } pid)
        {
            StopFromPidFile(pidFile);
            var said = front.Output;
            throw new CriuTransportException($"criu lazy-pages did not get ready (exit {front.ExitCode}){(said.Length == 0 ? "" : ": " + said)}.\n  " + Excerpt(logFile));
        }

        // Gone already (its pid may even be reused): never treat another process as the daemon.
        var started = PidfdSignal.StartTimeOf(pid) ?? throw new CriuTransportException(
            $"criu lazy-pages (pid {pid}) exited right after getting ready.\n  " + Excerpt(logFile));
        return new CriuLazyPagesDaemon(pid, started, work, logFile);
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
        _ = PidfdSignal.Kill(Pid, StartTime);

        for (var i = 0; i < 250 && !HasExited; i++)
        {
            await Task.Delay(20).ConfigureAwait(false);
        }
    }

    private static string Excerpt(string logFile) => string.Join("\n  ", CriuRequestFailedException.ExcerptLog(logFile));

    /// <summary>
    /// The pid a pid file names, or null. Read without following a symlink and without blocking (a FIFO planted in
    /// its place must not hang the caller): only a small regular file counts.
    /// </summary>
    private static unsafe int? ReadPid(string pidFile)
    {
        var fd = Syscall.open(pidFile, OpenFlags.O_RDONLY | OpenFlags.O_NOFOLLOW | OpenFlags.O_NONBLOCK | OpenFlags.O_CLOEXEC);
        if (fd < 0)
        {
            return null;
        }

        try
        {
            if (Syscall.fstat(fd, out var st) != 0 || (st.st_mode & FilePermissions.S_IFMT) != FilePermissions.S_IFREG || st.st_size > 32)
            {
                return null;
            }

            var buffer = stackalloc byte[32];
            var n = Syscall.read(fd, buffer, 32);
            var text = n > 0 ? System.Text.Encoding.ASCII.GetString(buffer, (int)n).Trim() : string.Empty;
            return int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var pid) && pid > 0 ? pid : null;
        }
        finally
        {
            _ = Syscall.close(fd);
        }
    }

    /// <summary>A daemon that got forked but was not judged ready is ours to stop.</summary>
    private static void StopFromPidFile(string pidFile)
    {
        if (ReadPid(pidFile) is { } pid && PidfdSignal.StartTimeOf(pid) is { } start && IsCriu(pid))
        {
            _ = PidfdSignal.Kill(pid, start);
        }
    }

    /// <summary>
    /// The daemon whose pid file lies in <paramref name="workDirectory"/>, while it still runs there: the pid file
    /// names a live <c>criu lazy-pages</c> whose command line names this very work folder. A pid file can outlive
    /// its daemon and name a stranger, or another daemon's folder: then null.
    /// </summary>
    internal static CriuLazyPagesDaemon? Find(string workDirectory)
    {
        var work = Normalize(workDirectory);
        if (ReadPid(Path.Combine(work, PidFileName)) is not { } pid || PidfdSignal.StartTimeOf(pid) is not { } start)
        {
            return null;
        }

        var args = CriuArguments(pid);
        return args is not null && args.Contains("lazy-pages", StringComparer.Ordinal) && WorkDirectoryOf(args) == work
            && PidfdSignal.StartTimeOf(pid) == start // the command line read belongs to the same process
            ? new CriuLazyPagesDaemon(pid, start, work, Path.Combine(work, "lazy-pages.log"))
            : null;
    }

    /// <summary>
    /// Every <c>criu lazy-pages</c> daemon running on this host, with the work folder its command line names
    /// (that folder holds its pid file; the pipeline puts it in the set's logs folder, so it tells whose it is).
    /// </summary>
    internal static IReadOnlyList<RunningLazyPagesDaemon> FindRunningDaemons()
    {
        var found = new List<RunningLazyPagesDaemon>();
        foreach (var pid in FindRunning())
        {
            if (CriuArguments(pid) is { } args && PidfdSignal.StartTimeOf(pid) is { } start)
            {
                // Anyone can run a process whose command line claims a folder: only our own user's is taken at its word.
                var ours = Syscall.stat($"/proc/{pid.ToString(CultureInfo.InvariantCulture)}", out var st) == 0 && st.st_uid == Syscall.geteuid();
                found.Add(new RunningLazyPagesDaemon(pid, start, ours ? WorkDirectoryOf(args) : null, HoldsUserfaultfd(pid)));
            }
        }

        return found;
    }

    /// <summary>
    /// True when <paramref name="pid"/> holds a userfaultfd: a lazy restore reached its daemon and handed over the
    /// tree's memory. A daemon holding none serves no tree (it still waits for a restore to connect).
    /// </summary>
    private static bool HoldsUserfaultfd(int pid)
    {
        try
        {
            foreach (var fd in Directory.EnumerateFileSystemEntries($"/proc/{pid.ToString(CultureInfo.InvariantCulture)}/fd"))
            {
                if (new FileInfo(fd).LinkTarget is "anon_inode:[userfaultfd]")
                {
                    return true;
                }
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Gone meanwhile, or not readable: it serves nothing we could tell.
        }

        return false;
    }

    /// <summary>The work folder (<c>-W</c>/<c>--work-dir</c>) in criu's arguments, absolute and normalised; null when none or relative.</summary>
    private static string? WorkDirectoryOf(string[] args)
    {
        for (var i = 0; i < args.Length; i++)
        {
            var value = args[i] is "-W" or "--work-dir" && i + 1 < args.Length ? args[i + 1]
                : args[i].StartsWith("--work-dir=", StringComparison.Ordinal) ? args[i]["--work-dir=".Length..]
                : null;
            if (value is not null)
            {
                return Path.IsPathFullyQualified(value) ? Normalize(value) : null;
            }
        }

        return null;
    }

    private static string Normalize(string path) => Path.TrimEndingDirectorySeparator(Path.GetFullPath(path));


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

    private static bool IsRunning(int pid, ulong startTime) => PidfdSignal.StartTimeOf(pid) is { } now && (startTime == 0 || now == startTime);


}

/// <summary>A <c>criu lazy-pages</c> daemon found running on this host.</summary>
/// <param name="Pid">Its pid.</param>
/// <param name="StartTime">Its start time (clock ticks since boot): tells it from a later process with the same pid.</param>
/// <param name="WorkDirectory">The work folder its command line names (absolute), where its pid file lies; null when it names none, or runs as another user.</param>
/// <param name="HoldsUserfaultfd">True once a lazy restore handed it a tree's memory (it holds a userfaultfd).</param>
internal sealed record RunningLazyPagesDaemon(int Pid, ulong StartTime, string? WorkDirectory, bool HoldsUserfaultfd);
