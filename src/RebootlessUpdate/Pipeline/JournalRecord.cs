using RebootlessUpdate.Targets;

namespace RebootlessUpdate.Pipeline;

/// <summary>The steps a journal records.</summary>
public enum JournalState
{
    /// <summary>Targets resolved, set created; nothing frozen.</summary>
    Planned,

    /// <summary>The next kernel is loaded; nothing frozen yet.</summary>
    KernelLoaded,

    /// <summary>Freezing and dumping the targets.</summary>
    Dumping,

    /// <summary>The set is sealed: every target's images are complete and hashed.</summary>
    Sealed,

    /// <summary>The jump into the next kernel is under way.</summary>
    Jumping,

    /// <summary>Restoring the targets (after the jump, or at the end of a rehearsal).</summary>
    Resuming,

    /// <summary>Every target runs again (on the new kernel, or on this one after a rehearsal).</summary>
    Resumed,

    /// <summary>A failure before the jump was rolled back: every target runs on the kernel it ran on.</summary>
    RolledBack,

    /// <summary>A failure that could not be fully rolled back; the record says which targets need attention.</summary>
    Failed,

    /// <summary>
    /// Given up by the operator (<c>rebootless images rm --force</c>): the set's images were deleted, so
    /// nothing of it can be restored any more; the history says which targets were lost.
    /// </summary>
    Abandoned,
}

/// <summary>One step in a journal's history.</summary>
/// <param name="State">The state entered.</param>
/// <param name="At">When (the store's clock).</param>
/// <param name="Detail">Why or what, when useful.</param>
public sealed record JournalEntry(JournalState State, DateTimeOffset At, string? Detail);

/// <summary>A target as the journal keeps it: enough to restore it after the jump.</summary>
public sealed record JournalTarget
{
    /// <summary>The target's id (e.g. <c>pid:1234</c>).</summary>
    public required string Id { get; init; }

    /// <summary>Its images folder, relative to the set's images folder.</summary>
    public required string Folder { get; init; }

    /// <summary>The CRIU settings it was dumped with (restore uses the same).</summary>
    public required TargetCriuSettings Settings { get; init; }

    /// <summary>Root pid when dumped.</summary>
    public int RootPid { get; init; }

    /// <summary>Start time (clock ticks since boot) of the root when dumped: tells the original from a reused pid.</summary>
    public ulong RootStartTime { get; init; }

    /// <summary>Where the target is.</summary>
    public TargetPhase Phase { get; init; }

    /// <summary>Root pid after restore (recorded at CRIU's post-restore point, before the tree runs).</summary>
    public int? RestoredPid { get; init; }

    /// <summary>Start time (clock ticks since boot) of the restored root: tells the restored tree from a reused pid.</summary>
    public ulong? RestoredStartTime { get; init; }

    /// <summary>When its dump started (wall clock; survives the jump).</summary>
    public DateTimeOffset? DumpStartedAt { get; init; }

    /// <summary>When it was restored.</summary>
    public DateTimeOffset? RestoredAt { get; init; }

    /// <summary>
    /// When its last restore was asked for (wall clock of the kernel that asked): what a tool that restores with its
    /// own clock (podman's <c>RestoredAt</c>) is compared with, never the dump's time from another kernel's clock.
    /// </summary>
    public DateTimeOffset? RestoreRequestedAt { get; init; }

    /// <summary>From its freeze until CRIU held it with every image written.</summary>
    public TimeSpan? DumpTime { get; init; }

    /// <summary>Bytes of its images.</summary>
    public long? ImageBytes { get; init; }

    /// <summary>How long CRIU took to restore it.</summary>
    public TimeSpan? RestoreTime { get; init; }

    /// <summary>The pid of the lazy-pages daemon serving its memory, when it was restored lazily.</summary>
    public int? LazyPagesDaemonPid { get; init; }

    /// <summary>Why CRIU refused its pre-dump, when it did (it was dumped whole inside the freeze).</summary>
    public string? PreDumpRefused { get; init; }

    /// <summary>What went wrong, if anything.</summary>
    public string? Error { get; init; }
}

/// <summary>The content of a journal file (<c>STORE/journal/SETID.json</c>).</summary>
public sealed record JournalRecord
{
    /// <summary>Always <c>rebootless-journal</c>.</summary>
    public string Format { get; init; } = UpdateJournal.FormatName;

    /// <summary>Format version (1).</summary>
    public int Version { get; init; } = 1;

    /// <summary>The checkpoint set.</summary>
    public required string SetId { get; init; }

    /// <summary>What the run was for.</summary>
    public required UpdateMode Mode { get; init; }

    /// <summary>The latest state.</summary>
    public required JournalState State { get; init; }

    /// <summary>The boot id of the kernel that wrote the plan (<c>/proc/sys/kernel/random/boot_id</c>): tells "after the jump" from "crashed before it".</summary>
    public required string BootId { get; init; }

    /// <summary>The kernel release that wrote the plan.</summary>
    public required string KernelRelease { get; init; }

    /// <summary>The kernel to jump into, once loaded.</summary>
    public string? NextKernel { get; init; }

    /// <summary>The next kernel's command line, once loaded.</summary>
    public string? NextCommandLine { get; init; }

    /// <summary>The targets.</summary>
    public required IReadOnlyList<JournalTarget> Targets { get; init; }

    /// <summary>Every state entered, oldest first.</summary>
    public required IReadOnlyList<JournalEntry> History { get; init; }

    /// <summary>The stage that failed, if one did.</summary>
    public string? FailedStage { get; init; }

    /// <summary>The failure, if one happened.</summary>
    public string? Error { get; init; }
}
