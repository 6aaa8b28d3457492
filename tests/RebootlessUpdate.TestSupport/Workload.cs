using System.Diagnostics;
using System.Globalization;
using Mono.Unix.Native;

namespace RebootlessUpdate.TestSupport;

/// <summary>
/// A small real workload for checkpoint tests: a shell loop (with a child
/// subshell) in its own PID namespace and session, writing an increasing
/// counter to a file. Started with <c>unshare --pid --fork setsid</c>, the way
/// containers isolate PIDs, so it can be restored with its PIDs intact.
/// Disposing kills, by pid, what this workload started and every restored copy of it (its command line names its folder).
/// </summary>
public sealed class Workload : IDisposable
{
    private readonly Process _unshare;

    private Workload(Process unshare, int rootPid, string directory)
    {
        _unshare = unshare;
        RootPid = rootPid;
        Directory = directory;
    }

    /// <summary>Host pid of the tree's root (PID 1 of its namespace). Changes after a restore.</summary>
    public int RootPid { get; set; }

    /// <summary>Folder holding the counter file.</summary>
    public string Directory { get; }

    /// <summary>The counter file the loop rewrites every 50 ms.</summary>
    public string CounterFile => Path.Combine(Directory, "counter");

    /// <summary>Starts the shell workload and waits until it has counted at least once.</summary>
    public static Workload Start(string directory)
    {
        System.IO.Directory.CreateDirectory(directory);
        var counter = Path.Combine(directory, "counter");
        var script = $"exec </dev/null >/dev/null 2>&1; (while :; do sleep 1; done) & i=0; while :; do i=$((i+1)); echo $i > '{counter}.tmp'; mv '{counter}.tmp' '{counter}'; sleep 0.05; done";
        return StartInNamespace(directory, ["sh", "-c", script]);
    }

    /// <summary>
    /// Starts the C workload (tests/workloads/rebootless-workload.c): patterned
    /// memory, a file at an offset, a unix socket pair, a pipe to a child, a
    /// second thread, and a counter. Compiled on first use.
    /// </summary>
    public static Workload StartProgram(string directory, int memoryMiB)
    {
        System.IO.Directory.CreateDirectory(directory);
        var binary = WorkloadProgram.Path;
        var script = $"exec </dev/null >/dev/null 2>&1; exec '{binary}' '{directory}' {memoryMiB.ToString(CultureInfo.InvariantCulture)}";
        var workload = StartInNamespace(directory, ["sh", "-c", script]);
        WaitFor(() => File.Exists(Path.Combine(directory, "ready")) ? 1 : 0, "the workload's memory to be filled", 60);
        return workload;
    }

    /// <summary>The memory checksum the C workload computed at start.</summary>
    public string InitialChecksum => File.ReadAllText(Path.Combine(Directory, "ready")).Trim();

    /// <summary>Asks the C workload to verify its state; returns its verdict line ("ok ..." or "bad ...").</summary>
    public string Check(double seconds = 30)
    {
        var result = Path.Combine(Directory, "check-result");
        File.Delete(result);
        File.WriteAllText(Path.Combine(Directory, "check-request"), string.Empty);
        WaitFor(() => File.Exists(result) ? 1 : 0, "the workload's self-check", seconds);
        return File.ReadAllText(result).Trim();
    }

    /// <summary>Starts any command as a workload in its own PID namespace and session; it must write DIR/counter.</summary>
    public static Workload StartCommand(string directory, string[] command)
    {
        var workload = StartInNamespace(directory, command);
        return workload;
    }

    private static Workload StartInNamespace(string directory, string[] command)
    {
        var psi = new ProcessStartInfo("unshare") { UseShellExecute = false };
        foreach (var a in new[] { "--pid", "--fork", "setsid" }.Concat(command))
        {
            psi.ArgumentList.Add(a);
        }

        var unshare = Process.Start(psi) ?? throw new InvalidOperationException("could not start unshare");
        var root = WaitFor(() => ChildrenOf(unshare.Id) is [var first, ..] ? first : 0, "the namespace's init");
        var workload = new Workload(unshare, root, directory);
        WaitFor(() => workload.ReadCounter() > 0 ? 1 : 0, "the first count");
        return workload;
    }

    /// <summary>The current count, or 0 before the first.</summary>
    public long ReadCounter()
    {
        try
        {
            return long.TryParse(File.ReadAllText(CounterFile).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var n) ? n : 0;
        }
        catch (FileNotFoundException)
        {
            return 0;
        }
    }

    /// <summary>True while the root pid exists and is not a zombie.</summary>
    public bool IsAlive => IsRunning(RootPid);

    /// <summary>True while <paramref name="pid"/> exists and is not a zombie.</summary>
    public static bool IsRunning(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            var state = stat[(stat.LastIndexOf(')') + 2)..][0];
            return state is not ('Z' or 'X');
        }
        catch (IOException)
        {
            return false;
        }
    }

    /// <summary>The pids of <paramref name="pid"/>'s children; none once it has exited (a short-lived child may go while it is read).</summary>
    public static IReadOnlyList<int> ChildrenOf(int pid)
    {
        var list = new List<int>();
        try
        {
            foreach (var task in System.IO.Directory.EnumerateDirectories($"/proc/{pid}/task"))
            {
                var text = File.ReadAllText(Path.Combine(task, "children"));
                list.AddRange(text.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(s => int.Parse(s, CultureInfo.InvariantCulture)));
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // It (or one of its threads) exited while its tasks were read: what was read stands.
        }

        return list;
    }

    /// <summary>Namespace pids of the long-lived subshells under the root (comm "sh").</summary>
    public IReadOnlyList<int> SubshellNamespacePids() =>
        [.. ChildrenOf(RootPid).Where(p => ReadComm(p) == "sh").Select(NamespacePid).Order()];

    private static string? ReadComm(int pid)
    {
        try
        {
            return File.ReadAllText($"/proc/{pid}/comm").Trim();
        }
        catch (IOException)
        {
            return null;
        }
    }

    /// <summary>The pid of <paramref name="pid"/> inside its own namespace (last NSpid entry).</summary>
    public static int NamespacePid(int pid)
    {
        var line = File.ReadLines($"/proc/{pid}/status").First(l => l.StartsWith("NSpid:", StringComparison.Ordinal));
        return int.Parse(line.Split('\t', ' ', StringSplitOptions.RemoveEmptyEntries).Last(), CultureInfo.InvariantCulture);
    }

    /// <summary>
    /// Running copies of a workload: roots of a PID namespace (pid 1 inside) whose command line names its folder
    /// (a restored copy keeps the command line). Exactly one must run after any recovery.
    /// </summary>
    public static IReadOnlyList<int> CopiesOf(string directory) =>
        [.. System.IO.Directory.GetDirectories("/proc").Select(d => int.TryParse(Path.GetFileName(d), out var p) ? p : 0)
            .Where(p => p > 0 && IsRunning(p) && IsCopyOf(p, directory) && NamespacePidOrZero(p) == 1)];

    /// <summary>True when <paramref name="pid"/>'s command line names the workload folder <paramref name="directory"/>.</summary>
    public static bool IsCopyOf(int pid, string directory)
    {
        try
        {
            return File.ReadAllText($"/proc/{pid}/cmdline").Contains(directory, StringComparison.Ordinal);
        }
        catch (IOException)
        {
            return false;
        }
    }

    private static int NamespacePidOrZero(int pid)
    {
        try
        {
            return NamespacePid(pid);
        }
        catch (Exception e) when (e is IOException or InvalidOperationException)
        {
            return 0;
        }
    }

    /// <summary>Moves the whole tree into a cgroup v1 folder (the root first, so new children follow it); fails the test if it cannot.</summary>
    public void MoveInto(string cgroup)
    {
        var procs = Path.Combine(cgroup, "cgroup.procs");
        for (var round = 0; round < 20; round++)
        {
            var inside = File.ReadAllLines(procs).Where(l => l.Length > 0).Select(l => int.Parse(l, CultureInfo.InvariantCulture)).ToHashSet();
            var outside = Tree(RootPid).Where(p => !inside.Contains(p)).ToList();
            if (outside.Count == 0)
            {
                return;
            }

            foreach (var p in outside)
            {
                try
                {
                    File.WriteAllText(procs, p.ToString(CultureInfo.InvariantCulture));
                }
                catch (IOException)
                {
                    // It exited meanwhile (a short sleep of the loop).
                }
            }

            Thread.Sleep(100);
        }

        NUnit.Framework.Assert.Fail($"could not move the workload's tree into {cgroup}");
    }

    private static List<int> Tree(int root)
    {
        var result = new List<int> { root };
        for (var i = 0; i < result.Count; i++)
        {
            result.AddRange(ChildrenOf(result[i]));
        }

        return [.. result.Where(IsRunning)];
    }

    /// <summary>A field of /proc/PID/status (e.g. "State", "TracerPid"), or null when the process is gone.</summary>
    public static string? StatusField(int pid, string name)
    {
        try
        {
            var line = File.ReadLines($"/proc/{pid}/status").FirstOrDefault(l => l.StartsWith(name + ":", StringComparison.Ordinal));
            return line?[(name.Length + 1)..].Trim();
        }
        catch (IOException)
        {
            return null;
        }
    }

    /// <summary>The pid tracing <paramref name="pid"/> (e.g. criu while it holds the tree), 0 when none.</summary>
    public static int TracerOf(int pid) =>
        int.TryParse(StatusField(pid, "TracerPid"), NumberStyles.None, CultureInfo.InvariantCulture, out var tracer) ? tracer : 0;

    /// <summary>
    /// True when every process of the tree under <paramref name="root"/> is untraced and not stopped
    /// (State neither t nor T): what a workload looks like once nothing holds it any more.
    /// </summary>
    public static bool IsFree(int root) =>
        new[] { root }.Concat(ChildrenOf(root)).All(p => TracerOf(p) == 0 && StatusField(p, "State") is { } state && state[0] is not ('t' or 'T'));

    /// <summary>Polls until <paramref name="probe"/> returns non-zero (10 s at most).</summary>
    public static int WaitFor(Func<int> probe, string what, double seconds = 10)
    {
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed < TimeSpan.FromSeconds(seconds))
        {
            var v = probe();
            if (v != 0)
            {
                return v;
            }

            Thread.Sleep(20);
        }

        throw new TimeoutException($"timed out waiting for {what}");
    }

    /// <summary>
    /// Kills the tree's root and every other running copy of this workload (a restore the test did not expect leaves
    /// one; each is the init of its own PID namespace, so its whole tree ends), then the unshare helper.
    /// </summary>
    public void Dispose()
    {
        foreach (var pid in CopiesOf(Directory).Append(RootPid).Distinct().Where(IsRunning))
        {
            Syscall.kill(pid, Signum.SIGKILL);
        }

        if (!_unshare.HasExited)
        {
            _unshare.Kill();
        }

        _unshare.WaitForExit(5000);
        _unshare.Dispose();
    }
}
