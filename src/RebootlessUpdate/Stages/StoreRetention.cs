using System.Globalization;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Images;
using RebootlessUpdate.Pipeline;

namespace RebootlessUpdate.Stages;

/// <summary>What <see cref="StoreRetention"/> keeps.</summary>
/// <param name="KeepSealedSets">Sealed sets of finished runs to keep, newest first (null keeps all); unsealed sets older than the newest sealed one go too.</param>
/// <param name="KeepJournals">Journals of finished runs to keep, newest first (null keeps all). A journal whose set is kept stays.</param>
/// <param name="GracePeriod">How old a set or logs folder with no journal must be before it is deleted (a run creates its set just before its journal).</param>
internal sealed record RetentionPolicy(int? KeepSealedSets, int? KeepJournals, TimeSpan GracePeriod);

/// <summary>What one pass of <see cref="StoreRetention"/> deleted.</summary>
/// <param name="Sets">Set ids whose set folder was deleted.</param>
/// <param name="Journals">Set ids whose journal was deleted.</param>
/// <param name="LogFolders">Set ids whose logs folder was deleted.</param>
/// <param name="StoppedDaemons">Pids of orphaned lazy-pages daemons stopped because their logs folder went.</param>
internal sealed record RetentionResult(IReadOnlyList<string> Sets, IReadOnlyList<string> Journals, IReadOnlyList<string> LogFolders, IReadOnlyList<int> StoppedDaemons)
{
    /// <summary>True when nothing was deleted.</summary>
    public bool IsEmpty => Sets.Count == 0 && Journals.Count == 0 && LogFolders.Count == 0 && StoppedDaemons.Count == 0;

    /// <summary>One line for the progress report.</summary>
    public string Describe() => $"retention deleted {Sets.Count} set(s), {Journals.Count} journal(s), {LogFolders.Count} logs folder(s)"
        + (StoppedDaemons.Count == 0 ? string.Empty : $" and stopped {StoppedDaemons.Count} orphaned lazy-pages daemon(s)");
}

/// <summary>
/// Prunes a store's journals, logs folders and sets; call it with the store lock held. A run is a journal
/// (<c>journal/SET.json</c>), its logs folder (<c>journal/SET.logs</c>) and its set (<c>sets/SET</c>). Never deleted:
/// anything of a run that is unfinished (any state short of resumed or rolled back, <c>Failed</c> included, or a
/// journal that cannot be read), or whose lazy-pages daemon still serves (or may serve) a tree. Deleted: sealed sets
/// beyond <see cref="RetentionPolicy.KeepSealedSets"/>; journals of finished runs beyond
/// <see cref="RetentionPolicy.KeepJournals"/> once their set is gone, with their logs folders; sets and logs folders
/// that have no journal once older than <see cref="RetentionPolicy.GracePeriod"/>. Order: set, logs, journal, so an
/// interrupted pass leaves a journal that the next pass finishes, never a set nobody accounts for.
/// </summary>
internal static class StoreRetention
{
    private const string LogsSuffix = ".logs";

    /// <summary>Applies <paramref name="policy"/> to <paramref name="store"/>; <paramref name="daemons"/> defaults to those running on this host.</summary>
    internal static async Task<RetentionResult> ApplyAsync(IImageStore store, RetentionPolicy policy, TimeProvider time,
        IReadOnlyList<RunningLazyPagesDaemon>? daemons = null)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(policy);
        ArgumentNullException.ThrowIfNull(time);
        var root = store.RootDirectory;
        var now = time.GetUtcNow();
        var journals = ReadJournals(root);
        var boot = SystemInfo.BootId();

        // In use: unfinished or unreadable runs, and any run whose daemon serves or may serve a tree.
        var inUse = journals.Where(j => j.Value is not { } r || !IsFinished(r, boot)).Select(j => j.Key).ToHashSet(StringComparer.Ordinal);
        var verdicts = LazyPagesDaemons.Judge(daemons).Where(v => v.StoreRoot == Path.TrimEndingDirectorySeparator(Path.GetFullPath(root))).ToList();
        inUse.UnionWith(verdicts.Where(v => v.Role != LazyPagesDaemonRole.Orphan).Select(v => v.SetId!));

        var sets = store.ListSets();
        var doomedSets = new List<string>();
        if (policy.KeepSealedSets is { } keep)
        {
            var sealedNewestFirst = sets.Where(s => s.IsSealed && !inUse.Contains(s.SetId))
                .OrderByDescending(s => s.CreatedAt).ThenByDescending(s => s.SetId, StringComparer.Ordinal).ToList();
            doomedSets.AddRange(sealedNewestFirst.Skip(keep).Select(s => s.SetId));
            if (sealedNewestFirst.Count > 0)
            {
                doomedSets.AddRange(sets.Where(s => !s.IsSealed && s.CreatedAt < sealedNewestFirst[0].CreatedAt).Select(s => s.SetId));
            }
        }

        doomedSets.AddRange(sets.Where(s => !journals.ContainsKey(s.SetId) && now - s.CreatedAt > policy.GracePeriod).Select(s => s.SetId));
        doomedSets = [.. doomedSets.Distinct(StringComparer.Ordinal).Where(id => !inUse.Contains(id))];

        var remainingSets = sets.Select(s => s.SetId).Except(doomedSets, StringComparer.Ordinal).ToHashSet(StringComparer.Ordinal);
        var doomedJournals = policy.KeepJournals is not { } keepJournals ? [] : journals
            .Where(j => !inUse.Contains(j.Key))
            .Select(j => j.Key)
            .OrderByDescending(id => id, StringComparer.Ordinal) // set ids begin with their UTC creation time
            .Skip(keepJournals)
            .Where(id => !remainingSets.Contains(id)) // a kept set keeps its journal
            .ToList();

        var logsDir = UpdateJournal.DirectoryOf(root);
        var doomedLogs = new List<string>();
        if (Directory.Exists(logsDir))
        {
            foreach (var dir in Directory.EnumerateDirectories(logsDir, "*" + LogsSuffix))
            {
                var id = Path.GetFileName(dir)[..^LogsSuffix.Length];
                var withoutJournal = !journals.ContainsKey(id) && CreatedAt(id) is { } created && now - created > policy.GracePeriod;
                if (!inUse.Contains(id) && (doomedJournals.Contains(id) || withoutJournal))
                {
                    doomedLogs.Add(id);
                }
            }
        }

        foreach (var id in doomedSets)
        {
            store.DeleteSet(id);
        }

        var stopped = new List<int>();
        foreach (var id in doomedLogs)
        {
            var dir = UpdateJournal.LogDirectoryOf(root, id);
            if (new DirectoryInfo(dir).LinkTarget is not null)
            {
                File.Delete(dir); // a symlink in our folder: remove it, never what it points to
                continue;
            }

            foreach (var work in Directory.EnumerateDirectories(dir))
            {
                // Orphans only (the run is finished or unknown and no daemon of it serves): their folder is going.
                if (await LazyPagesDaemons.StopForAsync(work).ConfigureAwait(false) is { } pid)
                {
                    stopped.Add(pid);
                }
            }

            Directory.Delete(dir, recursive: true);
        }

        foreach (var id in doomedJournals)
        {
            foreach (var file in UpdateJournal.CompanionsOf(logsDir, id).Prepend(Path.Combine(logsDir, id + ".json")))
            {
                File.Delete(file);
            }
        }

        if (doomedJournals.Count > 0)
        {
            Images.Interop.Libc.FsyncDirectory(logsDir);
        }

        return new RetentionResult(doomedSets, doomedJournals, doomedLogs, stopped);
    }

    /// <summary>
    /// A run that needs nothing more: resumed, rolled back, or a rehearsal interrupted in an earlier boot (its workloads
    /// ended with that boot). <c>Failed</c> is never finished: it needs an operator and its images.
    /// </summary>
    internal static bool IsFinished(JournalRecord record, string bootId) =>
        record.State is JournalState.Resumed or JournalState.RolledBack or JournalState.Abandoned
        || (record.State != JournalState.Failed && record.Mode == UpdateMode.Rehearse && record.BootId != bootId);

    /// <summary>Every journal file by set id; null for one that cannot be read (it is kept, with its run).</summary>
    private static Dictionary<string, JournalRecord?> ReadJournals(string root) =>
        UpdateJournal.Scan(root).ToDictionary(j => j.SetId, j => j.Record, StringComparer.Ordinal);

    /// <summary>The creation time a set id begins with (<c>yyyyMMddTHHmmssZ-…</c>); null when it is no set id.</summary>
    private static DateTimeOffset? CreatedAt(string setId) =>
        setId.Length > 16 && DateTimeOffset.TryParseExact(setId[..16], "yyyyMMdd'T'HHmmss'Z'", CultureInfo.InvariantCulture,
            DateTimeStyles.AssumeUniversal, out var at) ? at : null;
}
