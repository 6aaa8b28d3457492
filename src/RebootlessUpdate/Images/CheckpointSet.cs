using System.Collections.Concurrent;

namespace RebootlessUpdate.Images;

/// <summary>
/// An unsealed checkpoint set handed out by <see cref="IImageStore.CreateSet"/>:
/// CRIU writes into <see cref="ImagesDirectory"/>, then the store seals it.
/// </summary>
public sealed class CheckpointSet
{
    internal CheckpointSet(IImageStore store, string id, string directory, IReadOnlyList<string> targets, string hostMachineId, DateTimeOffset createdAt)
    {
        Store = store;
        Id = id;
        Directory = directory;
        Targets = targets;
        HostMachineId = hostMachineId;
        CreatedAt = createdAt;
    }

    /// <summary>The store that made the set.</summary>
    public IImageStore Store { get; }

    /// <summary>The set's id (sortable by creation time).</summary>
    public string Id { get; }

    /// <summary>The set's folder (holds the images folder and, once sealed, the manifest).</summary>
    public string Directory { get; }

    /// <summary>The folder CRIU writes into (0700).</summary>
    public string ImagesDirectory => Path.Combine(Directory, CheckpointSetLayout.ImagesFolder);

    /// <summary>What is checkpointed into the set.</summary>
    public IReadOnlyList<string> Targets { get; }

    /// <summary>The machine id of the host that created the set.</summary>
    public string HostMachineId { get; }

    /// <summary>Creation time.</summary>
    public DateTimeOffset CreatedAt { get; }

    /// <summary>Hashes taken by <see cref="IImageStore.PrehashAsync"/>, by set path; sealing reuses those whose file did not change.</summary>
    internal ConcurrentDictionary<string, PrehashedFile> Prehashed { get; } = new(StringComparer.Ordinal);
}

/// <summary>Names inside a store (documented in MANIFEST.md).</summary>
internal static class CheckpointSetLayout
{
    internal const string SetsFolder = "sets";
    internal const string ImagesFolder = "images";
    internal const string LockFile = ".lock";
    internal const string MarkerFile = ".rebootless-store";
    internal const string MarkerContent = "rebootless image store, layout 1\n";

    /// <summary>
    /// Written in a set's folder right after its manifest: the durable sign that the set was
    /// sealed, so that a set whose manifest was deleted reads as damaged, never as unsealed.
    /// </summary>
    internal const string SealMarkFile = "sealed";
}
