namespace RebootlessUpdate.Images;

/// <summary>
/// What a PramFS region's superblock and metadata say (the newest intact state), as
/// <c>pramfs info</c> prints it. Read with <see cref="PramFsImageStore.ReadInfo"/>.
/// </summary>
public sealed record PramFsInfo
{
    /// <summary>On-region format version (native-pramfs/FORMAT.md).</summary>
    public required int FormatVersion { get; init; }

    /// <summary>The file system's uuid (the same text as <c>pramfs info</c>).</summary>
    public required Guid Uuid { get; init; }

    /// <summary>Generation of the state in use; every commit adds one.</summary>
    public required long Generation { get; init; }

    /// <summary>Size of all regions together.</summary>
    public required long SizeBytes { get; init; }

    /// <summary>Block size (4096 in version 1).</summary>
    public required int BlockSize { get; init; }

    /// <summary>Number of regions the file system spans.</summary>
    public required int RegionCount { get; init; }

    /// <summary>Blocks for file data (regions minus superblocks and the two metadata areas).</summary>
    public required long DataBlocks { get; init; }

    /// <summary>Free blocks.</summary>
    public required long FreeBlocks { get; init; }

    /// <summary>Free bytes (<see cref="FreeBlocks"/> times <see cref="BlockSize"/>).</summary>
    public required long FreeBytes { get; init; }

    /// <summary>Inodes in use, the root directory included.</summary>
    public required long Inodes { get; init; }

    /// <summary>Regular files.</summary>
    public required long Files { get; init; }

    /// <summary>Directories, the root included.</summary>
    public required long Directories { get; init; }

    /// <summary>Symbolic links.</summary>
    public required long Symlinks { get; init; }

    /// <summary>Sum of the regular files' sizes.</summary>
    public required long FileBytes { get; init; }

    /// <summary>Capacity of each of the two metadata areas.</summary>
    public required long MetadataAreaBytes { get; init; }

    /// <summary>Size of the committed metadata.</summary>
    public required long MetadataBytes { get; init; }

    /// <summary>When mkfs ran, in nanoseconds since the Unix epoch.</summary>
    public required long CreatedUnixNanoseconds { get; init; }

    /// <summary>When the state in use was committed, in nanoseconds since the Unix epoch.</summary>
    public required long CommittedUnixNanoseconds { get; init; }

    /// <summary><see cref="CommittedUnixNanoseconds"/> as a time (100 ns precision).</summary>
    public DateTimeOffset CommittedAt => DateTimeOffset.UnixEpoch.AddTicks(CommittedUnixNanoseconds / 100);

    /// <summary>
    /// Parses the output of <c>pramfs info</c> (its "key: value" lines).
    /// </summary>
    /// <exception cref="FormatException">A field is missing or not a number.</exception>
    internal static PramFsInfo Parse(string output)
    {
        var fields = output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(l => l.Split(": ", 2))
            .Where(kv => kv.Length == 2)
            .GroupBy(kv => kv[0], StringComparer.Ordinal)
            .ToDictionary(g => g.Key, g => g.First()[1], StringComparer.Ordinal);
        string Text(string key) => fields.TryGetValue(key, out var v) ? v : throw new FormatException($"pramfs info printed no '{key}'");
        long Number(string key) => long.TryParse(Text(key), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var n) ? n
            : throw new FormatException($"pramfs info: '{key}' is not a number: {Text(key)}");
        var blockSize = (int)Number("block_size");
        var free = Number("free_blocks");
        return new PramFsInfo
        {
            FormatVersion = (int)Number("format_version"),
            Uuid = Guid.Parse(Text("uuid")),
            Generation = Number("generation"),
            SizeBytes = Number("size"),
            BlockSize = blockSize,
            RegionCount = (int)Number("regions"),
            DataBlocks = Number("data_blocks"),
            FreeBlocks = free,
            FreeBytes = free * blockSize,
            Inodes = Number("inodes"),
            Files = Number("files"),
            Directories = Number("directories"),
            Symlinks = Number("symlinks"),
            FileBytes = Number("file_bytes"),
            MetadataAreaBytes = Number("metadata_area_bytes"),
            MetadataBytes = Number("metadata_bytes"),
            CreatedUnixNanoseconds = Number("created_ns"),
            CommittedUnixNanoseconds = Number("committed_ns"),
        };
    }
}
