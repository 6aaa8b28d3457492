namespace RebootlessUpdate.Images;

/// <summary>
/// Base of the stores whose sets live in a folder (directly, or on a file
/// system the store mounts): every <see cref="IImageStore"/> operation is the
/// shared set engine's; a backend only says where the folder is and how it
/// comes to exist.
/// </summary>
public abstract class EngineBackedImageStore : IImageStore
{
    private SetStoreEngine? _engine;

    private protected EngineBackedImageStore()
    {
    }

    /// <summary>The engine over the backend's folder; set once by the backend's constructor.</summary>
    private protected SetStoreEngine Engine
    {
        get => _engine ?? throw new InvalidOperationException("the store is not initialised");
        set => _engine = _engine is null ? value : throw new InvalidOperationException("the store's engine is set once");
    }

    /// <inheritdoc />
    public string RootDirectory => Engine.Root;

    /// <inheritdoc />
    public ImageStoreLock AcquireLock() => Engine.AcquireLock();

    /// <inheritdoc />
    public CheckpointSet CreateSet(IReadOnlyList<string> targets) => Engine.CreateSet(targets);

    /// <inheritdoc />
    public Task<CheckpointManifest> SealAsync(CheckpointSet checkpointSet, SealOptions options, CancellationToken cancellationToken = default) =>
        Engine.SealAsync(checkpointSet, options, cancellationToken);

    /// <inheritdoc />
    public Task PrehashAsync(CheckpointSet checkpointSet, string folder, CancellationToken cancellationToken = default) =>
        Engine.PrehashAsync(checkpointSet, folder, cancellationToken);

    /// <inheritdoc />
    public Task<VerificationResult> VerifyAsync(string setId, VerifyOptions? options = null, CancellationToken cancellationToken = default) =>
        Engine.VerifyAsync(setId, options, cancellationToken);

    /// <inheritdoc />
    public Task<RestorableSet> OpenForRestoreAsync(string setId, VerifyOptions? options = null, CancellationToken cancellationToken = default) =>
        Engine.OpenForRestoreAsync(setId, options, cancellationToken);

    /// <inheritdoc />
    public IReadOnlyList<CheckpointSetInfo> ListSets() => Engine.ListSets();

    /// <inheritdoc />
    public void DeleteSet(string setId) => Engine.DeleteSet(setId);

    /// <inheritdoc />
    public IReadOnlyList<string> ApplyRetention(int keepSealed) => Engine.ApplyRetention(keepSealed);

    /// <inheritdoc />
    public StoreCapacity GetCapacity() => Engine.GetCapacity();

    /// <inheritdoc />
    public CapacityEstimate EnsureCapacityFor(IReadOnlyCollection<int> rootPids) => Engine.EnsureCapacityFor(rootPids);
}
