using Microsoft.Extensions.Logging;
using RebootlessUpdate.Criu.Protocol;
using RebootlessUpdate.Criu.Transport;

namespace RebootlessUpdate.Criu;

/// <summary>
/// A client of CRIU's RPC protocol. By default each request runs in its own
/// <c>criu swrk</c> worker, started with exactly one inherited socket (and the
/// descriptors a restore must inherit), reaped afterwards, its output kept for
/// error reports; with <see cref="CriuClientOptions.ServiceAddress"/> it talks
/// to a running <c>criu service</c> instead. Thread-safe: requests may run
/// concurrently.
/// </summary>
public sealed class CriuClient
{
    private const string CheckLogFile = "check.log";
    private readonly CriuClientOptions _options;
    private readonly ILogger _logger;
    private readonly Func<IReadOnlyCollection<int>, CriuConnection> _connect;
    private readonly Lazy<Task<CriuVersion>> _version;
    private readonly Lazy<Task<CriuFeatures>> _features;
    private readonly Lazy<Task> _kernelProbe;
    private readonly Lazy<IReadOnlyList<KeyValuePair<string, string>>> _workerEnvironment;

    /// <summary>Creates a client; nothing is started until a request is made.</summary>
    public CriuClient(CriuClientOptions? options = null)
        : this(options ?? new CriuClientOptions(), null)
    {
    }

    /// <summary>The options the client was made with.</summary>
    internal CriuClientOptions Options => _options;

    /// <summary>For tests: a client over connections made by <paramref name="connect"/>.</summary>
    internal CriuClient(CriuClientOptions options, Func<IReadOnlyCollection<int>, CriuConnection>? connect)
    {
        CriuClientOptions.ValidateTimeout(options.RequestTimeout, nameof(options.RequestTimeout));
        _options = options;
        _logger = options.LoggerFactory.CreateLogger<CriuClient>();
        _connect = connect ?? Connect;
        _version = new Lazy<Task<CriuVersion>>(() => QueryVersionAsync(CancellationToken.None));
        _features = new Lazy<Task<CriuFeatures>>(() => CheckFeaturesAsync(CancellationToken.None));
        _workerEnvironment = new(() => HardwareBreakpointProbe.WorkerEnvironment(_options.Breakpoints, _logger));
        _kernelProbe = new Lazy<Task>(() => Task.Run(() =>
        {
            _ = _workerEnvironment.Value;
            return KernelProbeCache.PrimeAsync(_options, _logger);
        }));
    }

    private CriuConnection Connect(IReadOnlyCollection<int> inheritFds)
    {
        if (_options.ServiceAddress is { } address)
        {
            return ServiceConnector.Connect(address);
        }

        var worker = SwrkWorker.Start(_options.ResolveCriuPath(), inheritFds, _workerEnvironment.Value);
        return new CriuConnection(worker.Socket, worker, $"criu swrk worker {worker.Pid}");
    }

    /// <summary>True when requests go to a <c>criu service</c> rather than swrk workers.</summary>
    public bool UsesService => _options.ServiceAddress is not null;

    /// <summary>CRIU's version (VERSION). Asked once per client, then remembered.</summary>
    public Task<CriuVersion> GetVersionAsync(CancellationToken cancellationToken = default) =>
        _version.Value.IsFaulted ? QueryVersionAsync(cancellationToken) : _version.Value.WaitAsync(cancellationToken);

    private async Task<CriuVersion> QueryVersionAsync(CancellationToken cancellationToken)
    {
        var resp = await ExecuteAsync(new criu_req { Type = criu_req_type.Version }, null, cancellationToken).ConfigureAwait(false);
        var v = resp.Version ?? throw new CriuTransportException("criu answered VERSION without a version");
        return new CriuVersion(v.MajorNumber, v.MinorNumber, v.HasSublevel ? v.Sublevel : 0, v.HasGitid ? v.Gitid : null);
    }

    /// <summary>
    /// Has criu probe this kernel's features once and cache the result for the rest of the boot (criu's
    /// <c>/run/criu.kdat</c>), in the background: restores and lazy-pages daemons started afterwards load it instead of
    /// each probing the kernel, which on a kernel just booted costs seconds under emulation. Started on the first call,
    /// the same task after that; it never faults (a failed probe only means each criu probes on its own, as without it).
    /// It also settles whether criu may use hardware breakpoints here (<see cref="CriuClientOptions.Breakpoints"/>).
    /// </summary>
    public Task PrimeKernelProbeAsync() => _kernelProbe.Value;

    /// <summary>Runs CRIU's kernel check (CHECK); throws <see cref="CriuRequestFailedException"/> when the kernel lacks something.</summary>
    public async Task CheckAsync(CancellationToken cancellationToken = default) =>
        await ExecuteAsync(new criu_req { Type = criu_req_type.Check }, null, cancellationToken).ConfigureAwait(false);

    /// <summary>Asks which optional features work here (FEATURE_CHECK).</summary>
    public async Task<CriuFeatures> CheckFeaturesAsync(CancellationToken cancellationToken = default)
    {
        // CRIU checks only the features the request names: ask for all of them.
        var req = new criu_req
        {
            Type = criu_req_type.FeatureCheck,
            Features = new criu_features { MemTrack = true, LazyPages = true, PidfdStore = true },
        };
        var resp = await ExecuteAsync(req, null, cancellationToken).ConfigureAwait(false);
        var f = resp.Features ?? new criu_features();
        return new CriuFeatures(f.MemTrack, f.LazyPages, f.PidfdStore);
    }

    /// <summary>Checkpoints a process tree (DUMP).</summary>
    /// <exception cref="ArgumentException">The options are invalid.</exception>
    /// <exception cref="CriuRequestFailedException">CRIU failed; the message says why.</exception>
    /// <exception cref="CriuVersionException">An option needs a newer criu.</exception>
    public async Task<CriuDumpResult> DumpAsync(CriuDumpOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        await ExecuteAsync(new criu_req { Type = criu_req_type.Dump }, options, cancellationToken).ConfigureAwait(false);
        return CriuDumpResult.Read(options);
    }

    /// <summary>
    /// One pre-dump on its own connection (SINGLE_PRE_DUMP, CRIU 3.17+): memory
    /// is copied while the tree keeps running. Needs memory tracking (soft-dirty) in the kernel.
    /// </summary>
    public async Task<CriuDumpResult> SinglePreDumpAsync(CriuDumpOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        await RequireAsync("SINGLE_PRE_DUMP", new CriuVersion(3, 17), cancellationToken).ConfigureAwait(false);
        await RequireMemoryTrackingAsync("SINGLE_PRE_DUMP", cancellationToken).ConfigureAwait(false);
        await ExecuteAsync(new criu_req { Type = criu_req_type.SinglePreDump }, options, cancellationToken).ConfigureAwait(false);
        return CriuDumpResult.Read(options);
    }

    /// <summary>
    /// Opens a connection for an iterative dump: any number of
    /// <see cref="CriuPreDumpSession.PreDumpAsync"/> then one
    /// <see cref="CriuPreDumpSession.DumpAsync"/>, all served by one CRIU worker.
    /// </summary>
    /// <exception cref="CriuFeatureUnavailableException">The kernel has no memory tracking (soft-dirty).</exception>
    public async Task<CriuPreDumpSession> StartPreDumpSessionAsync(CancellationToken cancellationToken = default)
    {
        await RequireMemoryTrackingAsync("PRE_DUMP", cancellationToken).ConfigureAwait(false);
        return new CriuPreDumpSession(this, new CriuSession(_connect([]), _logger, _options));
    }

    /// <summary>
    /// Pre-dumps need soft-dirty memory tracking; without it criu 4.1 aborts
    /// mid-request ("BUG at criu/mem.c"). Refuse before anything is frozen.
    /// </summary>
    private async Task RequireMemoryTrackingAsync(string request, CancellationToken cancellationToken)
    {
        var features = await (_features.Value.IsFaulted ? CheckFeaturesAsync(cancellationToken) : _features.Value.WaitAsync(cancellationToken)).ConfigureAwait(false);
        if (!features.MemoryTracking)
        {
            throw new CriuFeatureUnavailableException(
                $"{request} needs memory change tracking (soft-dirty, CONFIG_MEM_SOFT_DIRTY), which this kernel does not offer. Dump without pre-dumps, or use a kernel with soft-dirty.");
        }
    }

    /// <summary>
    /// Iterative dump with the documented convergence rule (<see cref="CriuIterativeDumpOptions"/>):
    /// pre-dumps into <c>pre-1</c>, <c>pre-2</c>, ... under <paramref name="root"/> while the tree runs,
    /// then the final dump into <c>final</c> with the last pre-dump as parent.
    /// </summary>
    public async Task<CriuIterativeDumpResult> IterativeDumpAsync(string root, CriuDumpOptions dump, CriuIterativeDumpOptions? iterations = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(dump);
        iterations ??= new CriuIterativeDumpOptions();
        iterations.Validate();
        var pre = new List<CriuDumpResult>();
        await using var session = await StartPreDumpSessionAsync(cancellationToken).ConfigureAwait(false);
        string? parent = null;
        string? stopReason = null;
        for (var i = 1; stopReason is null; i++)
        {
            var dir = Directory.CreateDirectory(Path.Combine(root, $"pre-{i}")).FullName;
            var result = await session.PreDumpAsync(dump with { ImagesDirectory = dir, ParentImages = parent, TrackMemory = true, WorkDirectory = null }, cancellationToken).ConfigureAwait(false);
            pre.Add(result);
            parent = $"../pre-{i}";
            stopReason = iterations.StopReason(pre);
        }

        var final = Directory.CreateDirectory(Path.Combine(root, "final")).FullName;
        var last = await session.DumpAsync(dump with { ImagesDirectory = final, ParentImages = parent, TrackMemory = true, WorkDirectory = null }, cancellationToken).ConfigureAwait(false);
        return new CriuIterativeDumpResult(pre, last, final, stopReason);
    }

    /// <summary>Restores a process tree (RESTORE); returns its root pid.</summary>
    /// <exception cref="ArgumentException">The options are invalid (or need swrk while a service is used).</exception>
    /// <exception cref="CriuRequestFailedException">CRIU failed; the message says why.</exception>
    public async Task<CriuRestoreResult> RestoreAsync(CriuRestoreOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (UsesService && (options.AsSibling || options.InheritFds.Count > 0))
        {
            throw new ArgumentException("criu service rejects AsSibling and InheritFds (they need a swrk worker); use a client without ServiceAddress.", nameof(options));
        }

        var resp = await ExecuteAsync(new criu_req { Type = criu_req_type.Restore }, options, cancellationToken).ConfigureAwait(false);
        var pid = resp.Restore?.Pid ?? throw new CriuTransportException("criu answered RESTORE without the restored pid");
        var stats = CriuStatsImage.TryRead(() => CriuStatsImage.ReadRestore(Path.Combine(options.StatsDirectory, "stats-restore")));
        return new CriuRestoreResult(pid, stats, options.LogPath);
    }

    /// <summary>
    /// Starts a <c>criu lazy-pages</c> daemon (criu's command line: the RPC has no such
    /// request) with this client's criu, detached, and waits until its socket is ready.
    /// </summary>
    /// <exception cref="CriuUnavailableException">criu cannot be started.</exception>
    /// <exception cref="CriuTransportException">The daemon did not get ready (the message quotes its log).</exception>
    public Task<CriuLazyPagesDaemon> StartLazyPagesDaemonAsync(CriuLazyPagesOptions options, CancellationToken cancellationToken = default) =>
        CriuLazyPagesDaemon.StartAsync(_options, options, cancellationToken);

    /// <summary>
    /// Starts a page server (PAGE_SERVER) that outlives the request: it receives
    /// one dump's pages into the options' images folder (or serves them for a lazy
    /// restore) and then exits. Returns its pid and port.
    /// </summary>
    public async Task<CriuPageServer> StartPageServerAsync(CriuPageServerOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        var resp = await ExecuteAsync(new criu_req { Type = criu_req_type.PageServer }, options, cancellationToken).ConfigureAwait(false);
        return new CriuPageServer(resp.Ps is { Pid: > 0 } ps ? ps.Pid : null, resp.Ps?.Port is > 0 and var port ? port : options.Port, options.Address);
    }

    /// <summary>
    /// Starts a page server as a child of a worker that stays connected
    /// (PAGE_SERVER_CHLD with keep_open); <see cref="CriuPageServerChild.WaitAsync"/>
    /// waits for it through WAIT_PID on the same connection.
    /// </summary>
    public async Task<CriuPageServerChild> StartPageServerChildAsync(CriuPageServerOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        var session = await OpenAsync(options, cancellationToken).ConfigureAwait(false);
        try
        {
            var req = new criu_req { Type = criu_req_type.PageServerChld, KeepOpen = true };
            var resp = await SendAsync(session, req, options, cancellationToken).ConfigureAwait(false);
            return new CriuPageServerChild(session, resp.Ps?.Pid ?? 0, resp.Ps?.Port ?? 0, options.Address);
        }
        catch
        {
            await session.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Saves this host's CPU description into <paramref name="imagesDirectory"/> (CPUINFO_DUMP).</summary>
    public async Task CpuInfoDumpAsync(string imagesDirectory, CancellationToken cancellationToken = default) =>
        await ExecuteAsync(new criu_req { Type = criu_req_type.CpuinfoDump }, new CriuCpuInfoOptions { ImagesDirectory = imagesDirectory }, cancellationToken).ConfigureAwait(false);

    /// <summary>
    /// Checks this host's CPU against the description in <paramref name="imagesDirectory"/>
    /// (CPUINFO_CHECK); throws <see cref="CriuRequestFailedException"/> when images from there would not run here.
    /// </summary>
    public async Task CpuInfoCheckAsync(string imagesDirectory, CancellationToken cancellationToken = default) =>
        await ExecuteAsync(new criu_req { Type = criu_req_type.CpuinfoCheck }, new CriuCpuInfoOptions { ImagesDirectory = imagesDirectory }, cancellationToken).ConfigureAwait(false);

    private async Task RequireAsync(string feature, CriuVersion minimum, CancellationToken cancellationToken)
    {
        var actual = await GetVersionAsync(cancellationToken).ConfigureAwait(false);
        if (actual < minimum)
        {
            throw new CriuVersionException(feature, minimum, actual);
        }
    }

    /// <summary>Validates options, checks their version needs, and opens a connection.</summary>
    internal async Task<CriuSession> OpenAsync(CriuProcessOptions? options, CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        options?.Validate();
        if (options is not null)
        {
            foreach (var (option, minimum) in options.Requirements())
            {
                await RequireAsync(option, minimum, cancellationToken).ConfigureAwait(false);
            }
        }

        var inherit = options is CriuRestoreOptions r ? r.InheritFds.Values.ToArray() : [];
        return new CriuSession(_connect(inherit), _logger, _options);
    }

    /// <summary>Sends one request on an open session (folders become descriptors for its duration).</summary>
    internal static async Task<criu_resp> SendAsync(CriuSession session, criu_req req, CriuProcessOptions? options, CancellationToken cancellationToken)
    {
        using var fds = new DescriptorSet();
        var logPath = options?.LogPath;
        DirectoryInfo? scratch = null;
        if (options is not null)
        {
            req.Opts = options.ToProto();
            // Folders are descriptors on the wire: CRIU opens /proc/<client>/fd/<n>.
            req.Opts.ImagesDirFd = fds.OpenDirectory(options.ImagesDirectory, "images folder");
            if (req.Type == criu_req_type.Dump)
            {
                // Always with notifications: criu then waits at post-dump for our answer before it
                // ends the tree, so a cancellation up to there still leaves the tree running.
                req.Opts.NotifyScripts = true;
            }

            if (options.WorkDirectory is not null)
            {
                req.Opts.WorkDirFd = fds.OpenDirectory(options.WorkDirectory, "work folder");
            }
        }
        else if (req.Type == criu_req_type.Check)
        {
            // CHECK insists on an images folder, and criu (as root) writes its log there: a fixed
            // name in the shared temp folder would let anyone plant a symlink that criu follows and
            // truncates. So: a private folder (mkdtemp: unique, 0700), removed afterwards.
            scratch = Directory.CreateTempSubdirectory("rebootless-criu-check-");
            logPath = Path.Combine(scratch.FullName, CheckLogFile);
            req.Opts = new criu_opts { ImagesDirFd = fds.OpenDirectory(scratch.FullName, "private check folder"), LogFile = CheckLogFile };
        }

        try
        {
            return await session.RequestAsync(req, options?.OnNotification, logPath, options?.RequestTimeout, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            DeleteScratch(scratch);
        }
    }

    private static void DeleteScratch(DirectoryInfo? scratch)
    {
        try
        {
            scratch?.Delete(recursive: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Best effort: a private, uniquely named folder left in the temp folder harms no one.
        }
    }

    private async Task<criu_resp> ExecuteAsync(criu_req req, CriuProcessOptions? options, CancellationToken cancellationToken)
    {
        await using var session = await OpenAsync(options, cancellationToken).ConfigureAwait(false);
        return await SendAsync(session, req, options, cancellationToken).ConfigureAwait(false);
    }
}
