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

        var result = ProcessRunner.Run(testbed.VmRunner, args, TimeSpan.FromSeconds(timeoutSeconds + 60));
        return (job, result);
    }
}
