using Microsoft.Extensions.Logging;

namespace RebootlessUpdate.Images;

/// <summary>Options of a <see cref="PramFsImageStore"/>. Immutable; validated by <see cref="PramFsImageStore.Open"/>.</summary>
public sealed record PramFsImageStoreOptions
{
    /// <summary>
    /// The region holding the file system: a pmem block device (<c>/dev/pmem0</c>) or a regular file
    /// (tests, hosts without pmem); several regions are given comma-separated, in mkfs order. Required.
    /// </summary>
    public required string Region { get; init; }

    /// <summary>Where to mount the store (default <c>/run/rebootless/pramfs</c>; created 0700).</summary>
    public string MountPoint { get; init; } = "/run/rebootless/pramfs";

    /// <summary>
    /// Path of the <c>pramfs</c> binary. Default: <c>native-pramfs/build/pramfs</c> of the repository this
    /// assembly was built in (searched upwards from the application folder), else <c>pramfs</c> on PATH.
    /// </summary>
    public string? PramFsPath { get; init; }

    /// <summary>How long the daemon may take to make the mount live, and to exit after the unmount (default 30 s).</summary>
    public TimeSpan DaemonTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// When the check before mounting finds damage, run <c>pramfs fsck -r</c> (drops what fails its checksums;
    /// the set verification then reports those files missing) instead of refusing. Default false: refuse.
    /// </summary>
    public bool RepairOnOpen { get; init; }

    /// <summary>
    /// Run the check before mounting through libpramfs inside this process instead of the <c>pramfs fsck</c>
    /// tool in a child process. Default false: a region that faults when read (SIGBUS on a memory error) or
    /// hangs then fails the check with an exit status and a timeout, instead of taking down the process that
    /// is about to restore the workloads. True saves a process start.
    /// </summary>
    public bool CheckInProcess { get; init; }

    /// <summary>Clock for set times (default <see cref="TimeProvider.System"/>).</summary>
    public TimeProvider TimeProvider { get; init; } = TimeProvider.System;

    /// <summary>File holding this host's id (default <c>/etc/machine-id</c>).</summary>
    public string MachineIdPath { get; init; } = "/etc/machine-id";

    /// <summary>Logger (default: none).</summary>
    public ILogger? Logger { get; init; }

    /// <summary>
    /// A root-only key file outside the store: when set, every seal writes a keyed hash of the manifest and
    /// verification refuses a set without a valid one (see <see cref="DirectoryImageStoreOptions.ManifestKeyPath"/>).
    /// Default null: no keyed hash.
    /// </summary>
    public string? ManifestKeyPath { get; init; }
}

/// <summary>What fsck (libpramfs, or the <c>pramfs fsck</c> tool) said about the region before it was mounted.</summary>
/// <param name="ExitCode">0 clean, 1 repaired, 2 corrupt, 4 could not check (see native-pramfs/FORMAT.md).</param>
/// <param name="Output">The report, one finding per line (the same text from the library and the tool).</param>
public sealed record PramFsCheckResult(int ExitCode, string Output)
{
    /// <summary>True when the check found nothing to repair.</summary>
    public bool IsClean => ExitCode == 0;

    /// <summary>The first problem found, or why it could not check; empty when clean (and when the tool ran: see <see cref="Output"/>).</summary>
    public string FirstProblem { get; init; } = string.Empty;

    /// <summary>Problems found (before a repair); -1 when the tool ran (only its exit code and report are known).</summary>
    public int Problems { get; init; } = -1;
}

/// <summary>The check of a PramFS region before mounting found damage it did not repair.</summary>
public sealed class PramFsCheckFailedException : ImageStoreException
{
    /// <summary>Creates the exception.</summary>
    public PramFsCheckFailedException(string region, PramFsCheckResult check)
        : base($"the PramFS region {region} is damaged (fsck exit {check.ExitCode}); nothing was mounted or restored. "
            + $"Run 'pramfs fsck -r {region}' to drop what fails its checksums (or set RepairOnOpen). fsck said: {check.Output.Trim()}")
    {
        Check = check;
    }

    /// <summary>Creates the exception.</summary>
    public PramFsCheckFailedException()
    {
    }

    /// <summary>Creates the exception.</summary>
    public PramFsCheckFailedException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception.</summary>
    public PramFsCheckFailedException(string message, Exception innerException)
        : base(message, innerException)
    {
    }

    /// <summary>The check's result.</summary>
    public PramFsCheckResult? Check { get; }
}
