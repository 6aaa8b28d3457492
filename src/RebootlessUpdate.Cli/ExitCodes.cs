namespace RebootlessUpdate.Cli;

/// <summary>The tool's exit codes: scripts rely on them.</summary>
internal static class ExitCodes
{
    public const int Ok = 0;
    public const int Failed = 1;          // the operation ran and failed; every workload was put back (rolled back)
    public const int Usage = 2;           // bad arguments
    public const int NotRoot = 3;
    public const int CriuMissing = 4;
    public const int CriuTooOld = 5;
    public const int UnknownTarget = 6;   // unknown pid / cgroup / container / service
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
}
