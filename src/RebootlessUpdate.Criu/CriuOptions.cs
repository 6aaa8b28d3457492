using RebootlessUpdate.Criu.Protocol;

namespace RebootlessUpdate.Criu;

/// <summary>How CRIU treats cgroups (<c>--manage-cgroups</c>).</summary>
public enum CriuCgroupMode
{
    /// <summary>CRIU's default for the request.</summary>
    Default = 0,

    /// <summary>Do not touch cgroups.</summary>
    Ignore,

    /// <summary>Restore cgroup properties only where the cgroup is new.</summary>
    Soft,

    /// <summary>Restore properties of every cgroup.</summary>
    Full,

    /// <summary>Fail when a cgroup exists with other properties.</summary>
    Strict,

    /// <summary>Restore properties only.</summary>
    Props,

    /// <summary>Do not restore cgroups at all (<c>none</c>).</summary>
    None,
}

/// <summary>How CRIU locks the network while tasks are frozen.</summary>
public enum CriuNetworkLock
{
    /// <summary>iptables (CRIU's default).</summary>
    Iptables = 1,

    /// <summary>nftables.</summary>
    Nftables = 2,

    /// <summary>Do not lock (the caller does it; CRIU 3.19+).</summary>
    Skip = 3,
}

/// <summary>How pre-dumps read memory.</summary>
public enum CriuPreDumpMode
{
    /// <summary>vmsplice pages into pipes (CRIU's default; the tasks' pages are pinned meanwhile).</summary>
    Splice = 1,

    /// <summary>process_vm_readv (CRIU 3.15+; less memory pressure, tasks resume sooner).</summary>
    VmRead = 2,
}

/// <summary>A notification CRIU sent during a request (see <c>criu --action-script</c>).</summary>
/// <param name="Script">The hook's name: <c>pre-dump</c>, <c>post-dump</c>, <c>post-restore</c>, ...</param>
/// <param name="Pid">The pid CRIU attached (set for <c>setup-namespaces</c> and <c>post-restore</c>).</param>
/// <param name="Descriptor">
/// A descriptor CRIU passed with the notification: for <c>orphan-pts-master</c>,
/// the master side of the new pty of a restored tree whose terminal was
/// external. The handler owns it and must dispose it (or keep it: it is the
/// restored tree's terminal); without a handler the client closes it.
/// </param>
public readonly record struct CriuNotification(string Script, int? Pid, Microsoft.Win32.SafeHandles.SafeFileHandle? Descriptor = null);

/// <summary>A namespace for the restored tree to join (<c>--join-ns</c>).</summary>
/// <param name="Namespace">net, uts, ipc, pid, mnt, time, user or cgroup.</param>
/// <param name="Path">A namespace file (<c>/proc/PID/ns/net</c>) or a pid.</param>
/// <param name="ExtraOptions">Extra options, e.g. the user/group for a user namespace.</param>
public sealed record CriuJoinNamespace(string Namespace, string Path, string? ExtraOptions = null);

/// <summary>A page server to dump to: the pages go over TCP, the rest into the images folder.</summary>
/// <param name="Address">Address the page server listens on.</param>
/// <param name="Port">Its port.</param>
public sealed record CriuPageServerEndpoint(string Address, int Port);

/// <summary>
/// Options every request that touches processes shares. Immutable: use <c>with</c>
/// to derive variants. Validated when the request is made, before criu runs.
/// </summary>
public abstract record CriuProcessOptions
{
    /// <summary>Folder CRIU reads/writes images in. Required; it must exist.</summary>
    public required string ImagesDirectory { get; init; }

    /// <summary>Folder for the log and statistics; default: the images folder.</summary>
    public string? WorkDirectory { get; init; }

    /// <summary>CRIU log verbosity 0-4. Default 4 (everything: a failed checkpoint needs it).</summary>
    public int LogLevel { get; init; } = 4;

    /// <summary>Log file name inside the work (or images) folder. Default: the request's name, e.g. <c>dump.log</c>.</summary>
    public string? LogFile { get; init; }

    /// <summary>The tree is a shell job (its session leader is outside it). Default false.</summary>
    public bool ShellJob { get; init; }

    /// <summary>Checkpoint/restore established TCP connections. Default false.</summary>
    public bool TcpEstablished { get; init; }

    /// <summary>Restore TCP connections whose handshake was not finished as closed instead of failing. Default false.</summary>
    public bool TcpSkipInFlight { get; init; }

    /// <summary>Close established TCP connections instead of restoring them (CRIU 3.13+). Default false.</summary>
    public bool TcpClose { get; init; }

    /// <summary>Checkpoint/restore file locks. Default false.</summary>
    public bool FileLocks { get; init; }

    /// <summary>Allow unix sockets connected outside the tree. Default false.</summary>
    public bool ExternalUnixSockets { get; init; }

    /// <summary>Deleted-but-open files: relink them instead of copying. Default false.</summary>
    public bool LinkRemap { get; init; }

    /// <summary>External resources (<c>--external</c>), e.g. <c>mnt[/path]:key</c>, <c>net[inode]:key</c>. Default none.</summary>
    public IReadOnlyList<string> External { get; init; } = [];

    /// <summary>Mount points to skip (<c>--skip-mnt</c>). Default none.</summary>
    public IReadOnlyList<string> SkipMounts { get; init; } = [];

    /// <summary>File systems to dump although unsupported by default (<c>--enable-fs</c>). Default none.</summary>
    public IReadOnlyList<string> EnableFileSystems { get; init; } = [];

    /// <summary>Root folder of the tree's mount namespace (<c>--root</c>). Default none.</summary>
    public string? Root { get; init; }

    /// <summary>Cgroup handling. Default: CRIU's.</summary>
    public CriuCgroupMode CgroupMode { get; init; }

    /// <summary>Cgroup roots (<c>--cgroup-root [controller:]path</c>), controller or null for all. Default none.</summary>
    public IReadOnlyList<(string? Controller, string Path)> CgroupRoots { get; init; } = [];

    /// <summary>Cgroup properties to dump/restore (YAML text, <c>--cgroup-props</c>). Default none.</summary>
    public string? CgroupProperties { get; init; }

    /// <summary>A prepared cgroup yard (<c>--cgroup-yard</c>, CRIU 3.15+). Default none.</summary>
    public string? CgroupYard { get; init; }

    /// <summary>Network lock method. Default: CRIU's (iptables).</summary>
    public CriuNetworkLock? NetworkLock { get; init; }

    /// <summary>LSM profile for the restored tasks (<c>apparmor:NAME</c> or <c>selinux:LABEL</c>). Default: as dumped.</summary>
    public string? LsmProfile { get; init; }

    /// <summary>Namespaces to create empty instead of restoring (CLONE_NEW* flags). Default none.</summary>
    public uint? EmptyNamespaces { get; init; }

    /// <summary>Allow sysctls that do not exist here to be skipped. Default false.</summary>
    public bool WeakSysctls { get; init; }

    /// <summary>
    /// Called for each notification CRIU sends (pre-dump, post-dump, network-lock,
    /// network-unlock, setup-namespaces, post-setup-namespaces, pre-restore,
    /// pre-resume, post-resume, post-restore, status-ready, query-ext-files, ...).
    /// Throwing answers CRIU with failure and becomes the request's inner
    /// exception: for <c>post-dump</c> that makes the frozen tasks resume instead
    /// of being killed. Time spent here counts as frozen time. The token is cancelled
    /// when the request is; once it is, the handler is no longer called and every
    /// notification is answered with failure. Default none.
    /// </summary>
    public Func<CriuNotification, CancellationToken, ValueTask>? OnNotification { get; init; }

    /// <summary>A CRIU configuration file for options only its command line has. Default none.</summary>
    public string? ConfigFile { get; init; }

    /// <summary>
    /// This request's watchdog, overriding <see cref="CriuClientOptions.RequestTimeout"/>
    /// (same rules: criu's time only, positive or <see cref="Timeout.InfiniteTimeSpan"/>).
    /// Default null: the client's.
    /// </summary>
    public TimeSpan? RequestTimeout { get; init; }

    /// <summary>The request's name for file names and messages, e.g. "dump".</summary>
    private protected abstract string RequestName { get; }

    internal string EffectiveLogFile => LogFile ?? $"{RequestName}.log";

    /// <summary>Where the log ends up.</summary>
    internal string LogPath => Path.Combine(WorkDirectory ?? ImagesDirectory, EffectiveLogFile);

    /// <summary>Where CRIU writes statistics (stats-dump, stats-restore).</summary>
    internal string StatsDirectory => WorkDirectory ?? ImagesDirectory;

    internal virtual void Validate()
    {
        if (string.IsNullOrWhiteSpace(ImagesDirectory))
        {
            throw new ArgumentException("ImagesDirectory is required.", nameof(ImagesDirectory));
        }

        if (!Directory.Exists(ImagesDirectory))
        {
            throw new ArgumentException($"the images folder '{ImagesDirectory}' does not exist; create it first.", nameof(ImagesDirectory));
        }

        if (WorkDirectory is not null && !Directory.Exists(WorkDirectory))
        {
            throw new ArgumentException($"the work folder '{WorkDirectory}' does not exist; create it first.", nameof(WorkDirectory));
        }

        if (LogLevel is < 0 or > 4)
        {
            throw new ArgumentOutOfRangeException(nameof(LogLevel), LogLevel, "CRIU log levels are 0 to 4.");
        }

        if (LogFile is not null && (LogFile.Length == 0 || LogFile.Contains('/', StringComparison.Ordinal)))
        {
            throw new ArgumentException($"LogFile '{LogFile}' must be a plain file name (CRIU puts it in the work folder).", nameof(LogFile));
        }

        if (TcpClose && TcpEstablished)
        {
            throw new ArgumentException("TcpClose and TcpEstablished exclude each other.", nameof(TcpClose));
        }

        if (External.Any(string.IsNullOrWhiteSpace))
        {
            throw new ArgumentException("External entries must not be empty.", nameof(External));
        }

        if (RequestTimeout is { } timeout)
        {
            CriuClientOptions.ValidateTimeout(timeout, nameof(RequestTimeout));
        }
    }

    /// <summary>Options whose presence needs a minimum criu version: (name shown to the user, minimum).</summary>
    internal virtual IEnumerable<(string Option, CriuVersion Minimum)> Requirements()
    {
        if (NetworkLock == CriuNetworkLock.Skip)
        {
            yield return ("NetworkLock = Skip", new CriuVersion(3, 19));
        }
        else if (NetworkLock == CriuNetworkLock.Nftables)
        {
            yield return ("NetworkLock = Nftables", new CriuVersion(3, 15));
        }

        if (TcpClose)
        {
            yield return ("TcpClose", new CriuVersion(3, 13));
        }

        if (CgroupYard is not null)
        {
            yield return ("CgroupYard", new CriuVersion(3, 15));
        }
    }

    internal virtual criu_opts ToProto()
    {
        var o = new criu_opts
        {
            // Required on the wire; the client replaces it with a descriptor of
            // ImagesDirectory. (criu 4.1.1 readlink()s the images_dir path field,
            // so a plain path fails with EINVAL: descriptors are the reliable form.)
            ImagesDirFd = -1,
            LogLevel = LogLevel,
            LogFile = EffectiveLogFile,
        };
        if (ShellJob) { o.ShellJob = true; }
        if (TcpEstablished) { o.TcpEstablished = true; }
        if (TcpSkipInFlight) { o.TcpSkipInFlight = true; }
        if (TcpClose) { o.TcpClose = true; }
        if (FileLocks) { o.FileLocks = true; }
        if (ExternalUnixSockets) { o.ExtUnixSk = true; }
        if (LinkRemap) { o.LinkRemap = true; }
        o.External.AddRange(External);
        o.SkipMnt.AddRange(SkipMounts);
        o.EnableFs.AddRange(EnableFileSystems);
        if (Root is not null) { o.Root = Root; }
        if (CgroupMode != CriuCgroupMode.Default)
        {
            o.ManageCgroups = true;
            o.ManageCgroupsMode = CgroupMode switch
            {
                CriuCgroupMode.Ignore => criu_cg_mode.Ignore,
                CriuCgroupMode.None => criu_cg_mode.CgNone,
                CriuCgroupMode.Soft => criu_cg_mode.Soft,
                CriuCgroupMode.Full => criu_cg_mode.Full,
                CriuCgroupMode.Strict => criu_cg_mode.Strict,
                CriuCgroupMode.Props => criu_cg_mode.Props,
                _ => criu_cg_mode.Default,
            };
        }

        foreach (var (controller, path) in CgroupRoots)
        {
            var root = new cgroup_root { Path = path };
            if (controller is not null) { root.Ctrl = controller; }
            o.CgRoot.Add(root);
        }

        if (CgroupProperties is not null) { o.CgroupProps = CgroupProperties; }
        if (CgroupYard is not null) { o.CgroupYard = CgroupYard; }
        if (NetworkLock is { } nl) { o.NetworkLock = (criu_network_lock_method)(int)nl; }
        if (LsmProfile is not null) { o.LsmProfile = LsmProfile; }
        if (EmptyNamespaces is { } ns) { o.EmptyNs = ns; }
        if (WeakSysctls) { o.WeakSysctls = true; }
        if (OnNotification is not null) { o.NotifyScripts = true; }
        if (ConfigFile is not null) { o.ConfigFile = ConfigFile; }
        return o;
    }
}

/// <summary>Options of a DUMP, PRE_DUMP or SINGLE_PRE_DUMP request.</summary>
public sealed record CriuDumpOptions : CriuProcessOptions
{
    /// <summary>Root pid of the tree to checkpoint. Required.</summary>
    public required int Pid { get; init; }

    /// <summary>Leave the tree running after the dump. Default false (CRIU kills it).</summary>
    public bool LeaveRunning { get; init; }

    /// <summary>Leave the tree stopped after the dump (CRIU 3.19+). Default false.</summary>
    public bool LeaveStopped { get; init; }

    /// <summary>Images of a previous pre-dump, relative to the images folder (e.g. <c>../pre1</c>). Default none.</summary>
    public string? ParentImages { get; init; }

    /// <summary>Track memory changes (soft-dirty) for a later incremental dump. Default false.</summary>
    public bool TrackMemory { get; init; }

    /// <summary>Deduplicate pages against the parent images while dumping. Default false.</summary>
    public bool AutoDedup { get; init; }

    /// <summary>How pre-dumps read memory. Default: CRIU's (splice).</summary>
    public CriuPreDumpMode? PreDumpMode { get; init; }

    /// <summary>Freeze through this cgroup instead of ptrace-stopping each task. Default none.</summary>
    public string? FreezeCgroup { get; init; }

    /// <summary>Seconds CRIU may take to collect the tree (not the whole dump). Default: CRIU's.</summary>
    public int? TimeoutSeconds { get; init; }

    /// <summary>Send the pages to this page server instead of the images folder. Default none.</summary>
    public CriuPageServerEndpoint? PageServer { get; init; }

    /// <summary>Leave pages for a lazy restore (served later by a page server / lazy-pages daemon). Default false.</summary>
    public bool LazyPages { get; init; }

    private protected override string RequestName => "dump";

    internal override void Validate()
    {
        base.Validate();
        if (Pid <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(Pid), Pid, "a dump needs the positive pid of the tree's root.");
        }

        if (LeaveRunning && LeaveStopped)
        {
            throw new ArgumentException("LeaveRunning and LeaveStopped exclude each other.", nameof(LeaveStopped));
        }

        if (TimeoutSeconds is <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(TimeoutSeconds), TimeoutSeconds, "must be positive.");
        }

        if (PageServer is { Port: <= 0 or > 65535 })
        {
            throw new ArgumentOutOfRangeException(nameof(PageServer), PageServer.Port, "the page server's port must be 1-65535.");
        }

        if (ParentImages is not null && Path.IsPathRooted(ParentImages))
        {
            throw new ArgumentException("ParentImages is relative to the images folder (e.g. ../pre1), as CRIU expects.", nameof(ParentImages));
        }
    }

    internal override IEnumerable<(string Option, CriuVersion Minimum)> Requirements()
    {
        foreach (var r in base.Requirements())
        {
            yield return r;
        }

        if (LeaveStopped)
        {
            yield return ("LeaveStopped", new CriuVersion(3, 19));
        }

        if (PreDumpMode == CriuPreDumpMode.VmRead)
        {
            yield return ("PreDumpMode = VmRead", new CriuVersion(3, 15));
        }
    }

    internal override criu_opts ToProto()
    {
        var o = base.ToProto();
        o.Pid = Pid;
        if (LeaveRunning) { o.LeaveRunning = true; }
        if (LeaveStopped) { o.LeaveStopped = true; }
        if (ParentImages is not null) { o.ParentImg = ParentImages; }
        if (TrackMemory) { o.TrackMem = true; }
        if (AutoDedup) { o.AutoDedup = true; }
        if (PreDumpMode is { } m) { o.PreDumpMode = (criu_pre_dump_mode)(int)m; }
        if (FreezeCgroup is not null) { o.FreezeCgroup = FreezeCgroup; }
        if (TimeoutSeconds is { } t) { o.Timeout = (uint)t; }
        if (PageServer is { } ps) { o.Ps = new criu_page_server_info { Address = ps.Address, Port = ps.Port }; }
        if (LazyPages) { o.LazyPages = true; }
        return o;
    }
}

/// <summary>Options of a RESTORE request.</summary>
public sealed record CriuRestoreOptions : CriuProcessOptions
{
    /// <summary>
    /// Restore the tree as a child of the calling process instead of detached
    /// (swrk only). The caller must reap it. Default false.
    /// </summary>
    public bool AsSibling { get; init; }

    /// <summary>
    /// Descriptors of the calling process the restored tree gets in place of
    /// external resources it had (<c>--inherit-fd fd[N]:KEY</c>), e.g. a new pipe
    /// for <c>pipe:[12345]</c>. swrk only. Default none.
    /// </summary>
    public IReadOnlyDictionary<string, int> InheritFds { get; init; } = new Dictionary<string, int>();

    /// <summary>Namespaces the restored tree joins instead of getting new ones. Default none.</summary>
    public IReadOnlyList<CriuJoinNamespace> JoinNamespaces { get; init; } = [];

    /// <summary>Restore memory lazily from a lazy-pages daemon (userfaultfd). Default false.</summary>
    public bool LazyPages { get; init; }

    /// <summary>
    /// The tree's terminal was external (dumped with <c>tty[rdev:dev]</c> in
    /// <see cref="CriuProcessOptions.External"/>): give it a new pty and send its
    /// master to the <c>orphan-pts-master</c> notification handler
    /// (<see cref="CriuNotification.Descriptor"/>). Needs an
    /// <see cref="CriuProcessOptions.OnNotification"/> handler. Default false.
    /// </summary>
    public bool OrphanPtsMaster { get; init; }

    private protected override string RequestName => "restore";

    internal override void Validate()
    {
        base.Validate();
        foreach (var (key, fd) in InheritFds)
        {
            if (fd < 3)
            {
                throw new ArgumentOutOfRangeException(nameof(InheritFds), fd, $"inherited descriptor for '{key}' must be 3 or above (0-2 are the worker's stdio).");
            }
        }

        foreach (var ns in JoinNamespaces)
        {
            if (string.IsNullOrWhiteSpace(ns.Namespace) || string.IsNullOrWhiteSpace(ns.Path))
            {
                throw new ArgumentException("a namespace to join needs its kind and a path.", nameof(JoinNamespaces));
            }
        }

        if (OrphanPtsMaster && OnNotification is null)
        {
            throw new ArgumentException("OrphanPtsMaster sends the new pty's master to a notification handler: set OnNotification.", nameof(OrphanPtsMaster));
        }
    }

    internal override IEnumerable<(string Option, CriuVersion Minimum)> Requirements()
    {
        foreach (var r in base.Requirements())
        {
            yield return r;
        }

        if (JoinNamespaces.Count > 0)
        {
            yield return ("JoinNamespaces", new CriuVersion(3, 11));
        }
    }

    internal override criu_opts ToProto()
    {
        var o = base.ToProto();
        if (AsSibling) { o.RstSibling = true; }
        foreach (var (key, fd) in InheritFds)
        {
            o.InheritFd.Add(new inherit_fd { Key = key, Fd = fd });
        }

        foreach (var ns in JoinNamespaces)
        {
            var j = new join_namespace { Ns = ns.Namespace, NsFile = ns.Path };
            if (ns.ExtraOptions is not null) { j.ExtraOpt = ns.ExtraOptions; }
            o.JoinNs.Add(j);
        }

        if (LazyPages) { o.LazyPages = true; }
        if (OrphanPtsMaster) { o.OrphanPtsMaster = true; }
        return o;
    }
}

/// <summary>Options of a page server (PAGE_SERVER / PAGE_SERVER_CHLD).</summary>
public sealed record CriuPageServerOptions : CriuProcessOptions
{
    /// <summary>Address to listen on. Default 127.0.0.1.</summary>
    public string Address { get; init; } = "127.0.0.1";

    /// <summary>Port to listen on (1-65535; criu 4.1 rejects 0). Required.</summary>
    public required int Port { get; init; }

    /// <summary>Serve pages for a lazy restore instead of receiving a dump. Default false.</summary>
    public bool LazyPages { get; init; }

    private protected override string RequestName => "page-server";

    internal override void Validate()
    {
        base.Validate();
        if (Port is <= 0 or > 65535)
        {
            throw new ArgumentOutOfRangeException(nameof(Port), Port, "must be 1-65535 (criu does not pick a port itself).");
        }
    }

    internal override criu_opts ToProto()
    {
        var o = base.ToProto();
        o.Ps = new criu_page_server_info { Address = Address, Port = Port };
        if (LazyPages) { o.LazyPages = true; }
        return o;
    }
}
