using RebootlessUpdate.Criu.Protocol;

namespace RebootlessUpdate.Criu;

/// <summary>Optional features and whether they work on this host (FEATURE_CHECK).</summary>
/// <param name="MemoryTracking">Soft-dirty memory tracking, needed for iterative pre-dump.</param>
/// <param name="LazyPages">userfaultfd-based lazy restore.</param>
/// <param name="PidfdStore">pidfd store, for pid reuse detection across pre-dumps.</param>
public sealed record CriuFeatures(bool MemoryTracking, bool LazyPages, bool PidfdStore);

/// <summary>
/// What CRIU measured during a dump (the <c>stats-dump</c> image). Times as
/// CRIU reports them: <see cref="MemoryDump"/> is CRIU's memdump_time, which
/// (in CRIU 4.x) covers draining pages from the tasks; <see cref="MemoryWrite"/>
/// is writing them to the images.
/// </summary>
public sealed record CriuDumpStatistics(
    TimeSpan Freezing, TimeSpan Frozen, TimeSpan MemoryDump, TimeSpan MemoryWrite,
    ulong PagesScanned, ulong PagesSkippedParent, ulong PagesWritten, ulong PagesLazy)
{
    internal static CriuDumpStatistics From(dump_stats_entry d) => new(
        Micro(d.FreezingTime), Micro(d.FrozenTime), Micro(d.MemdumpTime), Micro(d.MemwriteTime),
        d.PagesScanned, d.PagesSkippedParent, d.PagesWritten, d.PagesLazy);

    internal static TimeSpan Micro(uint us) => TimeSpan.FromMicroseconds(us);
}

/// <summary>What CRIU measured during a restore (the <c>stats-restore</c> image).</summary>
public sealed record CriuRestoreStatistics(TimeSpan Forking, TimeSpan Restore, ulong PagesCompared, ulong PagesSkippedCow, ulong PagesRestored)
{
    internal static CriuRestoreStatistics From(restore_stats_entry r) => new(
        CriuDumpStatistics.Micro(r.ForkingTime), CriuDumpStatistics.Micro(r.RestoreTime), r.PagesCompared, r.PagesSkippedCow, r.PagesRestored);
}

/// <summary>The outcome of a successful dump.</summary>
/// <param name="Statistics">CRIU's statistics, when it wrote them and they can be read (a full file system cuts them short).</param>
/// <param name="LogFile">The request's CRIU log.</param>
public sealed record CriuDumpResult(CriuDumpStatistics? Statistics, string LogFile)
{
    internal static CriuDumpResult Read(CriuProcessOptions options) =>
        new(CriuStatsImage.TryRead(() => CriuStatsImage.ReadDump(Path.Combine(options.StatsDirectory, "stats-dump"))), options.LogPath);
}

/// <summary>The outcome of a successful restore.</summary>
/// <param name="Pid">The restored tree's root pid, as the caller sees it.</param>
/// <param name="Statistics">CRIU's statistics, when it wrote them and they can be read (a full file system cuts them short).</param>
/// <param name="LogFile">The request's CRIU log.</param>
public sealed record CriuRestoreResult(int Pid, CriuRestoreStatistics? Statistics, string LogFile);

/// <summary>Reads CRIU's statistics images.</summary>
public static class CriuStatsImage
{
    /// <summary>The image-set magic every CRIU image starts with.</summary>
    public const uint ImageSetMagic = CriuImageReader.ServiceMagic;

    /// <summary>The magic of a stats image.</summary>
    public const uint StatsMagic = 0x57093306;

    private const string Kind = "stats";

    /// <summary>Reads a <c>stats-dump</c> file; null when it does not exist.</summary>
    /// <exception cref="InvalidDataException">The file is not a stats image.</exception>
    public static CriuDumpStatistics? ReadDump(string path) =>
        Read(path)?.Dump is { } d ? CriuDumpStatistics.From(d) : null;

    /// <summary>Reads a <c>stats-restore</c> file; null when it does not exist.</summary>
    /// <exception cref="InvalidDataException">The file is not a stats image.</exception>
    public static CriuRestoreStatistics? ReadRestore(string path) =>
        Read(path)?.Restore is { } r ? CriuRestoreStatistics.From(r) : null;

    /// <summary>
    /// The statistics of a request CRIU said succeeded, or null when they are missing or unreadable: CRIU writes them
    /// last and ignores a failed write (on a full store the file is left empty), and the request's outcome is CRIU's answer.
    /// </summary>
    internal static T? TryRead<T>(Func<T?> read)
        where T : class
    {
        try
        {
            return read();
        }
        catch (Exception e) when (e is InvalidDataException or IOException)
        {
            return null;
        }
    }

    internal static stats_entry? Read(string path)
    {
        if (!File.Exists(path))
        {
            return null;
        }

        using var image = CriuImageReader.Open(path, Kind, StatsMagic);
        return image.ReadRequired(stats_entry.Parser);
    }
}
