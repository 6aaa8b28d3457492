using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.VmTests.Systemd;

/// <summary>
/// The one boot pair the systemd host scenarios share (jobs/systemd-host-update.sh): on a guest whose PID 1 is
/// systemd, enabled services, a tree left in a login session, a runc container and podman containers are set up, all
/// of them are updated by one <c>rebootless update</c> through <c>systemctl kexec</c>, and each scenario is checked on
/// the new kernel. A host's workloads cross one jump together, and under emulation each boot pair costs minutes: the
/// four tests took 5.5 to 9 minutes in one run against about 22 in four (2026-12-04, 2-core machine, quiet and in a CI
/// run). The first test that asks runs it; the others read what it left.
/// </summary>
internal static class SystemdHostBoot
{
    private static readonly Lazy<(string Job, ProcessResult Result)> Shared = new(Run, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>
    /// The folder of scenario <paramref name="name"/> (services, session, runc or podman): its before.txt, after.txt
    /// (with the lines every scenario shares: Kernel, Pid1, Resume*, Failed, System) and its own files, plus copies of
    /// kernel1, kernel2, update.log and journal.log; and the guest job's run.
    /// </summary>
    public static (string Folder, ProcessResult Result) Scenario(string name)
    {
        var (job, result) = Shared.Value;
        return (Path.Combine(job, name), result);
    }

    private static (string Job, ProcessResult Result) Run()
    {
        var testbed = Testbed.Require();
        Testbed.RequireRoot();
        if (!File.Exists("/bin/busybox"))
        {
            Testbed.Missing("/bin/busybox (busybox-static) is not installed (testbed/provision installs it)");
        }

        var scenarios = new[] { "services", "session", "runc", "podman" }
            .ToDictionary(s => $"scenario-{s}.sh", s => Path.Combine(AppContext.BaseDirectory, "jobs", $"scenario-{s}.sh"));
        scenarios["busybox"] = "/bin/busybox";
        return GuestTool.RunOnSystemd(testbed, "systemd-host-update.sh", scenarios);
    }
}
