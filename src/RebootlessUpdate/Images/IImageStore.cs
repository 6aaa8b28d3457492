namespace RebootlessUpdate.Images;

/// <summary>
/// A place that keeps checkpoint sets (the "PramFS image store" of the design).
/// A set is created, CRIU writes into its <see cref="CheckpointSet.ImagesDirectory"/>,
/// the set is sealed with a manifest (the commit point), and after the kernel
/// switch it is verified and only then opened for restore.
/// </summary>
/// <remarks>
/// Security: the store folder is 0700 and set files 0600 (images hold process
/// memory: keys, passwords); manifest paths are relative and normalised and
/// anything that escapes the set is rejected at seal and at verify; a set sealed
/// on another host is refused unless <see cref="VerifyOptions.AllowForeignHost"/>.
/// </remarks>
public interface IImageStore
{
    /// <summary>The store's root folder.</summary>
    string RootDirectory { get; }

    /// <summary>
    /// Takes the store's exclusive lock (an <c>flock</c> on <c>.lock</c> in the
    /// store) for the length of an update. Fails at once when another holder has it.
    /// </summary>
    /// <exception cref="ImageStoreLockedException">Another process or store instance holds the lock; names its pid.</exception>
    ImageStoreLock AcquireLock();

    /// <summary>Creates an empty, unsealed set for <paramref name="targets"/>.</summary>
    /// <param name="targets">What will be checkpointed, recorded in the manifest (e.g. <c>pid:1234</c>).</param>
    CheckpointSet CreateSet(IReadOnlyList<string> targets);

    /// <summary>
    /// Seals <paramref name="checkpointSet"/>: fsyncs and hashes every file, then writes the
    /// manifest atomically. A set is restorable only once this returns.
    /// </summary>
    /// <exception cref="UnsafeSetPathException">The images folder holds a link other than CRIU's parent link, or a special file.</exception>
    /// <exception cref="UnsafeStorePathException">The set or images folder is a link, another user's, or writable by others.</exception>
    Task<CheckpointManifest> SealAsync(CheckpointSet checkpointSet, SealOptions options, CancellationToken cancellationToken = default);

    /// <summary>
    /// Fsyncs and hashes the files under <paramref name="folder"/> (a path inside the set's images
    /// folder) now, while the workloads still run, so that <see cref="SealAsync"/> (inside the
    /// freeze) only hashes what was written after. A file that changes afterwards (size, mtime,
    /// ctime or inode) is hashed again at seal, so calling this early is never wrong, only wasted.
    /// Stores that do not support it do nothing.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="folder"/> is not a valid set path.</exception>
    /// <exception cref="DirectoryNotFoundException">The set has no such folder.</exception>
    Task PrehashAsync(CheckpointSet checkpointSet, string folder, CancellationToken cancellationToken = default) => Task.CompletedTask;

    /// <summary>Verifies a set against its manifest and lists every mismatch.</summary>
    /// <exception cref="CheckpointSetNotFoundException">There is no such set.</exception>
    /// <exception cref="UnsafeStorePathException">The set's folder is a link, another user's, or writable by others: it is not read through.</exception>
    Task<VerificationResult> VerifyAsync(string setId, VerifyOptions? options = null, CancellationToken cancellationToken = default);

    /// <summary>Verifies a set and, only when it passes, returns what a restore needs.</summary>
    /// <exception cref="CheckpointSetVerificationException">Verification found problems (listed in the exception).</exception>
    /// <exception cref="CheckpointSetNotFoundException">There is no such set.</exception>
    Task<RestorableSet> OpenForRestoreAsync(string setId, VerifyOptions? options = null, CancellationToken cancellationToken = default);

    /// <summary>Every set in the store, oldest first.</summary>
    IReadOnlyList<CheckpointSetInfo> ListSets();

    /// <summary>Deletes a set (sealed or not).</summary>
    /// <exception cref="UnsafeStorePathException">The set's folder is a link, another user's, or writable by others: nothing is deleted.</exception>
    void DeleteSet(string setId);

    /// <summary>
    /// Keeps the newest <paramref name="keepSealed"/> sealed sets and deletes
    /// older sealed sets and unsealed sets older than the newest sealed one
    /// (abandoned attempts). Returns the ids deleted. Hold the lock while calling it.
    /// </summary>
    IReadOnlyList<string> ApplyRetention(int keepSealed);

    /// <summary>Size and free space of the file system that holds the store.</summary>
    StoreCapacity GetCapacity();

    /// <summary>
    /// Estimates the space checkpointing the process trees rooted at
    /// <paramref name="rootPids"/> needs and compares it with the free space.
    /// </summary>
    /// <exception cref="StoreFullException">The estimate does not fit: refuse the update.</exception>
    CapacityEstimate EnsureCapacityFor(IReadOnlyCollection<int> rootPids);
}

/// <summary>What sealing needs from the caller.</summary>
public sealed record SealOptions
{
    /// <summary>Version of the CRIU that wrote the images (e.g. from <c>CriuClient.GetVersionAsync</c>). Required.</summary>
    public required string CriuVersion { get; init; }

    /// <summary>Kernel release to record; default: the running kernel's (<c>/proc/sys/kernel/osrelease</c>).</summary>
    public string? KernelRelease { get; init; }
}

/// <summary>How to verify a set.</summary>
public sealed record VerifyOptions
{
    /// <summary>Full (re-hash, default) or quick (presence and sizes).</summary>
    public VerificationMode Mode { get; init; } = VerificationMode.Full;

    /// <summary>Accept a set sealed on a host with another machine id (default false: refused).</summary>
    public bool AllowForeignHost { get; init; }

    /// <summary>
    /// Checks only the manifest entries whose set path (e.g. <c>00-pid-42/pages-1.img</c>) this
    /// accepts; null (default) checks every entry. The manifest itself is always checked.
    /// </summary>
    public Func<string, bool>? Include { get; init; }

    /// <summary>Also report files on disk that the manifest does not list (default true).</summary>
    public bool ReportUnlisted { get; init; } = true;

    /// <summary>Files hashed at the same time (default: one per processor; 1 leaves the other processors to other work).</summary>
    public int? MaxParallelism { get; init; }
}

/// <summary>
/// A set that passed verification, ready for CRIU to restore from. Only
/// <see cref="IImageStore.OpenForRestoreAsync"/> hands these out.
/// </summary>
public sealed class RestorableSet
{
    internal RestorableSet(VerificationResult verification)
    {
        Verification = verification;
        Manifest = verification.Manifest!;
    }

    /// <summary>The set's id.</summary>
    public string SetId => Manifest.SetId;

    /// <summary>The folder to give CRIU as its images directory.</summary>
    public string ImagesDirectory => Verification.ImagesDirectory;

    /// <summary>The verified manifest.</summary>
    public CheckpointManifest Manifest { get; }

    /// <summary>The verification that passed.</summary>
    public VerificationResult Verification { get; }
}

/// <summary>A set as listed by <see cref="IImageStore.ListSets"/> (without hashing anything).</summary>
/// <param name="SetId">The set's id.</param>
/// <param name="IsSealed">
/// True when the set was sealed: its manifest or its seal mark exists. It may still fail
/// verification (e.g. its manifest was deleted: see <see cref="Problem"/>).
/// </param>
/// <param name="CreatedAt">Creation time (from the manifest when sealed, else from the id).</param>
/// <param name="TotalBytes">Bytes recorded in the manifest, or null when unsealed or unreadable.</param>
public sealed record CheckpointSetInfo(string SetId, bool IsSealed, DateTimeOffset CreatedAt, long? TotalBytes)
{
    /// <summary>
    /// Why the set cannot be trusted as far as listing sees (its manifest is missing or unreadable,
    /// its folder is a link or another user's, ...); null when listing saw nothing wrong.
    /// </summary>
    public string? Problem { get; init; }

    /// <summary>
    /// True only for a set that positively never began sealing: its own folder, no manifest, no seal
    /// mark. A set that was sealed and lost its manifest, or whose folder cannot be trusted, is never this.
    /// </summary>
    public bool IsNeverSealed => !IsSealed && Problem is null;

    /// <summary>False when the set's folder is not one the store made (a link, another user's): the store never deletes it.</summary>
    internal bool IsOwnFolder { get; init; } = true;
}

/// <summary>Size and free space of a store's file system.</summary>
/// <param name="TotalBytes">Size of the file system.</param>
/// <param name="FreeBytes">Bytes available to the caller (statvfs <c>f_bavail * f_frsize</c>).</param>
public readonly record struct StoreCapacity(long TotalBytes, long FreeBytes);

/// <summary>
/// The estimate behind <see cref="IImageStore.EnsureCapacityFor"/>: what the
/// trees' memory adds up to and the margin added for CRIU's own images and log.
/// </summary>
/// <param name="Processes">Processes found in the trees.</param>
/// <param name="MemoryBytes">Anonymous + swapped + proportional shared memory of those processes (what CRIU dumps as pages).</param>
/// <param name="RequiredBytes">The estimate with the safety margin (see <see cref="CapacityEstimator"/>).</param>
/// <param name="FreeBytes">Free bytes of the store when estimated.</param>
public readonly record struct CapacityEstimate(int Processes, long MemoryBytes, long RequiredBytes, long FreeBytes)
{
    /// <summary>True when the estimate fits the free space.</summary>
    public bool Fits => RequiredBytes <= FreeBytes;
}

/// <summary>
/// The store's exclusive lock. Dispose to release it; the kernel also releases
/// it when the holder dies, so a crashed update never leaves the store locked.
/// </summary>
public sealed class ImageStoreLock : IDisposable
{
    private readonly Microsoft.Win32.SafeHandles.SafeFileHandle _handle;

    internal ImageStoreLock(Microsoft.Win32.SafeHandles.SafeFileHandle handle, string lockFile)
    {
        _handle = handle;
        LockFile = lockFile;
    }

    /// <summary>The lock file.</summary>
    public string LockFile { get; }

    /// <summary>True until the lock is released.</summary>
    public bool IsHeld => !_handle.IsClosed;

    /// <summary>Releases the lock.</summary>
    public void Dispose() => _handle.Dispose();
}
