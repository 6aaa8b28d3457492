namespace RebootlessUpdate.Kexec;

/// <summary>
/// What the next kernel's command line must carry besides what the running
/// kernel already has; used by <see cref="KexecCommandLine.ComposeNext"/>.
/// Immutable; every value is checked when the line is composed.
/// </summary>
public sealed record NextCommandLineOptions
{
    /// <summary>
    /// The store's persistent-memory regions as <c>memmap=</c> values (<c>SIZE!START</c>,
    /// e.g. <c>64M!512M</c>). They replace the current line's <c>memmap=…!…</c> regions.
    /// Default: empty, which keeps the current regions unchanged (a region must
    /// be declared again in every kernel or its content is lost).
    /// </summary>
    public IReadOnlyList<string> PersistentMemoryRegions { get; init; } = [];

    /// <summary>
    /// The checkpoint set to resume after the jump, written as
    /// <c>rebootless.resume=ID</c> (<see cref="RebootlessInfo.ResumeParameter"/>). Default: null (no marker).
    /// </summary>
    public string? ResumeSetId { get; init; }

    /// <summary>
    /// Parameters to set (a null value writes the bare name), in order; each replaces
    /// every occurrence of its name in place, or is appended. Default: none.
    /// </summary>
    public IReadOnlyList<KeyValuePair<string, string?>> SetParameters { get; init; } = [];

    /// <summary>
    /// Names to drop besides <see cref="KexecCommandLine.OneShotParameters"/>. Default: none.
    /// </summary>
    public IReadOnlyList<string> RemoveParameters { get; init; } = [];

    /// <summary>
    /// The most bytes the target kernel accepts, including the terminating NUL.
    /// Default: <see cref="KexecCommandLine.DefaultMaxBytes"/> (2048, x86).
    /// </summary>
    public int MaxBytes { get; init; } = KexecCommandLine.DefaultMaxBytes;
}
