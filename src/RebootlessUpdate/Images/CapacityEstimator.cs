using System.Globalization;

namespace RebootlessUpdate.Images;

/// <summary>
/// Estimates how much store space checkpointing process trees needs, from
/// <c>/proc/PID/smaps_rollup</c> summed over each tree (children found through
/// <c>/proc/PID/task/*/children</c>).
/// </summary>
/// <remarks>
/// CRIU writes the pages a process owns: anonymous memory (including copied-on-write
/// pages of private file mappings, which the kernel counts as anonymous),
/// swapped-out anonymous pages, and shared memory. Per process this is
/// <c>Anonymous + Swap + Pss_Shmem</c> (proportional, so memory shared inside a
/// tree is counted about once). The safety margin covers CRIU's metadata images
/// and its log and the gap between the estimate and the dump (the workload keeps
/// running): <see cref="ProportionalMargin"/> of the memory, plus
/// <see cref="PerProcessBytes"/> per process, plus <see cref="FixedBytes"/>.
/// </remarks>
public static class CapacityEstimator
{
    /// <summary>Share of the memory added as margin: 10 %.</summary>
    public const double ProportionalMargin = 0.10;

    /// <summary>Per process, for the core, mm, pagemap, fd and other metadata images: 128 KiB.</summary>
    public const long PerProcessBytes = 128 * 1024;

    /// <summary>Once per estimate, for CRIU's log (verbose) and the manifest: 4 MiB.</summary>
    public const long FixedBytes = 4 * 1024 * 1024;

    /// <summary>Estimates the need of the trees rooted at <paramref name="rootPids"/>.</summary>
    /// <returns>The number of processes, their memory, and the need with the margin.</returns>
    /// <exception cref="ImageStoreException">A root pid does not exist or its memory cannot be read (needs root).</exception>
    public static (int Processes, long MemoryBytes, long RequiredBytes) Estimate(IEnumerable<int> rootPids) =>
        Estimate(rootPids, "/proc");

    internal static (int Processes, long MemoryBytes, long RequiredBytes) Estimate(IEnumerable<int> rootPids, string proc)
    {
        ArgumentNullException.ThrowIfNull(rootPids);
        var seen = new HashSet<int>();
        long memory = 0;
        foreach (var root in rootPids)
        {
            if (!Directory.Exists(Path.Combine(proc, root.ToString(CultureInfo.InvariantCulture))))
            {
                throw new ImageStoreException($"cannot estimate the checkpoint size of pid {root}: no such process");
            }

            var queue = new Queue<int>([root]);
            while (queue.TryDequeue(out var pid))
            {
                if (!seen.Add(pid))
                {
                    continue;
                }

                memory += ReadRollup(proc, pid, root);
                foreach (var child in Children(proc, pid))
                {
                    queue.Enqueue(child);
                }
            }
        }

        var required = memory + (long)(memory * ProportionalMargin) + (seen.Count * PerProcessBytes) + FixedBytes;
        return (seen.Count, memory, required);
    }

    /// <summary>The errno of "No such process", which .NET carries as the HResult of the IOException.</summary>
    private const int Esrch = 3;

    /// <summary>Anonymous + Swap + Pss_Shmem of one process, in bytes (0 when it exited meanwhile).</summary>
    internal static long ReadRollup(string proc, int pid, int root)
    {
        string[] lines;
        try
        {
            lines = File.ReadAllLines(Path.Combine(proc, pid.ToString(CultureInfo.InvariantCulture), "smaps_rollup"));
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            return 0; // exited while we walked the tree
        }
        catch (IOException e) when (e.HResult == Esrch || Gone(proc, pid))
        {
            // ESRCH: the process has no memory any more. It exited, is a zombie, or is between releasing its memory
            // and becoming a zombie (the state in stat still says R or D then); a kernel thread never had any.
            return 0;
        }
        catch (Exception e) when (e is UnauthorizedAccessException or IOException)
        {
            throw new ImageStoreException($"cannot read the memory of pid {pid} (tree of {root}): {e.Message}; run as root", e);
        }

        long kib = 0;
        foreach (var line in lines)
        {
            var colon = line.IndexOf(':', StringComparison.Ordinal);
            if (colon <= 0)
            {
                continue;
            }

            var key = line[..colon];
            if (key is "Anonymous" or "Swap" or "Pss_Shmem")
            {
                var value = line[(colon + 1)..].Trim();
                var space = value.IndexOf(' ', StringComparison.Ordinal);
                kib += long.Parse(space > 0 ? value[..space] : value, NumberStyles.None, CultureInfo.InvariantCulture);
            }
        }

        return kib * 1024;
    }

    private static List<int> Children(string proc, int pid)
    {
        var result = new List<int>();
        var tasks = Path.Combine(proc, pid.ToString(CultureInfo.InvariantCulture), "task");
        if (!Directory.Exists(tasks))
        {
            return result;
        }

        try
        {
            foreach (var task in Directory.EnumerateDirectories(tasks))
            {
                try
                {
                    foreach (var s in File.ReadAllText(Path.Combine(task, "children")).Split(' ', StringSplitOptions.RemoveEmptyEntries))
                    {
                        result.Add(int.Parse(s, NumberStyles.None, CultureInfo.InvariantCulture));
                    }
                }
                catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException || (e is IOException && Gone(proc, pid)))
                {
                    // the thread ended meanwhile
                }
            }
        }
        catch (Exception e) when (e is DirectoryNotFoundException || (e is IOException && Gone(proc, pid)))
        {
            // the process ended while we listed its threads
        }

        return result;
    }

    /// <summary>True when <paramref name="pid"/> has exited or is a zombie (short-lived children do this mid-walk).</summary>
    private static bool Gone(string proc, int pid)
    {
        try
        {
            var stat = File.ReadAllText(Path.Combine(proc, pid.ToString(CultureInfo.InvariantCulture), "stat"));
            return stat[(stat.LastIndexOf(')') + 2)..][0] is 'Z' or 'X';
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return true;
        }
    }
}
