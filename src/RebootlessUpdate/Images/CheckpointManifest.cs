namespace RebootlessUpdate.Images;

/// <summary>
/// The sealed description of a checkpoint set (format in Images/MANIFEST.md):
/// identity, where and with what it was made, and every file with its size and
/// XxHash128. Written once, atomically, when the set is sealed.
/// </summary>
public sealed record CheckpointManifest
{
    /// <summary>The set's id (also its folder name).</summary>
    public required string SetId { get; init; }

    /// <summary>Content of <c>/etc/machine-id</c> on the host that sealed the set.</summary>
    public required string HostMachineId { get; init; }

    /// <summary>Kernel release running when the set was sealed (the kernel before the switch).</summary>
    public required string KernelRelease { get; init; }

    /// <summary>Version of the CRIU that wrote the images, e.g. <c>4.1.1</c>.</summary>
    public required string CriuVersion { get; init; }

    /// <summary>What was checkpointed, in the caller's words (e.g. <c>pid:1234</c>).</summary>
    public required IReadOnlyList<string> Targets { get; init; }

    /// <summary>Sum of the sizes of <see cref="Files"/>.</summary>
    public required long TotalBytes { get; init; }

    /// <summary>When the set was created (from the store's <see cref="TimeProvider"/>).</summary>
    public required DateTimeOffset CreatedAt { get; init; }

    /// <summary>When the set was sealed.</summary>
    public required DateTimeOffset SealedAt { get; init; }

    /// <summary>Every file and symbolic link of the set's images folder, sorted by path (ordinal).</summary>
    public required IReadOnlyList<ManifestEntry> Files { get; init; }
}

/// <summary>One entry of a manifest.</summary>
public sealed record ManifestEntry
{
    /// <summary>Path relative to the images folder, <c>/</c>-separated, normalised (no <c>.</c>, <c>..</c> or empty parts).</summary>
    public required string Path { get; init; }

    /// <summary>Size in bytes (0 for a symbolic link).</summary>
    public required long Size { get; init; }

    /// <summary>XxHash128 of the content, 32 lowercase hex digits (canonical big-endian); null for a symbolic link.</summary>
    public string? Xxh128 { get; init; }

    /// <summary>For a symbolic link: its target, which must resolve inside the set; null for a file.</summary>
    public string? SymlinkTarget { get; init; }

    /// <summary>
    /// For a page image (<c>pages-N.img</c>): the size of the chunks that <see cref="ChunkXxh128"/> covers
    /// (1 MiB); null for other files and for sets sealed before chunk hashes.
    /// </summary>
    public int? ChunkSize { get; init; }

    /// <summary>
    /// For a page image: the XxHash128 of each <see cref="ChunkSize"/> bytes in order (the last chunk may be
    /// shorter), so that a page served on demand is checked with its chunk, without reading the whole image.
    /// </summary>
    public IReadOnlyList<string>? ChunkXxh128 { get; init; }

    /// <summary>Equal when every field is, the chunk hashes compared one by one.</summary>
    public bool Equals(ManifestEntry? other) =>
        other is not null && Path == other.Path && Size == other.Size && Xxh128 == other.Xxh128 && SymlinkTarget == other.SymlinkTarget
        && ChunkSize == other.ChunkSize
        && (ReferenceEquals(ChunkXxh128, other.ChunkXxh128) || (ChunkXxh128 is not null && other.ChunkXxh128 is not null && ChunkXxh128.SequenceEqual(other.ChunkXxh128)));

    /// <inheritdoc/>
    public override int GetHashCode() => HashCode.Combine(Path, Size, Xxh128, SymlinkTarget, ChunkSize, ChunkXxh128?.Count);
}
