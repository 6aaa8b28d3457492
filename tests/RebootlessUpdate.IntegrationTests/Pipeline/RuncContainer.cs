using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Mono.Unix.Native;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Pipeline;

/// <summary>
/// A real runc container for a test: a minimal OCI bundle (static busybox, `runc spec` defaults) whose process counts
/// into a bind-mounted host folder. Disposing kills what it started (by the pid runc names) and deletes it from runc.
/// </summary>
internal sealed class RuncContainer : IDisposable
{
    private readonly string _dir;

    private RuncContainer(string dir, string id, string data)
    {
        _dir = dir;
        Id = id;
        Data = data;
    }

    public string Id { get; }

    /// <summary>The host folder mounted at /data in the container, where it writes its counter.</summary>
    public string Data { get; }

    public string Bundle => Path.Combine(_dir, "bundle");

    /// <summary>Skips (fails in CI) unless runc and a static busybox are installed.</summary>
    public static void Require()
    {
        if (ProcessRunner.Run("runc", ["--version"], TimeSpan.FromSeconds(30)) is not { ExitCode: 0 })
        {
            Testbed.Missing("runc is not installed (testbed/provision installs it)");
        }

        if (!File.Exists("/bin/busybox"))
        {
            Testbed.Missing("/bin/busybox (busybox-static) is not installed (testbed/provision installs it)");
        }
    }

    /// <summary>Creates the bundle in <paramref name="dir"/> and runs the container detached; returns once it counted.</summary>
    public static RuncContainer Start(string dir, string id)
    {
        var bundle = Path.Combine(dir, "bundle");
        var data = Directory.CreateDirectory(Path.Combine(dir, "data")).FullName;
        if (!File.Exists(Path.Combine(bundle, "config.json")))
        {
            Directory.CreateDirectory(Path.Combine(bundle, "rootfs", "bin"));
            Directory.CreateDirectory(Path.Combine(bundle, "rootfs", "data"));
            File.Copy("/bin/busybox", Path.Combine(bundle, "rootfs", "bin", "busybox"));
            var spec = ProcessRunner.Run("runc", ["spec", "--bundle", bundle], TimeSpan.FromSeconds(30));
            Assert.That(spec.ExitCode, Is.Zero, spec.ToString());
            var config = JsonNode.Parse(File.ReadAllText(Path.Combine(bundle, "config.json")))!;
            config["process"]!["terminal"] = false;
            // Its stdio is the container's own /dev/null: a host file would be outside its mounts.
            config["process"]!["args"] = new JsonArray("/bin/busybox", "sh", "-c",
                "exec </dev/null >/dev/null 2>&1; i=0; while :; do i=$((i+1)); echo $i > /data/c.tmp; /bin/busybox mv /data/c.tmp /data/counter; /bin/busybox sleep 0.05; done");
            config["root"]!["readonly"] = false;
            config["mounts"]!.AsArray().Add(new JsonObject { ["destination"] = "/data", ["type"] = "bind", ["source"] = data, ["options"] = new JsonArray("rbind", "rw") });
            File.WriteAllText(Path.Combine(bundle, "config.json"), config.ToJsonString());
        }

        File.Delete(Path.Combine(data, "counter"));
        var run = Runc("run", "-d", "--bundle", bundle, id);
        Assert.That(run.ExitCode, Is.Zero, run.ToString());
        var container = new RuncContainer(dir, id, data);
        Workload.WaitFor(() => container.Counter() > 0 ? 1 : 0, "the container's first count");
        return container;
    }

    public static ProcessResult Runc(params string[] args) => ProcessRunner.Run("runc", args, TimeSpan.FromSeconds(60));

    public long Counter() =>
        long.TryParse(File.Exists(Path.Combine(Data, "counter")) ? File.ReadAllText(Path.Combine(Data, "counter")).Trim() : "0", NumberStyles.None, CultureInfo.InvariantCulture, out var n) ? n : 0;

    /// <summary>What `runc state` says of the container: its status and init pid, or null when runc does not know it.</summary>
    public (string Status, int Pid)? State()
    {
        var run = Runc("state", Id);
        if (run.ExitCode != 0)
        {
            return null;
        }

        using var json = JsonDocument.Parse(run.Output);
        return (json.RootElement.GetProperty("status").GetString()!, json.RootElement.GetProperty("pid").GetInt32());
    }

    /// <summary>
    /// Ends the container and deletes it from runc: its init by the pid runc names, and every process still in its
    /// cgroup (named after its unique id: this test's processes only), then <c>runc delete -f</c>.
    /// </summary>
    public void Stop()
    {
        Runc("kill", Id, "KILL");
        var pids = new List<int>();
        if (State() is { } s)
        {
            pids.Add(s.Pid);
        }

        pids.AddRange(Directory.EnumerateDirectories("/proc").Select(Path.GetFileName).Select(n => int.TryParse(n, out var pid) ? pid : 0)
            .Where(pid => pid > 0 && InOurCgroup(pid)));
        foreach (var pid in pids.Distinct().Where(Workload.IsRunning))
        {
            Syscall.kill(pid, Signum.SIGKILL);
        }

        foreach (var pid in pids.Distinct())
        {
            Workload.WaitFor(() => Workload.IsRunning(pid) ? 0 : 1, $"container {Id}'s process {pid} to end");
        }

        var delete = Runc("delete", "-f", Id);
        TestContext.Out.WriteLine($"runc delete -f {Id}: {delete}");
    }

    private bool InOurCgroup(int pid)
    {
        try
        {
            return File.ReadAllText($"/proc/{pid}/cgroup").Contains("/" + Id + "\n", StringComparison.Ordinal);
        }
        catch (IOException)
        {
            return false;
        }
    }

    public void Dispose() => Stop();
}
