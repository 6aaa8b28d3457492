using System.Diagnostics;
using System.Globalization;
using Mono.Unix.Native;

namespace RebootlessUpdate.TestSupport;

/// <summary>
/// A real systemd service manager (systemd 252's <c>systemd --user</c>, run as root) for tests on
/// a host whose PID 1 is not systemd. It runs in a private mount namespace, where a tmpfs on
/// <c>/run/systemd</c> holds the <c>system</c> folder systemd looks for before it agrees to run
/// (<c>sd_booted()</c>), and in a cgroup of its own in every mounted hierarchy, so that it moves
/// only itself into its <c>init.scope</c> (started in a root cgroup, it moves every process of
/// that cgroup, the host's too). Commands that must see its units and their processes as a
/// tool on such a host would (systemctl --user, the rebootless tool, criu) run in its mount
/// namespace through <see cref="Run"/>. Dispose stops it, kills what is left in its cgroups
/// (processes it no longer supervises, e.g. restored ones) and removes the cgroups.
/// </summary>
public sealed class PrivateSystemd : IDisposable
{
    private readonly List<string> _cgroups = [];
    private readonly Process _launcher;

    private PrivateSystemd(string directory, Process launcher, List<string> cgroups)
    {
        Directory = directory;
        _launcher = launcher;
        _cgroups = cgroups;
    }

    /// <summary>Its folder: XDG_RUNTIME_DIR is <c>run</c> in it, user units go to <c>config/systemd/user</c>.</summary>
    public string Directory { get; }

    /// <summary>XDG_RUNTIME_DIR for systemctl --user.</summary>
    public string RuntimeDirectory => Path.Combine(Directory, "run");

    /// <summary>The manager's pid (its mount namespace is the one commands run in).</summary>
    public int Pid => _launcher.Id;

    /// <summary>
    /// Starts a manager in <paramref name="directory"/>, with the user unit files of
    /// <paramref name="units"/> (name → content; <c>UNIT.d/NAME.conf</c> for a drop-in) installed before it starts; waits until it answers.
    /// </summary>
    public static PrivateSystemd Start(string directory, IReadOnlyDictionary<string, string>? units = null)
    {
        var systemd = new[] { "/lib/systemd/systemd", "/usr/lib/systemd/systemd" }.FirstOrDefault(File.Exists);
        if (systemd is null)
        {
            Testbed.Missing("systemd is not installed (/lib/systemd/systemd): apt-get install systemd (testbed/provision does)");
        }

        var run = System.IO.Directory.CreateDirectory(Path.Combine(directory, "run")).FullName;
        File.SetUnixFileMode(run, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        var unitDir = System.IO.Directory.CreateDirectory(Path.Combine(directory, "config", "systemd", "user")).FullName;
        foreach (var (name, content) in units ?? new Dictionary<string, string>())
        {
            // A name may be a drop-in: "UNIT.d/NAME.conf".
            var path = Path.Combine(unitDir, name);
            System.IO.Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            File.WriteAllText(path, content);
        }

        var name2 = "rebootless-systemd-" + Guid.NewGuid().ToString("N")[..8];
        var cgroups = Hierarchies().Select(h => Path.Combine(h, name2)).ToList();
        foreach (var c in cgroups)
        {
            System.IO.Directory.CreateDirectory(c);
        }

        var join = string.Join("; ", cgroups.Select(c => $"echo $$ > '{c}/cgroup.procs'"));
        var script = $"{join}; mount --make-rprivate / && mount -t tmpfs rebootless-systemd /run/systemd && mkdir /run/systemd/system && exec {systemd} --user";
        var psi = new ProcessStartInfo("unshare", ["--mount", "sh", "-c", script])
        {
            UseShellExecute = false,
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        psi.Environment["XDG_RUNTIME_DIR"] = run;
        psi.Environment["XDG_CONFIG_HOME"] = Path.Combine(directory, "config");
        psi.Environment["SYSTEMD_LOG_TARGET"] = "console";
        var launcher = Process.Start(psi) ?? throw new InvalidOperationException("could not start unshare");
        var log = new System.Text.StringBuilder();
        launcher.OutputDataReceived += (_, e) => { lock (log) { log.AppendLine(e.Data); } };
        launcher.ErrorDataReceived += (_, e) => { lock (log) { log.AppendLine(e.Data); } };
        launcher.BeginOutputReadLine();
        launcher.BeginErrorReadLine();
        var manager = new PrivateSystemd(directory, launcher, cgroups);
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (true)
        {
            if (launcher.HasExited)
            {
                manager.Dispose();
                throw new InvalidOperationException($"systemd --user exited with {launcher.ExitCode}:\n{log}");
            }

            if (File.Exists(Path.Combine(run, "systemd", "private")) && manager.Systemctl("show", "-p", "Version").ExitCode == 0)
            {
                return manager;
            }

            if (DateTime.UtcNow > deadline)
            {
                manager.Dispose();
                throw new TimeoutException($"systemd --user did not answer within 60 s:\n{log}");
            }

            Thread.Sleep(200);
        }
    }

    /// <summary>Runs a command in the manager's mount namespace with its XDG_RUNTIME_DIR.</summary>
    public ProcessResult Run(string file, IEnumerable<string> args, TimeSpan? timeout = null) =>
        ProcessRunner.Run("nsenter", ["-t", Pid.ToString(CultureInfo.InvariantCulture), "-m", "--", "env", $"XDG_RUNTIME_DIR={RuntimeDirectory}", file, .. args], timeout ?? TimeSpan.FromMinutes(2));

    /// <summary><c>systemctl --user ARGS</c> against this manager.</summary>
    public ProcessResult Systemctl(params string[] args) => Run("systemctl", ["--user", .. args], TimeSpan.FromSeconds(30));

    /// <summary>One property of a unit (<c>systemctl --user show -p NAME --value</c>).</summary>
    public string Property(string unit, string name) => Systemctl("show", "-p", name, "--value", unit).Output.Trim();

    /// <summary>Starts a transient service running <paramref name="command"/>; returns its main pid.</summary>
    public int StartService(string unit, params string[] command)
    {
        var r = Run("systemd-run", ["--user", "--unit", unit, "--", .. command]);
        if (r.ExitCode != 0)
        {
            throw new InvalidOperationException($"systemd-run {unit}: {r}");
        }

        return int.Parse(Property(unit, "MainPID"), CultureInfo.InvariantCulture);
    }

    /// <summary>The folder of a unit's control group in the cgroup2 hierarchy (or the name=systemd one).</summary>
    public string CgroupFolder(string unit)
    {
        var controlGroup = Property(unit, "ControlGroup");
        return Hierarchies().Where(h => File.Exists(Path.Combine(h, "cgroup.controllers")) || h.EndsWith("/systemd", StringComparison.Ordinal))
            .OrderBy(h => File.Exists(Path.Combine(h, "cgroup.controllers")) ? 0 : 1)
            .Select(h => h + controlGroup).First(System.IO.Directory.Exists);
    }

    /// <summary>Every process in this manager's cgroups (the manager, its units, and whatever was restored into them).</summary>
    public IReadOnlyList<int> Processes() =>
        [.. _cgroups.Where(System.IO.Directory.Exists)
            .SelectMany(c => System.IO.Directory.EnumerateFiles(c, "cgroup.procs", SearchOption.AllDirectories))
            .SelectMany(f => { try { return File.ReadAllLines(f); } catch (IOException) { return []; } })
            .Where(l => l.Length > 0).Select(l => int.Parse(l, CultureInfo.InvariantCulture)).Distinct()];

    /// <inheritdoc />
    public void Dispose()
    {
        if (!_launcher.HasExited)
        {
            _ = Systemctl("exit");
            if (!_launcher.WaitForExit(TimeSpan.FromSeconds(15)))
            {
                _launcher.Kill();
            }
        }

        _launcher.WaitForExit(5000);
        _launcher.Dispose();
        // What systemd no longer supervised (e.g. restored processes): only processes in our own cgroups.
        for (var i = 0; i < 20 && Processes() is { Count: > 0 } left; i++)
        {
            foreach (var pid in left)
            {
                Syscall.kill(pid, Signum.SIGKILL);
            }

            Thread.Sleep(100);
        }

        foreach (var c in _cgroups.Where(System.IO.Directory.Exists))
        {
            foreach (var d in System.IO.Directory.EnumerateDirectories(c, "*", SearchOption.AllDirectories).OrderByDescending(d => d.Length).Append(c))
            {
                try
                {
                    System.IO.Directory.Delete(d);
                }
                catch (IOException)
                {
                    // Still busy (a zombie not yet reaped); left for the host to clean.
                }
            }
        }
    }

    /// <summary>
    /// The host's cgroup hierarchies systemd may use: the cgroup2 mount and each v1 mount but
    /// cpuset's (systemd leaves v1 cpuset alone, and a new v1 cpuset cgroup takes no process
    /// before its cpus and mems are set).
    /// </summary>
    private static IEnumerable<string> Hierarchies() =>
        File.ReadLines("/proc/self/mountinfo").Select(l => l.Split(' '))
            .Select(f => (Fields: f, Dash: Array.IndexOf(f, "-")))
            .Where(x => x.Dash > 4 && x.Dash + 3 < x.Fields.Length && x.Fields[x.Dash + 1] is "cgroup" or "cgroup2" && !x.Fields[x.Dash + 3].Split(',').Contains("cpuset"))
            .Select(x => x.Fields[4]).Where(m => File.Exists(Path.Combine(m, "cgroup.procs"))).Distinct();
}
