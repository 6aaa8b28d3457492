using RebootlessUpdate.Criu;

namespace RebootlessUpdate.Images;

/// <summary>Dumping with CRIU into a checkpoint set.</summary>
public static class CriuImageStoreExtensions
{
    private const long NearlyFullBytes = 256 * 1024;

    /// <summary>
    /// Dumps into <paramref name="set"/>'s images folder (overriding
    /// <see cref="CriuProcessOptions.ImagesDirectory"/>). When the dump fails because
    /// the store ran out of space, throws <see cref="StoreFullException"/> with
    /// CRIU's error inside; CRIU resumes the tree when a dump fails, so the
    /// workload keeps running.
    /// </summary>
    /// <exception cref="StoreFullException">The store filled up during the dump.</exception>
    /// <exception cref="CriuException">The dump failed for another reason (see its subclasses).</exception>
    public static async Task<CriuDumpResult> DumpIntoAsync(this CriuClient client, CheckpointSet set, CriuDumpOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(client);
        ArgumentNullException.ThrowIfNull(set);
        ArgumentNullException.ThrowIfNull(options);
        try
        {
            return await client.DumpAsync(options with { ImagesDirectory = set.ImagesDirectory }, cancellationToken).ConfigureAwait(false);
        }
        catch (CriuRequestFailedException e) when (IsOutOfSpace(e, set, out var capacity))
        {
            throw new StoreFullException(
                $"the image store at {set.Store.RootDirectory} is full: checkpoint set {set.Id} could not be written "
                + $"({SetStoreEngine.Bytes(capacity.FreeBytes)} free of {SetStoreEngine.Bytes(capacity.TotalBytes)} after the failed dump). "
                + $"CRIU resumed the workload. Delete the unsealed set {set.Id}, free space or use a larger store, and check the capacity estimate before updating. "
                + $"CRIU said: {e.Message}",
                capacity.FreeBytes, null, e);
        }
    }

    // CRIU 4.1 rarely forwards ENOSPC as its cr_errno; its log (when it could still
    // write one) and the store's own free space tell the story.
    private static bool IsOutOfSpace(CriuRequestFailedException e, CheckpointSet set, out StoreCapacity capacity)
    {
        capacity = set.Store.GetCapacity();
        return e.Errno == Interop.Libc.ENoSpc
            || e.Message.Contains("No space left on device", StringComparison.Ordinal)
            || capacity.FreeBytes < NearlyFullBytes;
    }
}
