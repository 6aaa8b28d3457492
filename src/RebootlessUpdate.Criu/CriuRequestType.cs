namespace RebootlessUpdate.Criu;

/// <summary>The requests of CRIU's RPC protocol.</summary>
public enum CriuRequestType
{
    /// <summary>Not a request.</summary>
    Empty = 0,

    /// <summary>Checkpoint a process tree.</summary>
    Dump = 1,

    /// <summary>Restore a process tree from images.</summary>
    Restore = 2,

    /// <summary>Check that the kernel supports what CRIU needs.</summary>
    Check = 3,

    /// <summary>Pre-dump memory while the tree runs (iterative session).</summary>
    PreDump = 4,

    /// <summary>Start a page server.</summary>
    PageServer = 5,

    /// <summary>Answer to a notification.</summary>
    Notify = 6,

    /// <summary>Dump CPU information.</summary>
    CpuInfoDump = 7,

    /// <summary>Check CPU information against a dump.</summary>
    CpuInfoCheck = 8,

    /// <summary>Ask which optional features work here.</summary>
    FeatureCheck = 9,

    /// <summary>Ask CRIU's version.</summary>
    Version = 10,

    /// <summary>Wait for a child of the worker.</summary>
    WaitPid = 11,

    /// <summary>Start a page server as a child of the worker.</summary>
    PageServerChild = 12,

    /// <summary>One pre-dump per connection (CRIU 3.17+).</summary>
    SinglePreDump = 13,
}
