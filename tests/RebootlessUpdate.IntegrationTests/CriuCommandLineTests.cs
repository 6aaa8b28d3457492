using System.Globalization;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests;

/// <summary>
/// Plumbing: the testbed's criu 4.x runs on this host and really checkpoints
/// and restores a process tree. Driven through criu's command line, so these
/// tests prove the testbed independently of our RPC client.
/// </summary>
[NonParallelizable]
public class CriuCommandLineTests
{
    private static readonly TimeSpan Limit = TimeSpan.FromMinutes(2);

    /// <summary>What our client gives its criu workers here: criu's command line needs the same where breakpoints do not fire.</summary>
    private static IReadOnlyList<KeyValuePair<string, string>> CriuEnvironment =>
        Criu.HardwareBreakpointProbe.WorkerEnvironment(Criu.CriuBreakpoints.Auto, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);

    [Test]
    public void Criu_check_looks_good()
    {
        var testbed = Testbed.Require();
        Testbed.RequireRoot();

        var result = ProcessRunner.Run(testbed.Criu, ["check"], Limit);

        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        Assert.That(result.Output + result.Error, Does.Contain("Looks good"));
    }

    [Test]
    public void Criu_version_is_4_or_newer()
    {
        var testbed = Testbed.Require();

        var result = ProcessRunner.Run(testbed.Criu, ["--version"], Limit);

        var line = result.Output.Split('\n').First(l => l.StartsWith("Version:", StringComparison.Ordinal));
        var version = Criu.CriuVersion.Parse(line["Version:".Length..]);
        Assert.That(version, Is.GreaterThanOrEqualTo(RebootlessInfo.MinimumCriuVersion));
    }

    [Test]
    public void Dump_and_restore_of_a_tree_in_its_own_pid_namespace_keeps_counting_with_the_same_pids()
    {
        var testbed = Testbed.Require();
        Testbed.RequireRoot();
        var dir = Directory.CreateTempSubdirectory("rebootless-cli-").FullName;
        var images = Path.Combine(dir, "images");
        Directory.CreateDirectory(images);
        using var workload = Workload.Start(Path.Combine(dir, "work"));
        var oldRoot = workload.RootPid;
        var subshellsBefore = workload.SubshellNamespacePids();
        Assert.That(subshellsBefore, Is.Not.Empty, "the workload has a subshell child");

        var dump = ProcessRunner.Run(testbed.Criu, ["dump", "-t", oldRoot.ToString(CultureInfo.InvariantCulture), "-D", images, "-o", "dump.log", "-v4"], Limit, CriuEnvironment);
        Assert.That(dump.ExitCode, Is.Zero, $"{dump}\n{Tail(Path.Combine(images, "dump.log"))}");
        var countAtDump = workload.ReadCounter();
        Workload.WaitFor(() => Workload.IsRunning(oldRoot) ? 0 : 1, "the dumped tree to be gone");
        Thread.Sleep(300);
        Assert.That(workload.ReadCounter(), Is.EqualTo(countAtDump), "the tree must stop counting once dumped");

        var pidFile = Path.Combine(dir, "restored.pid");
        var restore = ProcessRunner.Run(testbed.Criu, ["restore", "-d", "-D", images, "-o", "restore.log", "-v4", "--pidfile", pidFile], Limit, CriuEnvironment);
        Assert.That(restore.ExitCode, Is.Zero, $"{restore}\n{Tail(Path.Combine(images, "restore.log"))}");
        workload.RootPid = int.Parse(File.ReadAllText(pidFile).Trim(), CultureInfo.InvariantCulture);

        Workload.WaitFor(() => workload.ReadCounter() > countAtDump + 5 ? 1 : 0, "the restored tree to count on");
        var after = workload.ReadCounter();
        Assert.Multiple(() =>
        {
            Assert.That(workload.IsAlive, Is.True);
            Assert.That(Workload.NamespacePid(workload.RootPid), Is.EqualTo(1), "root keeps PID 1 of its namespace");
            Assert.That(workload.SubshellNamespacePids(), Is.EqualTo(subshellsBefore), "the child subshell is back with its pid");
            Assert.That(after, Is.LessThan(countAtDump + 200), "the counter continued from the checkpoint, it did not restart or jump");
        });
    }

    private static string Tail(string file) =>
        File.Exists(file) ? string.Join('\n', File.ReadLines(file).TakeLast(30)) : $"({file} missing)";
}
