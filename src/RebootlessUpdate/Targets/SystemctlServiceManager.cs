using System.Globalization;
using System.Text;
using RebootlessUpdate.Images;
using RebootlessUpdate.Images.Interop;
using RebootlessUpdate.Processes;

namespace RebootlessUpdate.Targets;

/// <summary>
/// <see cref="IServiceManager"/> through <c>systemctl</c>: runtime drop-ins (in <c>/run/systemd/system/UNIT.d</c>, or
/// <c>$XDG_RUNTIME_DIR/systemd/user/UNIT.d</c> for a user manager) and <c>daemon-reload</c>. Runtime drop-ins live
/// in memory: a jump or a reboot ends them with the manager that read them.
/// </summary>
internal sealed class SystemctlServiceManager(string systemctl, TimeSpan timeout, string unitConfiguration = "/etc/systemd/system") : IServiceManager
{
    /// <summary>The shipped unit that runs <c>rebootless resume</c> after the jump.</summary>
    internal const string ResumeUnit = "rebootless-resume.service";
    private const string ResumeOrderFile = "zz-rebootless-checkpointed.conf";
    // systemd reads a unit's drop-ins in the order of their file names, over every folder, and the last setting wins:
    // these sort after the usual names (NN-*.conf, override.conf); what a drop-in sorting later changes is caught by
    // reading the settings back.
    private const string ReleaseFile = "zz-rebootless-1-release.conf";
    private const string AdoptFile = "zz-rebootless-2-adopt.conf";
    private const string PidFile = "rebootless-main.pid";
    private static readonly string[] NoOps = ["/usr/bin/true", "/bin/true"];

    /// <summary>
    /// How long a systemctl call may take once a tree is restored (handing it back, giving the unit its configuration
    /// back): systemctl's own bound for a reload is 3 minutes (twice systemd's default timeout), and a query or a start
    /// queues behind reloads. A reload took 6-25 s each in the testbed VM while a 256 MiB restore ran; a bound of 30 s
    /// failed the adoption of a restored tree. Only <see cref="Release"/>'s reload, before the dump while other targets
    /// are frozen, keeps the manager's own bound.
    /// </summary>
    internal static readonly TimeSpan SlowCallLimit = TimeSpan.FromSeconds(200);

    /// <summary>The host's systemd, through <c>systemctl</c> on PATH.</summary>
    public static SystemctlServiceManager Host { get; } = new("systemctl", TimeSpan.FromSeconds(30));

    public void Release(ServiceUnit unit)
    {
        WriteDropIn(unit, ReleaseFile,
            "# rebootless checkpoints this service: CRIU ends its processes and they are restored later.\n" +
            "# Removed when the restored tree is handed back (or the processes resume in place).\n" +
            "[Unit]\nFailureAction=none\n[Service]\nRestart=no\nExecStop=\nExecStopPost=\nWatchdogSec=0\n");
        // Before the dump, with the targets dumped before it frozen: a slow systemd fails the update (rolled back)
        // rather than holding them.
        Run(unit, timeout, ["daemon-reload"]);
        RequireSettings(unit, "release", new() { ["Restart"] = "no", ["ExecStop"] = "", ["ExecStopPost"] = "", ["FailureAction"] = "none" });
    }

    public bool StartQueued(ServiceUnit unit) =>
        Jobs(unit).Length > 0;

    /// <summary>The unit's queued jobs, one line each: JOB UNIT TYPE STATE (empty when none).</summary>
    private string Jobs(ServiceUnit unit) => Systemctl(unit, "list-jobs", "--no-legend", "--plain", "--", Name(unit)).Stdout.Trim();

    public ServiceStatus Status(ServiceUnit unit)
    {
        var run = Systemctl(unit, "show", "--no-pager", "-p", "ActiveState", "-p", "SubState", "-p", "MainPID", "--", Name(unit));
        var p = SystemdServiceTarget.ParseProperties(run.Stdout);
        return new ServiceStatus(p.GetValueOrDefault("ActiveState") ?? "", p.GetValueOrDefault("SubState") ?? "",
            int.TryParse(p.GetValueOrDefault("MainPID"), NumberStyles.None, CultureInfo.InvariantCulture, out var pid) ? pid : 0);
    }

    public bool Adopt(ServiceUnit unit, int mainPid, bool mayLeaveToQueuedStart)
    {
        // One "start waiting" job: the boot's start of the unit, held back by its order after the resume.
        string jobs;
        try
        {
            jobs = Jobs(unit);
        }
        catch (ServiceManagerException e) when (mayLeaveToQueuedStart)
        {
            // Not knowing whether the boot's start is queued, the caller must assume it is.
            throw new ServiceManagerException($"systemd did not say whether a start of {Name(unit)} is queued ({e.Message})") { StartQueued = true };
        }

        var queued = jobs.Length > 0;
        if (queued && !(mayLeaveToQueuedStart && jobs.Split('\n', StringSplitOptions.RemoveEmptyEntries) is [var job]
            && job.Split(' ', StringSplitOptions.RemoveEmptyEntries) is [_, _, "start", "waiting"]))
        {
            // A queued start would take the adoption's start in (systemd merges the two) and run the unit's own
            // command after it: a second copy. Cancelling it would fail the jobs of every unit that requires this one.
            throw new ServiceManagerException($"a job for {Name(unit)} is already queued ({jobs.Split('\n')[0].Trim()}); "
                + "systemd would start the unit's own command after it") { StartQueued = true };
        }

        // Whatever fails from here, the drop-ins go again; while a start is queued, the failure is reported as such:
        // that start runs the unit's own command once the boot goes on, so the caller must end the tree.
        Exception? failure = null;
        try
        {
            if (AdoptThroughDropIn(unit, mainPid, queued))
            {
                return true;
            }
        }
        catch (Exception e) when (e is ServiceManagerException or IOException or UnauthorizedAccessException)
        {
            failure = e;
        }

        try
        {
            Return(unit);
        }
        catch (Exception e) when (e is ServiceManagerException or IOException or UnauthorizedAccessException)
        {
            failure = failure is null ? e : new ServiceManagerException($"{failure.Message}; and rebootless's drop-ins of {Name(unit)} are still loaded ({e.Message})");
        }

        if (failure is not null)
        {
            throw new ServiceManagerException(failure.Message) { StartQueued = queued };
        }

        var status = Status(unit);
        if (status.MainPid != mainPid || status.ActiveState != "active")
        {
            throw new ServiceManagerException($"systemd started {Name(unit)} but shows it {status.ActiveState} ({status.SubState}) with main pid {status.MainPid}, not {mainPid}");
        }

        return false;
    }

    /// <summary>
    /// The adoption drop-in and its pid file; then, when <paramref name="queued"/>, nothing more (returns true: the boot's
    /// own start job runs the no-op and reads the pid file once the boot goes on), else the unit is started (false).
    /// </summary>
    private bool AdoptThroughDropIn(ServiceUnit unit, int mainPid, bool queued)
    {
        var noOp = NoOps.FirstOrDefault(File.Exists) ?? throw new ServiceManagerException("no true(1) to start the unit with (/usr/bin/true, /bin/true)");
        var pidFile = Path.Combine(DropInFolder(unit), PidFile);

        // systemd runs the no-op, reads the pid file and takes that pid, already in the unit's cgroup, as the main
        // process; nothing of the unit's own start runs. "%" is the one character unit files expand. The pid file sits
        // in the manager's own runtime folder, which a user's manager can read.
        WriteDropIn(unit, AdoptFile,
            "# rebootless hands the restored processes back to this unit; removed once the unit runs them.\n" +
            $"[Service]\nType=forking\nPIDFile={pidFile.Replace("%", "%%", StringComparison.Ordinal)}\n" +
            $"ExecCondition=\nExecStartPre=\nExecStart=\nExecStart={noOp}\nExecStartPost=\nGuessMainPID=no\n");
        StoreFiles.WriteAtomically(pidFile, Encoding.ASCII.GetBytes(mainPid.ToString(CultureInfo.InvariantCulture) + "\n"), mode: Libc.Mode0644);
        Systemctl(unit, "daemon-reload");
        RequireSettings(unit, "adoption", new()
        {
            ["Type"] = "forking", ["PIDFile"] = pidFile, ["ExecCondition"] = "", ["ExecStartPre"] = "", ["ExecStartPost"] = "",
        });
        var start = Show(unit, "ExecStart")["ExecStart"];
        if (start.Split("path=").Length != 2 || !start.Contains($"path={noOp} ", StringComparison.Ordinal))
        {
            throw new ServiceManagerException($"a drop-in read after rebootless's sets ExecStart={start}: the unit's own command would start; not started");
        }

        if (queued)
        {
            return true;
        }

        try
        {
            _ = Systemctl(unit, "reset-failed", "--", Name(unit));
        }
        catch (ServiceManagerException)
        {
            // Not failed, or not loaded yet (after a jump): start says what matters.
        }

        // Without its dependencies: they ran with the tree before, and an order after a unit whose job is running
        // (the resume unit itself, at boot) would make this start wait for its own caller.
        Systemctl(unit, "start", "--job-mode=ignore-dependencies", "--", Name(unit));
        return false;
    }

    public void OrderResumeBefore(IReadOnlyCollection<ServiceUnit> units)
    {
        var names = units.Where(u => !u.UserManager).Select(Name).Distinct(StringComparer.Ordinal).ToList();
        if (names.Count == 0)
        {
            return;
        }

        var folder = Path.Combine(unitConfiguration, ResumeUnit + ".d");
        try
        {
            // Read by the next boot's systemd as it starts: no reload here.
            WriteUnitFile(folder, ResumeOrderFile,
                "# rebootless update checkpointed these services before its jump: on the next boot they start only after the\n" +
                "# resume, which hands each its restored processes (or, when it cannot, lets the unit start afresh).\n" +
                "# rebootless resume removes this file.\n" +
                $"[Unit]\nBefore={string.Join(' ', names)}\n");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ServiceManagerException($"cannot write {Path.Combine(folder, ResumeOrderFile)}: {e.Message}");
        }
    }

    public void ClearResumeOrder()
    {
        var folder = Path.Combine(unitConfiguration, ResumeUnit + ".d");
        if (!Directory.Exists(folder))
        {
            return;
        }

        File.Delete(Path.Combine(folder, ResumeOrderFile));
        if (!Directory.EnumerateFileSystemEntries(folder).Any())
        {
            Directory.Delete(folder);
        }
    }

    public void Return(ServiceUnit unit)
    {
        var folder = DropInFolder(unit);
        if (!Directory.Exists(folder))
        {
            return;
        }

        File.Delete(Path.Combine(folder, PidFile));
        var removed = false;
        foreach (var name in new[] { ReleaseFile, AdoptFile })
        {
            var path = Path.Combine(folder, name);
            if (File.Exists(path))
            {
                File.Delete(path);
                removed = true;
            }
        }

        if (!removed)
        {
            return;
        }

        try
        {
            Directory.Delete(folder); // only when empty: others' drop-ins stay
        }
        catch (IOException)
        {
        }

        Systemctl(unit, "daemon-reload");
    }

    /// <summary>The unit's runtime drop-in folder.</summary>
    internal static string DropInFolder(ServiceUnit unit)
    {
        var root = unit.UserManager
            ? Path.Combine(Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR") is { Length: > 0 } run ? run
                : throw new ServiceManagerException("XDG_RUNTIME_DIR is not set: the user's service manager cannot be found"), "systemd", "user")
            : "/run/systemd/system";
        return Path.Combine(root, Name(unit) + ".d");
    }

    /// <summary>The unit's current <paramref name="properties"/>, as systemctl show gives them (a missing one is empty).</summary>
    private Dictionary<string, string> Show(ServiceUnit unit, params string[] properties)
    {
        var args = new List<string> { "show", "--no-pager" };
        foreach (var p in properties)
        {
            args.AddRange(["-p", p]);
        }

        args.AddRange(["--", Name(unit)]);
        var shown = SystemdServiceTarget.ParseProperties(Systemctl(unit, [.. args]).Stdout);
        return properties.ToDictionary(p => p, p => shown.GetValueOrDefault(p) ?? "", StringComparer.Ordinal);
    }

    /// <summary>
    /// Reads back what a drop-in set: a drop-in that sorts later (or a unit systemd did not reload) can undo it. When
    /// anything differs, the drop-ins are removed again and nothing is done.
    /// </summary>
    private void RequireSettings(ServiceUnit unit, string what, Dictionary<string, string> expected)
    {
        var shown = Show(unit, [.. expected.Keys]);
        var wrong = expected.Where(e => shown[e.Key] != e.Value).Select(e => $"{e.Key}={shown[e.Key]}").ToList();
        if (wrong.Count == 0)
        {
            return;
        }

        Return(unit);
        throw new ServiceManagerException($"rebootless's {what} drop-in did not take: {Name(unit)} still has {string.Join(", ", wrong)} "
            + $"(a drop-in read after it? {Command(unit)} cat {Name(unit)} shows them in order)");
    }

    /// <summary>How an operator reaches the unit's manager: <c>systemctl</c> or <c>systemctl --user</c>.</summary>
    internal static string Command(ServiceUnit unit) => unit.UserManager ? "systemctl --user" : "systemctl";

    private static string Name(ServiceUnit unit)
    {
        try
        {
            return SystemdServiceTarget.NormalizeUnitName(unit.Name);
        }
        catch (ArgumentException e)
        {
            throw new ServiceManagerException(e.Message);
        }
    }

    private static void WriteDropIn(ServiceUnit unit, string file, string content) => WriteUnitFile(DropInFolder(unit), file, content);

    /// <summary>A unit configuration file as systemd expects it: in a 0755 folder, 0644, written whole.</summary>
    private static void WriteUnitFile(string folder, string file, string content)
    {
        Directory.CreateDirectory(folder, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute |
            UnixFileMode.GroupRead | UnixFileMode.GroupExecute | UnixFileMode.OtherRead | UnixFileMode.OtherExecute);
        StoreFiles.WriteAtomically(Path.Combine(folder, file), Encoding.UTF8.GetBytes(content), mode: Libc.Mode0644);
    }

    private ToolRun Systemctl(ServiceUnit unit, params string[] args) => Run(unit, timeout < SlowCallLimit ? SlowCallLimit : timeout, args);

    private ToolRun Run(ServiceUnit unit, TimeSpan limit, string[] args)
    {
        var command = unit.UserManager ? ["--user", .. args] : args;
        ToolRun run;
        try
        {
            run = ProcessRunner.Run(systemctl, command, limit);
        }
        catch (ToolNotStartedException e)
        {
            throw new ServiceManagerException($"{systemctl} cannot be run: {e.InnerException?.Message}");
        }

        var shown = $"{systemctl} {string.Join(' ', command)}";
        return run.TimedOut ? throw new ServiceManagerException($"{shown} did not finish within {limit.TotalSeconds:0} s")
            : run.ExitCode != 0 ? throw new ServiceManagerException($"{shown} failed: {run.FirstLine}")
            : run;
    }
}
