using System.Diagnostics;
using System.Globalization;

namespace RebootlessUpdate.VmAgent.Images;

/// <summary>
/// The counting shell tree of TestSupport's Workload, for the guest: started
/// with <c>unshare --pid --fork setsid</c> so it can be restored with its PIDs,
/// cwd <c>/</c> and no open files, counting into a file under /job (which
/// survives kexec: it is the host's folder).
/// </summary>
internal static class GuestWorkload
{
    public static int Start(string counterFile)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(counterFile)!);
        var script = $"exec </dev/null >/dev/null 2>&1; (while :; do sleep 1; done) & i=0; while :; do i=$((i+1)); echo $i > '{counterFile}.tmp'; mv '{counterFile}.tmp' '{counterFile}'; sleep 0.05; done";
        var psi = new ProcessStartInfo("unshare") { UseShellExecute = false, WorkingDirectory = "/" };
        foreach (var a in new[] { "--pid", "--fork", "setsid", "sh", "-c", script })
        {
            psi.ArgumentList.Add(a);
        }

        var unshare = Process.Start(psi) ?? throw new InvalidOperationException("could not start unshare");
        var root = WaitFor(() => Children(unshare.Id).FirstOrDefault(), "the namespace's init", 30);
        WaitFor(() => ReadCounter(counterFile) > 0 ? 1 : 0, "the first count", 30);
        return root;
    }

    public static long ReadCounter(string counterFile)
    {
        try
        {
            return long.TryParse(File.ReadAllText(counterFile).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var n) ? n : 0;
        }
        catch (FileNotFoundException)
        {
            return 0;
        }
    }

    public static bool IsRunning(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            return stat[(stat.LastIndexOf(')') + 2)..][0] is not ('Z' or 'X');
        }
        catch (IOException)
        {
            return false;
        }
    }

    public static int WaitFor(Func<int> probe, string what, double seconds)
    {
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed < TimeSpan.FromSeconds(seconds))
        {
            if (probe() is var v and not 0)
            {
                return v;
            }

            Thread.Sleep(50);
        }

        throw new TimeoutException($"timed out after {seconds} s waiting for {what}");
    }

    internal static List<int> Children(int pid)
    {
        var list = new List<int>();
        foreach (var task in Directory.EnumerateDirectories($"/proc/{pid}/task"))
        {
            var file = Path.Combine(task, "children");
            if (File.Exists(file))
            {
                list.AddRange(File.ReadAllText(file).Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(s => int.Parse(s, CultureInfo.InvariantCulture)));
            }
        }

        return list;
    }
}
