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

/// <summary>A notification CRIU sent during a request (see <c>criu --action-script</c>).</summary>
/// <param name="Script">The hook's name: <c>pre-dump</c>, <c>post-dump</c>, <c>post-restore</c>, ...</param>
/// <param name="Pid">The pid CRIU attached (set for <c>setup-namespaces</c> and <c>post-restore</c>).</param>
public readonly record struct CriuNotification(string Script, int? Pid);

/// <summary>
/// Options every request that touches processes shares. Immutable: use <c>with</c>
/// to derive variants. Validated when the request is sent.
/// </summary>
public abstract record CriuProcessOptions
{
    /// <summary>Folder CRIU reads/writes images in. Required.</summary>
    public required string ImagesDirectory { get; init; }

    /// <summary>Folder for the log and statistics; default: the images folder.</summary>
    public string? WorkDirectory { get; init; }

    /// <summary>CRIU log verbosity 0-4 (default 4: everything, as debugging a failed checkpoint needs it).</summary>
    public int LogLevel { get; init; } = 4;

    /// <summary>Log file name inside <see cref="WorkDirectory"/> (no folders).</summary>
    public string? LogFile { get; init; }

    /// <summary>The tree is a shell job (its session leader is outside it).</summary>
    public bool ShellJob { get; init; }

    /// <summary>Checkpoint/restore established TCP connections.</summary>
    public bool TcpEstablished { get; init; }

    /// <summary>Checkpoint/restore file locks.</summary>
    public bool FileLocks { get; init; }

    /// <summary>Allow unix sockets connected outside the tree.</summary>
    public bool ExternalUnixSockets { get; init; }

    /// <summary>External resources (<c>--external</c>), e.g. <c>mnt[/path]:key</c>, <c>net[inode]:key</c>.</summary>
    public IReadOnlyList<string> External { get; init; } = [];

    /// <summary>Root folder of the tree's mount namespace (<c>--root</c>).</summary>
    public string? Root { get; init; }

    /// <summary>Cgroup handling.</summary>
    public CriuCgroupMode CgroupMode { get; init; }

    /// <summary>Network lock method (default: CRIU's, iptables).</summary>
    public CriuNetworkLock? NetworkLock { get; init; }

    /// <summary>
    /// Called for each notification CRIU sends. Throwing answers CRIU with
    /// failure: for <c>post-dump</c> that makes the frozen tasks resume instead
    /// of being killed. Time spent here counts as frozen time.
    /// </summary>
    public Func<CriuNotification, CancellationToken, ValueTask>? OnNotification { get; init; }

    /// <summary>A CRIU configuration file for options only its command line has.</summary>
    public string? ConfigFile { get; init; }

    internal string DefaultLogFile => LogFile ?? $"{GetType().Name.Replace("Criu", string.Empty, StringComparison.Ordinal).Replace("Options", string.Empty, StringComparison.Ordinal).ToLowerInvariant()}.log";

    /// <summary>Where the log ends up.</summary>
    internal string LogPath => Path.Combine(WorkDirectory ?? ImagesDirectory, DefaultLogFile);

    internal virtual void Validate()
    {
        if (string.IsNullOrWhiteSpace(ImagesDirectory))
        {
            throw new ArgumentException("ImagesDirectory is required.", nameof(ImagesDirectory));
        }

        if (!Directory.Exists(ImagesDirectory))
        {
            throw new ArgumentException($"the images folder '{ImagesDirectory}' does not exist.", nameof(ImagesDirectory));
        }

        if (WorkDirectory is not null && !Directory.Exists(WorkDirectory))
        {
            throw new ArgumentException($"the work folder '{WorkDirectory}' does not exist.", nameof(WorkDirectory));
        }

        if (LogLevel is < 0 or > 4)
        {
            throw new ArgumentOutOfRangeException(nameof(LogLevel), LogLevel, "CRIU log levels are 0 to 4.");
        }

        if (LogFile is not null && (LogFile.Contains('/', StringComparison.Ordinal) || LogFile.Length == 0))
        {
            throw new ArgumentException($"LogFile '{LogFile}' must be a plain file name (CRIU puts it in the work folder).", nameof(LogFile));
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
            LogFile = DefaultLogFile,
        };
        if (ShellJob) { o.ShellJob = true; }
        if (TcpEstablished) { o.TcpEstablished = true; }
        if (FileLocks) { o.FileLocks = true; }
        if (ExternalUnixSockets) { o.ExtUnixSk = true; }
        o.External.AddRange(External);
        if (Root is not null) { o.Root = Root; }
        if (CgroupMode != CriuCgroupMode.Default)
        {
            o.ManageCgroups = true;
            o.ManageCgroupsMode = CgroupMode switch
            {
                CriuCgroupMode.Ignore => criu_cg_mode.Ignore,
                CriuCgroupMode.Soft => criu_cg_mode.Soft,
                CriuCgroupMode.Full => criu_cg_mode.Full,
                CriuCgroupMode.Strict => criu_cg_mode.Strict,
                CriuCgroupMode.Props => criu_cg_mode.Props,
                _ => criu_cg_mode.Default,
            };
        }

        if (NetworkLock is { } nl) { o.NetworkLock = (criu_network_lock_method)(int)nl; }
        if (OnNotification is not null) { o.NotifyScripts = true; }
        if (ConfigFile is not null) { o.ConfigFile = ConfigFile; }
        return o;
    }
}

/// <summary>Options of a DUMP request.</summary>
public sealed record CriuDumpOptions : CriuProcessOptions
{
    /// <summary>Root pid of the tree to checkpoint. Required.</summary>
    public required int Pid { get; init; }

    /// <summary>Leave the tree running after the dump (default: CRIU kills it).</summary>
    public bool LeaveRunning { get; init; }

    /// <summary>Leave the tree stopped after the dump (CRIU 3.19+).</summary>
    public bool LeaveStopped { get; init; }

    /// <summary>Images of a previous pre-dump, relative to the images folder (e.g. <c>../pre1</c>).</summary>
    public string? ParentImages { get; init; }

    /// <summary>Track memory changes (needs soft-dirty) for a later incremental dump.</summary>
    public bool TrackMemory { get; init; }

    /// <summary>Freeze through this cgroup instead of ptrace-stopping each task.</summary>
    public string? FreezeCgroup { get; init; }

    /// <summary>Seconds CRIU may take to collect the tree (not the whole dump).</summary>
    public int? TimeoutSeconds { get; init; }

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
    }

    internal override criu_opts ToProto()
    {
        var o = base.ToProto();
        o.Pid = Pid;
        if (LeaveRunning) { o.LeaveRunning = true; }
        if (LeaveStopped) { o.LeaveStopped = true; }
        if (ParentImages is not null) { o.ParentImg = ParentImages; }
        if (TrackMemory) { o.TrackMem = true; }
        if (FreezeCgroup is not null) { o.FreezeCgroup = FreezeCgroup; }
        if (TimeoutSeconds is { } t) { o.Timeout = (uint)t; }
        return o;
    }
}

/// <summary>Options of a RESTORE request.</summary>
public sealed record CriuRestoreOptions : CriuProcessOptions
{
    /// <summary>
    /// Restore the tree as a sibling of the worker (a child of the caller's
    /// process) instead of detached. swrk only.
    /// </summary>
    public bool AsSibling { get; init; }

    internal override criu_opts ToProto()
    {
        var o = base.ToProto();
        if (AsSibling) { o.RstSibling = true; }
        return o;
    }
}
