using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.VmTests.Systemd;

/// <summary>
/// The tool as a guest job runs it: the native executable testbed/publish-tool makes (published once per test run,
/// incremental), from the /repo share. Through the shared .NET runtime the guest JITs it under emulation, 30-35 s
/// before its first line, for every command of a job.
/// </summary>
internal static class GuestTool
{
    private static readonly Lazy<string> Published = new(Publish, LazyThreadSafetyMode.ExecutionAndPublication);

    public static string Path => Published.Value;

    private static string Publish()
    {
        var script = System.IO.Path.Combine(Testbed.RepositoryRoot, "testbed", "publish-tool");
        var result = ProcessRunner.Run(script, [], TimeSpan.FromMinutes(10));
        var folder = result.Output.Trim();
        var tool = System.IO.Path.Combine(folder, "rebootless");
        if (result.ExitCode != 0 || !File.Exists(tool))
        {
            throw new InvalidOperationException($"testbed/publish-tool could not publish the tool the guest runs:\n{result}");
        }

        return "/repo/" + System.IO.Path.GetRelativePath(Testbed.RepositoryRoot, tool);
    }

    /// <summary>
    /// Runs jobs/<paramref name="script"/> as the guest job of a VM booted with systemd as PID 1 on the old kernel (1 GiB
    /// of pmem at 4 GiB, the .NET runtime and this repository shared), with the new kernel's version in /job/new-kernel,
    /// the tool's path in /job/tool, what the jobs share in /job/lib.sh, and <paramref name="files"/> (name → host file) copied into the job folder.
    /// Returns the job folder (a fresh one when the run was retried) and the run.
    /// </summary>
    public static (string Job, ProcessResult Result) RunOnSystemd(Testbed testbed, string script, IReadOnlyDictionary<string, string>? files = null)
    {
        var job = Directory.CreateTempSubdirectory("rebootless-vmjob-").FullName;
        File.Copy(System.IO.Path.Combine(AppContext.BaseDirectory, "jobs", script), System.IO.Path.Combine(job, "run"));
        File.Copy(System.IO.Path.Combine(AppContext.BaseDirectory, "jobs", "lib.sh"), System.IO.Path.Combine(job, "lib.sh"));
        File.WriteAllText(System.IO.Path.Combine(job, "new-kernel"), testbed.NewKernel);
        File.WriteAllText(System.IO.Path.Combine(job, "tool"), Path);
        foreach (var (name, source) in files ?? new Dictionary<string, string>())
        {
            File.Copy(source, System.IO.Path.Combine(job, name));
        }

        return VmRun.RunRetryingEmulationCrash(testbed,
            ["--kernel", "old", "--memmap", "1G!4G", "--mem", "6144", "--append", "rebootless.init=systemd", "--dotnet", "--repo", Testbed.RepositoryRoot,
             "--timeout", "1500", "--job", job],
            TimeSpan.FromMinutes(26));
    }

    /// <summary>What the job left in <paramref name="job"/>/<paramref name="name"/>, trimmed, or "(NAME missing)".</summary>
    public static string Read(string job, string name) =>
        File.Exists(System.IO.Path.Combine(job, name)) ? File.ReadAllText(System.IO.Path.Combine(job, name)).Trim() : $"({name} missing)";

    /// <summary>KEY=VALUE lines (the last of a key wins), as the guest jobs write what they saw.</summary>
    public static Dictionary<string, string> Fields(string text) =>
        text.Split('\n').Select(l => l.Split('=', 2)).Where(p => p.Length == 2).GroupBy(p => p[0]).ToDictionary(g => g.Key, g => g.Last()[1].Trim());

    /// <summary>The KEY=VALUE lines of the job's file <paramref name="name"/> as a lookup that gives "(KEY missing)" for a key it lacks.</summary>
    public static Func<string, string> Lookup(string job, string name)
    {
        var fields = Fields(Read(job, name));
        return key => fields.GetValueOrDefault(key, $"({key} missing)");
    }

    /// <summary>A guest workload's "TOKEN COUNT" line: the token it drew at start (in memory only) and its count.</summary>
    public static (string Token, long Count) Counter(string line) =>
        line.Split(' ', StringSplitOptions.RemoveEmptyEntries) is [var token, var n] && long.TryParse(n, out var count) ? (token, count) : ("(unreadable: " + line + ")", -1);
}
