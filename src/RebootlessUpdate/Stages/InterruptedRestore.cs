using System.Globalization;
using Mono.Unix.Native;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Images;
using RebootlessUpdate.Images.Interop;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.Stages;

/// <summary>
/// Settles a target whose restore was interrupted (the run that asked CRIU died, or the request failed):
/// waits until no CRIU works on its images any more, then tells whether the tree CRIU restored runs.
/// </summary>
/// <remarks>
/// Why this is enough for "exactly once": the restore always holds the tree at CRIU's post-restore point
/// and answers only after the restored root's pid and start time are durable in the journal. When the
/// notification fails (our side died, or vetoed), CRIU kills what it restored. So once no CRIU holds the
/// images folder any more, the tree runs only if it passed post-restore, and then the journal names it.
/// The tool killed at random instants of a restore, then resumed, tests exactly this.
/// </remarks>
internal static class InterruptedRestore
{
    /// <summary>The outcome of an interrupted restore.</summary>
    internal enum Outcome
    {
        /// <summary>The restored tree runs (it passed post-restore): adopt it, restore nothing.</summary>
        Running,

        /// <summary>Nothing of it runs: it may be restored (once).</summary>
        NotRunning,

        /// <summary>A CRIU process still works on its images after the wait: neither adopt nor restore.</summary>
        StillRestoring,

        /// <summary>
        /// Nothing of it runs, but CRIU resumed the tree the journal names (its restore log says so): it ran after its
        /// checkpoint and has exited since, so it is never restored again.
        /// </summary>
        RanAndExited,
    }

    /// <summary>The restore log's name in the target's work folder (one per attempt: removed before each request).</summary>
    internal const string LogFile = "restore.log";

    /// <summary>What CRIU logs once it has let the restored tasks go (criu 4.x, after pre-resume).</summary>
    private const string ResumedLine = "Restore finished successfully.";

    /// <summary>How much of the log's end is read: the line is among the last few a restore writes.</summary>
    private const int LogTailBytes = 64 * 1024;

    /// <summary>
    /// Waits (bounded) until no process but a lazy-pages daemon holds <paramref name="imagesDirectory"/> (or the restore
    /// view in <paramref name="workDirectory"/>) open, then judges;
    /// with <paramref name="workDirectory"/>, a recorded root that is gone is told apart by the restore log there:
    /// resumed by CRIU (it ran and exited) or never let go (CRIU killed it at post-restore).
    /// </summary>
    internal static async Task<(Outcome Outcome, IReadOnlyList<int> Holders)> SettleAsync(TargetRun t, string imagesDirectory, TimeSpan wait,
        TimeProvider time, IProcessTable processes, CancellationToken cancellationToken, string? workDirectory = null)
    {
        var start = time.GetTimestamp();
        // A lazy restore of a dump on a pre-dump reads a restore view in the work folder instead (see CriuRestoreView).
        var view = workDirectory is null ? null : Path.Combine(workDirectory, TargetRestore.RestoreViewFolder);
        IReadOnlyList<int> holders;
        while ((holders = view is null ? processes.HoldersOf(imagesDirectory) : [.. processes.HoldersOf(imagesDirectory).Union(processes.HoldersOf(view))]).Count > 0
            || (t.RestoredRoot is { } traced && processes.IsTraced(traced)))
        {
            if (time.GetElapsedTime(start) >= wait)
            {
                return (Outcome.StillRestoring, holders);
            }

            await Task.Delay(100, cancellationToken).ConfigureAwait(false); // a scan reads every descriptor on the host
        }

        if (PodmanHandover.IsPodman(t))
        {
            return (PodmanHandover.Judge(t, processes), []);
        }

        return (t.RestoredRoot switch
        {
            { } root when processes.IsAlive(root) => Outcome.Running,
            not null when workDirectory is not null && CriuResumedTree(workDirectory) => Outcome.RanAndExited,
            _ => Outcome.NotRunning,
        }, []);
    }

    /// <summary>
    /// Makes the (empty) restore log while the store has room, at the dump: every later attempt reuses its inode, so
    /// CRIU can open its log on a store whose inodes ran out (it refuses a restore it cannot log).
    /// </summary>
    internal static void KeepLogInode(string workDirectory)
    {
        var path = Path.Combine(workDirectory, LogFile);
        if (Syscall.lstat(path, out _) != 0)
        {
            StoreFiles.WriteNew(path, []);
        }
    }

    /// <summary>
    /// Empties the restore log for a new attempt (a later run reads it to tell "CRIU resumed the tree"), keeping its inode;
    /// anything but a log of ours with one name (a link, a FIFO, a hard link to another file) is removed, never written through.
    /// </summary>
    internal static void ClearLog(string workDirectory)
    {
        var path = Path.Combine(workDirectory, LogFile);
        try
        {
            using var handle = StoreFiles.OpenOwnSingle(path, Libc.OWrOnly);
            RandomAccess.SetLength(handle, 0);
            return;
        }
        catch (IOException)
        {
            // Missing, or not ours to write: removed below.
        }

        File.Delete(path);
    }

    /// <summary>
    /// True when the restore log in <paramref name="workDirectory"/> says CRIU let the restored tasks go. A log that is
    /// missing, not ours or not a regular file says nothing (false): the target is then judged as before the log existed.
    /// </summary>
    internal static bool CriuResumedTree(string workDirectory)
    {
        try
        {
            using var handle = StoreFiles.OpenRegular(Path.Combine(workDirectory, LogFile), ownOnly: true);
            using var log = new FileStream(handle, FileAccess.Read);
            log.Seek(Math.Max(0, log.Length - LogTailBytes), SeekOrigin.Begin);
            using var reader = new StreamReader(log);
            return reader.ReadToEnd().Contains(ResumedLine, StringComparison.Ordinal);
        }
        catch (IOException)
        {
            return false;
        }
    }

    /// <summary>
    /// Every process (but this one and lazy-pages daemons, which serve pages of a restored tree) with an open
    /// descriptor on <paramref name="directory"/>: CRIU keeps its images folder open while it restores, and so
    /// do the tasks it forks until they take over. Compared by device and inode, so a store reached through a
    /// symbolic link (whose descriptors show the resolved path) is still recognised.
    /// </summary>
    internal static IReadOnlyList<int> Holders(string directory)
    {
        if (Syscall.stat(directory, out var folder) != 0)
        {
            return []; // gone: nobody restores from it
        }

        var name = Path.GetFileName(Path.TrimEndingDirectorySeparator(directory));
        var daemons = CriuLazyPagesDaemon.FindRunning();
        var found = new List<int>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), NumberStyles.None, CultureInfo.InvariantCulture, out var pid)
                || pid == Environment.ProcessId || daemons.Contains(pid))
            {
                continue;
            }

            IEnumerable<string> fds;
            try
            {
                // Every entry: .NET counts a link to a folder as a folder, and the images folder is one.
                fds = Directory.EnumerateFileSystemEntries(Path.Combine(dir, "fd")).ToList();
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                continue; // gone, or a kernel thread
            }

            foreach (var fd in fds)
            {
                string? target;
                try
                {
                    target = new FileInfo(fd).LinkTarget;
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    continue;
                }

                // The name first (cheap), then the very folder: stat follows the descriptor's link to the object itself.
                if (target is not null && target.EndsWith("/" + name, StringComparison.Ordinal)
                    && Syscall.stat(fd, out var st) == 0 && st.st_dev == folder.st_dev && st.st_ino == folder.st_ino)
                {
                    found.Add(pid);
                    break;
                }
            }
        }

        return found;
    }
}
