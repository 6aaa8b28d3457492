using NUnit.Framework;

namespace RebootlessUpdate.TestSupport;

/// <summary>
/// Runs a guest job in the testbed VM (testbed/vm) with the host's .NET
/// runtime and the repository shared, so the job can start the VM agent:
/// <c>dotnet "$AGENT" COMMAND ...</c> (<see cref="AgentPathInGuest"/>).
/// </summary>
public static class VmRun
{
    /// <summary>Path of the VM agent's dll as the guest sees it (the repository is at /repo).</summary>
    public static string AgentPathInGuest
    {
        get
        {
            var local = Path.Combine(Testbed.RepositoryRoot, "tests", "RebootlessUpdate.VmAgent", "bin");
            var dll = Directory.Exists(local)
                ? Directory.EnumerateFiles(local, "RebootlessUpdate.VmAgent.dll", SearchOption.AllDirectories).OrderByDescending(File.GetLastWriteTimeUtc).FirstOrDefault()
                : null;
            if (dll is null)
            {
                throw new InvalidOperationException($"the VM agent is not built (no RebootlessUpdate.VmAgent.dll under {local}); build the solution first");
            }

            return "/repo/" + Path.GetRelativePath(Testbed.RepositoryRoot, dll);
        }
    }

    /// <summary>
    /// True when the runner reported a guest kernel crash of the kinds qemu's multi-threaded TCG causes now and then
    /// (exit 126): a stray "Oops: int3" while the kernel patches its own code, or an "Oops: double fault" in the
    /// allocator (seen once in CI on 2026-12-03, 0.3 s after boot, in kthreadd's kmalloc). A correct kernel takes
    /// neither; a panic or another Oops is never treated as the emulator's.
    /// </summary>
    public static bool IsEmulationCrash(ProcessResult result) =>
        result.ExitCode == 126 && EmulationCrashes.Any(c => result.Output.Contains(c, StringComparison.Ordinal));

    private static readonly string[] EmulationCrashes = ["Oops: int3", "Oops: double fault"];

    /// <summary>
    /// Writes <paramref name="script"/> (sh; <c>$AGENT</c> is set to the agent's
    /// dll) as the job and boots <paramref name="kernel"/> ("old", "new" or a
    /// release). Returns the job folder (files the guest wrote) and the runner's result.
    /// </summary>
    public static (string JobDirectory, ProcessResult Result) Run(Testbed testbed, string script, string kernel = "old",
        string memmap = "64M!512M", int memoryMiB = 2048, int timeoutSeconds = 420, string? extraAppend = null)
    {
        var job = Directory.CreateTempSubdirectory("rebootless-vmjob-").FullName;
        File.WriteAllText(Path.Combine(job, "run"), $"AGENT={AgentPathInGuest}\nexport AGENT\n{script}\n");
        var args = new List<string>
        {
            "--kernel", kernel, "--memmap", memmap, "--mem", memoryMiB.ToString(System.Globalization.CultureInfo.InvariantCulture),
            "--timeout", timeoutSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture),
            "--dotnet", "--repo", Testbed.RepositoryRoot, "--job", job,
        };
        if (extraAppend is not null)
        {
            args.AddRange(["--append", extraAppend]);
        }

        return RunRetryingEmulationCrash(testbed, args, TimeSpan.FromSeconds(timeoutSeconds + 60));
    }

    /// <summary>
    /// Runs testbed/vm with <paramref name="args"/> as given (a <c>--job</c> folder, or <c>-- COMMAND</c>). When qemu's
    /// multi-threaded TCG crashes the guest kernel (<see cref="IsEmulationCrash"/>, seen now and then in this
    /// project's VM runs, also at boot before any job ran), that is the emulator, not the code under test: the run is
    /// repeated once, from a clean copy of the job folder's inputs, and the output says so. Returns the job folder of the run that counts (empty without <c>--job</c>).
    /// </summary>
    public static (string JobDirectory, ProcessResult Result) RunRetryingEmulationCrash(Testbed testbed, List<string> args, TimeSpan timeout)
    {
        var at = args.IndexOf("--job");
        var job = at >= 0 ? args[at + 1] : string.Empty;
        var inputs = at >= 0 ? Directory.GetFiles(job) : [];
        var result = ProcessRunner.Run(testbed.VmRunner, args, timeout);
        if (IsEmulationCrash(result))
        {
            TestContext.Out.WriteLine($"VM run hit an emulation crash (guest kernel Oops: int3 or double fault); retrying once. First result:\n{result}");
            if (at >= 0)
            {
                var retry = Directory.CreateTempSubdirectory("rebootless-vmjob-").FullName;
                foreach (var file in inputs)
                {
                    File.Copy(file, Path.Combine(retry, Path.GetFileName(file)));
                }

                args[at + 1] = retry;
                job = retry;
            }

            result = ProcessRunner.Run(testbed.VmRunner, args, timeout);
        }

        return (job, result);
    }
}
