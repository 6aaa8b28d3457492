using System.Globalization;
using System.Text;
using RebootlessUpdate.Images;
using RebootlessUpdate.Images.Interop;
using RebootlessUpdate.Processes;

namespace RebootlessUpdate.Targets;

/// <summary>A unit as systemd shows it: its state and its main process (0 when none).</summary>
internal sealed record ServiceStatus(string ActiveState, string SubState, int MainPid)
{
    /// <summary>systemd is still acting on the unit, or it runs: a restore into its cgroup must wait, an adoption must not start it.</summary>
    public bool Busy => ActiveState is "active" or "activating" or "deactivating" or "reloading" or "refreshing";
}

/// <summary>systemctl failed, timed out or could not be run; the message says which command and what it printed.</summary>
internal sealed class ServiceManagerException(string message) : Exception(message);

/// <summary>
/// What the stages ask of the service manager of a service target (see <see cref="Stages.ServiceHandback"/>).
/// <see cref="SystemctlServiceManager"/> asks systemd through <c>systemctl</c> and runtime drop-ins.
/// </summary>
internal interface IServiceManager
{
    /// <summary>
    /// Before CRIU may end the unit's processes: the end of its main process becomes nothing for systemd to act on
    /// (no restart, no stop commands run against whatever else, no watchdog).
    /// </summary>
    /// <exception cref="ServiceManagerException">systemd could not be told.</exception>
    void Release(ServiceUnit unit);

    /// <summary>The unit's state now.</summary>
    /// <exception cref="ServiceManagerException">systemd could not be asked.</exception>
    ServiceStatus Status(ServiceUnit unit);

    /// <summary>
    /// Makes the running process <paramref name="mainPid"/> (in the unit's cgroup already) the main process of the
    /// unit, which must not be running: systemd starts the unit by reading <paramref name="pidFile"/> instead of
    /// starting anything. Then the unit has its own configuration again (<see cref="Return"/>).
    /// </summary>
    /// <exception cref="ServiceManagerException">systemd did not take it; the unit has its own configuration again.</exception>
    void Adopt(ServiceUnit unit, int mainPid, string pidFile);

    /// <summary>The unit's own configuration again: what <see cref="Release"/> and <see cref="Adopt"/> added is removed, if anything.</summary>
    /// <exception cref="ServiceManagerException">systemd could not reload.</exception>
    void Return(ServiceUnit unit);
}

/// <summary>
/// <see cref="IServiceManager"/> through <c>systemctl</c>: runtime drop-ins (in <c>/run/systemd/system/UNIT.d</c>, or
/// <c>$XDG_RUNTIME_DIR/systemd/user/UNIT.d</c> for a user manager) and <c>daemon-reload</c>. Runtime drop-ins live
/// in memory: a jump or a reboot ends them with the manager that read them.
/// </summary>
internal sealed class SystemctlServiceManager(string systemctl, TimeSpan timeout) : IServiceManager
{
    private const string ReleaseFile = "90-rebootless-release.conf";
    private const string AdoptFile = "91-rebootless-adopt.conf";
    private static readonly string[] NoOps = ["/usr/bin/true", "/bin/true"];

    /// <summary>The host's systemd, through <c>systemctl</c> on PATH.</summary>
    public static SystemctlServiceManager Host { get; } = new("systemctl", TimeSpan.FromSeconds(30));

    public void Release(ServiceUnit unit)
    {
        WriteDropIn(unit, ReleaseFile,
            "# rebootless checkpoints this service: CRIU ends its processes and they are restored later.\n" +
            "# Removed when the restored tree is handed back (or the processes resume in place).\n" +
            "[Service]\nRestart=no\nExecStop=\nExecStopPost=\nWatchdogSec=0\n");
        Systemctl(unit, "daemon-reload");
    }

    public ServiceStatus Status(ServiceUnit unit)
    {
        var run = Systemctl(unit, "show", "--no-pager", "-p", "ActiveState", "-p", "SubState", "-p", "MainPID", "--", Name(unit));
        var p = SystemdServiceTarget.ParseProperties(run.Stdout);
        return new ServiceStatus(p.GetValueOrDefault("ActiveState") ?? "", p.GetValueOrDefault("SubState") ?? "",
            int.TryParse(p.GetValueOrDefault("MainPID"), NumberStyles.None, CultureInfo.InvariantCulture, out var pid) ? pid : 0);
    }

    public void Adopt(ServiceUnit unit, int mainPid, string pidFile)
    {
        if (pidFile.Contains('\n', StringComparison.Ordinal) || !Path.IsPathFullyQualified(pidFile))
        {
            throw new ServiceManagerException($"cannot name {pidFile} in a unit file");
        }

        var noOp = NoOps.FirstOrDefault(File.Exists)
            ?? throw new ServiceManagerException("no true(1) to start the unit with (/usr/bin/true, /bin/true)");
        StoreFiles.WriteAtomically(pidFile, Encoding.ASCII.GetBytes(mainPid.ToString(CultureInfo.InvariantCulture) + "\n"), mode: Libc.Mode0644);
        try
        {
            // systemd runs the no-op, reads the pid file and takes that pid, already in the unit's cgroup, as the
            // main process; nothing of the unit's own start runs. "%" is the one character unit files expand.
            WriteDropIn(unit, AdoptFile,
                "# rebootless hands the restored processes back to this unit; removed once the unit runs them.\n" +
                $"[Service]\nType=forking\nPIDFile={pidFile.Replace("%", "%%", StringComparison.Ordinal)}\n" +
                $"ExecCondition=\nExecStartPre=\nExecStart=\nExecStart={noOp}\nExecStartPost=\nGuessMainPID=no\n");
            Systemctl(unit, "daemon-reload");
            try
            {
                _ = Systemctl(unit, "reset-failed", "--", Name(unit));
            }
            catch (ServiceManagerException)
            {
                // Not failed, or not loaded yet (after a jump): start says what matters.
            }

            Systemctl(unit, "start", "--", Name(unit));
        }
        finally
        {
            Return(unit);
            File.Delete(pidFile);
        }

        var status = Status(unit);
        if (status.MainPid != mainPid || status.ActiveState != "active")
        {
            throw new ServiceManagerException($"systemd started {Name(unit)} but shows it {status.ActiveState} ({status.SubState}) with main pid {status.MainPid}, not {mainPid}");
        }
    }

    public void Return(ServiceUnit unit)
    {
        var folder = DropInFolder(unit);
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

    private static void WriteDropIn(ServiceUnit unit, string file, string content)
    {
        var folder = DropInFolder(unit);
        Directory.CreateDirectory(folder, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute |
            UnixFileMode.GroupRead | UnixFileMode.GroupExecute | UnixFileMode.OtherRead | UnixFileMode.OtherExecute);
        StoreFiles.WriteAtomically(Path.Combine(folder, file), Encoding.UTF8.GetBytes(content), mode: Libc.Mode0644);
    }

    private ToolRun Systemctl(ServiceUnit unit, params string[] args)
    {
        var command = unit.UserManager ? ["--user", .. args] : args;
        ToolRun run;
        try
        {
            run = ProcessRunner.Run(systemctl, command, timeout);
        }
        catch (ToolNotStartedException e)
        {
            throw new ServiceManagerException($"{systemctl} cannot be run: {e.InnerException?.Message}");
        }

        var shown = $"{systemctl} {string.Join(' ', command)}";
        return run.TimedOut ? throw new ServiceManagerException($"{shown} did not finish within {timeout.TotalSeconds:0} s")
            : run.ExitCode != 0 ? throw new ServiceManagerException($"{shown} failed: {run.FirstLine}")
            : run;
    }
}
