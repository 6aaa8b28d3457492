namespace RebootlessUpdate.Cli;

/// <summary>The tool's exit codes: scripts rely on them. `rebootless --help` and the README list them.</summary>
internal static class ExitCodes
{
    public const int Ok = 0;
    public const int Failed = 1;          // the operation ran and failed; every workload was put back (rolled back)
    public const int Usage = 2;           // bad arguments
    public const int NotRoot = 3;
    public const int CriuMissing = 4;
    public const int CriuTooOld = 5;
    public const int UnknownTarget = 6;   // unknown pid / cgroup / container / service, or one that cannot be checkpointed
    public const int BadKernel = 7;       // missing or invalid kernel / initrd
    public const int BadStore = 8;        // missing or unusable store
    public const int KexecUnavailable = 9;
    public const int StoreFull = 10;
    public const int StoreLocked = 11;
    public const int NeedsAttention = 12; // failed and not every workload could be put back: read the report
    public const int CriuUnusable = 13;
    public const int TargetInactive = 14; // the target exists but does not run (e.g. an inactive systemd service)
    public const int SystemdUnavailable = 15; // --service, and systemd is not running (or not reachable)
    public const int CriuTimedOut = 16;   // a CRIU request outlived --criu-timeout: criu was killed, every workload put back
    public const int Internal = 70;       // a bug in the tool (EX_SOFTWARE): the message says where it stopped
    public const int Interrupted = 130;   // SIGINT or SIGTERM: stopped at a safe point, rolled back, report printed

    /// <summary>Every code with its name (the <c>error</c> of a JSON error) and what it means, in order.</summary>
    public static readonly IReadOnlyList<(int Code, string Name, string Meaning)> All =
    [
        (Ok, "ok", "done (or nothing to do)"),
        (Failed, "failed", "the run failed and was rolled back: every workload runs as before"),
        (Usage, "usage", "bad arguments, options or config file; nothing was changed"),
        (NotRoot, "not-root", "not running as root; nothing was changed"),
        (CriuMissing, "criu-missing", "criu was not found"),
        (CriuTooOld, "criu-too-old", "criu is older than the tool needs"),
        (UnknownTarget, "unknown-target", "a target does not exist or cannot be checkpointed (pid 0, a thread, a kernel thread)"),
        (BadKernel, "bad-kernel", "the kernel or initrd is missing or not a kernel"),
        (BadStore, "bad-store", "the store is missing or unusable"),
        (KexecUnavailable, "kexec-unavailable", "this kernel cannot load another (kexec)"),
        (StoreFull, "store-full", "the store has no room for the checkpoint; every workload runs as before"),
        (StoreLocked, "store-locked", "another rebootless run holds the store"),
        (NeedsAttention, "needs-attention", "not every workload could be put back, or an unfinished run needs `rebootless resume`: read the report"),
        (CriuUnusable, "criu-unusable", "criu runs but fails its checks"),
        (TargetInactive, "target-inactive", "a target exists but does not run"),
        (SystemdUnavailable, "systemd-unavailable", "--service, and systemd cannot be reached"),
        (CriuTimedOut, "criu-timed-out", "criu outlived --criu-timeout: it was killed, every workload runs as before"),
        (Internal, "internal", "a bug in rebootless: the message says where it stopped"),
        (Interrupted, "interrupted", "SIGINT or SIGTERM: stopped at a safe point, rolled back, report printed"),
    ];

    /// <summary>The name of <paramref name="code"/> (e.g. <c>store-full</c>).</summary>
    public static string Name(int code) => All.FirstOrDefault(c => c.Code == code).Name ?? "failed";
}
