using System.Globalization;

namespace RebootlessUpdate.Criu.Interop;

/// <summary>The fields of <c>/proc/PID/stat</c> that targets and process signalling need: the one parser of that file.</summary>
internal sealed record ProcStat(int Pid, char State, int ParentPid, int ProcessGroup, int Session, int TtyNumber, ulong StartTime)
{
    // PF_KTHREAD in field 9 (flags) of /proc/PID/stat (include/linux/sched.h).
    private const uint KernelThreadFlag = 0x00200000;

    /// <summary>Field 9 of <c>/proc/PID/stat</c>: the kernel's PF_* flags.</summary>
    public uint Flags { get; init; }

    /// <summary>True for a kernel thread (kthreadd and its children): it has no user memory to checkpoint.</summary>
    public bool IsKernelThread => (Flags & KernelThreadFlag) != 0;

    /// <summary>
    /// The process (thread group) that <paramref name="tid"/> belongs to: itself for a process, its leader for
    /// another thread (<c>/proc/TID</c> exists for every thread, though <c>ls /proc</c> lists only processes).
    /// Null when there is no such task.
    /// </summary>
    public static int? ThreadGroupOf(int tid, string procRoot = "/proc")
    {
        try
        {
            var line = File.ReadLines(Path.Combine(procRoot, tid.ToString(CultureInfo.InvariantCulture), "status")).FirstOrDefault(l => l.StartsWith("Tgid:", StringComparison.Ordinal));
            return line is not null && int.TryParse(line.AsSpan("Tgid:".Length).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var tgid) ? tgid : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>The command name (field 2, without its parentheses).</summary>
    public string Comm { get; init; } = string.Empty;

    public static ProcStat? Read(int pid) => Read(pid, "/proc");

    /// <summary>Reads <c>PID/stat</c> under <paramref name="procRoot"/> (a test may give a fake /proc); null when there is none.</summary>
    public static ProcStat? Read(int pid, string procRoot)
    {
        string text;
        try
        {
            text = File.ReadAllText(Path.Combine(procRoot, pid.ToString(CultureInfo.InvariantCulture), "stat"));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }

        // comm (field 2) may hold spaces and parentheses: the fields after it start after the last ')'.
        var close = text.LastIndexOf(')');
        if (close < 0)
        {
            return null;
        }

        var f = text[(close + 2)..].Split(' ');
        if (f.Length < 20)
        {
            return null;
        }

        var open = text.IndexOf('(');
        return new ProcStat(pid, f[0][0], Int(f[1]), Int(f[2]), Int(f[3]), Int(f[4]), ulong.Parse(f[19], CultureInfo.InvariantCulture))
        {
            Flags = uint.Parse(f[6], CultureInfo.InvariantCulture),
            Comm = open >= 0 && open < close ? text[(open + 1)..close] : string.Empty,
        };

        static int Int(string s) => int.Parse(s, CultureInfo.InvariantCulture);
    }

    /// <summary>Every process listed under <paramref name="procRoot"/> (threads are not listed, zombies are).</summary>
    public static IEnumerable<ProcStat> All(string procRoot)
    {
        IEnumerable<string> entries;
        try
        {
            entries = Directory.EnumerateDirectories(procRoot).ToList();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            yield break;
        }

        foreach (var entry in entries)
        {
            if (int.TryParse(Path.GetFileName(entry), NumberStyles.None, CultureInfo.InvariantCulture, out var pid) && Read(pid, procRoot) is { } stat)
            {
                yield return stat;
            }
        }
    }

    /// <summary>True when <paramref name="pid"/> is pid 1 of a PID namespace below the caller's (its NSpid line ends in 1).</summary>
    public static bool IsNamespaceInit(int pid)
    {
        try
        {
            var line = File.ReadLines($"/proc/{pid.ToString(CultureInfo.InvariantCulture)}/status").FirstOrDefault(l => l.StartsWith("NSpid:", StringComparison.Ordinal));
            var ids = line?["NSpid:".Length..].Split(['\t', ' '], StringSplitOptions.RemoveEmptyEntries) ?? [];
            return ids.Length > 1 && ids[^1] == "1";
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    /// <summary>The pids of a tree (its root first), from <c>/proc/PID/task/*/children</c>.</summary>
    public static IReadOnlyList<int> Tree(int root)
    {
        var result = new List<int>();
        var queue = new Queue<int>([root]);
        while (queue.Count > 0 && result.Count < 100_000)
        {
            var pid = queue.Dequeue();
            result.Add(pid);
            foreach (var child in Children(pid))
            {
                queue.Enqueue(child);
            }
        }

        return result;
    }

    public static IEnumerable<int> Children(int pid)
    {
        string[] tasks;
        try
        {
            tasks = Directory.GetDirectories($"/proc/{pid.ToString(CultureInfo.InvariantCulture)}/task");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            yield break;
        }

        foreach (var task in tasks)
        {
            string text;
            try
            {
                text = File.ReadAllText(Path.Combine(task, "children"));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                continue;
            }

            foreach (var c in text.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            {
                yield return int.Parse(c, CultureInfo.InvariantCulture);
            }
        }
    }
}
