using System.Diagnostics;
using System.Globalization;
using Mono.Unix.Native;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Criu.Interop;
using RebootlessUpdate.Images;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;
using RebootlessUpdate.Targets;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Pipeline;

/// <summary>
/// Trees restored into the host's PID namespace, the one they were dumped from: their pids, process groups and
/// sessions must be free again first (issue 13: a shell loop that forks failed with "Can't fork for N: File exists").
/// </summary>
[NonParallelizable]
public class HostPidRestoreTests
{
    private Testbed _testbed = null!;
    private string _dir = null!;
    private readonly List<Process> _started = [];
    private readonly List<int> _roots = [];

    [SetUp]
    public void SetUp()
    {
        _testbed = Testbed.Require();
        Testbed.RequireRoot();
        _dir = Directory.CreateTempSubdirectory("rebootless-hostpid-it-").FullName;
    }

    [TearDown]
    public void TearDown()
    {
        // Only what this test started: its loops (original or restored, same pid), then their short-lived children.
        foreach (var pid in _roots.Distinct().Where(Workload.IsRunning))
        {
            var children = Workload.ChildrenOf(pid);
            Syscall.kill(pid, Signum.SIGKILL);
            foreach (var child in children)
            {
                Syscall.kill(child, Signum.SIGKILL);
            }
        }

        foreach (var p in _started)
        {
            p.WaitForExit(5000);
            p.Dispose();
        }

        // One fixture instance serves every test: start each with empty lists.
        _started.Clear();
        _roots.Clear();
        Directory.Delete(_dir, recursive: true);
    }

    /// <summary>
    /// A shell loop in the host PID namespace that forks a child every 10 ms and counts: in the test runner's session
    /// where that session's leader is visible here, otherwise (a runner started from outside this PID namespace, as in
    /// CI's container: its session reads as 0 and CRIU refuses such a tree) in a session of its own.
    /// </summary>
    private (int Pid, string Counter) StartForkingLoop(string name)
    {
        var counter = Path.Combine(_dir, name + ".counter");
        var script = $"exec </dev/null >/dev/null 2>&1; i=0; while :; do i=$((i+1)); echo $i > '{counter}'; sleep 0.01 & wait; done";
        var ownSession = ProcStat.Read(Environment.ProcessId)!.Session == 0;
        TestContext.Out.WriteLine(ownSession ? "the runner's session leader is outside this PID namespace: the loop leads its own" : "the loop runs in the runner's session");
        var p = Process.Start(ownSession
            ? new ProcessStartInfo("setsid", ["sh", "-c", script]) { UseShellExecute = false }
            : new ProcessStartInfo("sh", ["-c", script]) { UseShellExecute = false })!;
        _started.Add(p);
        _roots.Add(p.Id);
        Workload.WaitFor(() => ReadCount(counter) > 0 ? 1 : 0, "the loop's first count");
        return (p.Id, counter);
    }

    private static long ReadCount(string counter)
    {
        try
        {
            return long.TryParse(File.ReadAllText(counter).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var n) ? n : 0;
        }
        catch (FileNotFoundException)
        {
            return 0;
        }
    }

    private UpdateContext Context(int pid) => new(UpdateMode.Rehearse, [UpdateTarget.ProcessTree(pid)])
    {
        Store = new DirectoryImageStore(new DirectoryImageStoreOptions { RootDirectory = Path.Combine(_dir, "store") }),
        Criu = new CriuClient(new CriuClientOptions { CriuPath = _testbed.Criu }),
    };

    [Test]
    public async Task A_shell_loop_that_forks_is_rehearsed_10_times_in_a_row_without_a_failed_restore()
    {
        var (pid, counter) = StartForkingLoop("loop");
        var failures = new List<string>();
        for (var round = 1; round <= 10; round++)
        {
            var sw = Stopwatch.StartNew();
            var result = await RebootlessPipelines.Rehearsal().Build().ExecuteAsync(Context(pid));
            var restores = result.Stages.Where(s => s.Name == "Restore").ToList();
            TestContext.Out.WriteLine($"round {round}: {result.Outcome} in {sw.ElapsedMilliseconds} ms; restore "
                + string.Join(", ", restores.Select(s => $"{s.Status} {s.Duration.TotalMilliseconds:0} ms ({s.Attempts} attempts)")) + $"; {result.Error}");
            if (result.Targets[0].RestoredPid is { } restored)
            {
                _roots.Add(restored);
                pid = restored;
            }

            if (result.Outcome != UpdateOutcome.Succeeded || restores.Sum(s => s.Attempts) > 1)
            {
                failures.Add($"round {round}: {result.Outcome}, {restores.Sum(s => s.Attempts)} restore attempts: {result.Error}");
            }
        }

        Assert.That(failures, Is.Empty, string.Join("\n", failures));
        var before = ReadCount(counter);
        Workload.WaitFor(() => ReadCount(counter) > before + 2 ? 1 : 0, "the restored loop to count on");
    }

    /// <summary>
    /// A loop that leads its own session, and a sleep it left outside its tree by a double fork, in that session and group:
    /// once CRIU ends the tree, the orphan still keeps the root's pid taken (as its process group and session).
    /// </summary>
    private (int Pid, int Orphan) StartSessionLeaderWithOrphan()
    {
        var counter = Path.Combine(_dir, "leader.counter");
        var script = $"exec </dev/null >/dev/null 2>&1; (sleep 600 &); i=0; while :; do i=$((i+1)); echo $i > '{counter}'; sleep 0.05; done";
        var p = Process.Start(new ProcessStartInfo("setsid", ["sh", "-c", script]) { UseShellExecute = false })!;
        _started.Add(p);
        _roots.Add(p.Id);
        Workload.WaitFor(() => ReadCount(counter) > 0 ? 1 : 0, "the leader's first count");
        var orphan = Workload.WaitFor(() => OrphansInSession(p.Id).FirstOrDefault(), "the orphaned sleep");
        _roots.Add(orphan);
        Assert.That(ProcStat.Read(p.Id)!.Session, Is.EqualTo(p.Id), "setsid ran in place");
        return (p.Id, orphan);
    }

    [Test]
    public async Task A_restore_whose_pid_an_orphan_still_holds_as_its_group_waits_then_names_the_holder_and_restores_nothing()
    {
        var (pid, orphan) = StartSessionLeaderWithOrphan();

        var sw = Stopwatch.StartNew();
        var result = await RebootlessPipelines.Rehearsal(restore: new RestoreStageOptions { PidReleaseWait = TimeSpan.FromSeconds(1) })
            .Build().ExecuteAsync(Context(pid));
        TestContext.Out.WriteLine($"{result.Outcome} in {sw.ElapsedMilliseconds} ms: {result.Targets[0].Error}");

        Assert.Multiple(() =>
        {
            Assert.That(result.Outcome, Is.Not.EqualTo(UpdateOutcome.Succeeded));
            Assert.That(result.Targets[0].RestoredPid, Is.Null, "nothing restored");
            Assert.That(Workload.IsRunning(pid), Is.False, "no process runs under the root's pid");
            Assert.That(result.Targets[0].Error, Does.Contain($"pid {pid} (a process of the dumped tree) is still used by pid {orphan} 'sleep' as its process group and session"));
            Assert.That(result.Targets[0].Error, Does.Not.Contain("File exists (errno"), "CRIU was never asked");
            // Restore: 3 attempts of 1 s; its compensation: 1 s; the Dump stage's rollback: the default 10 s, once.
            Assert.That(sw.Elapsed, Is.LessThan(TimeSpan.FromSeconds(25)), "each wait is bounded and not repeated by the rollback");
        });
    }

    [Test]
    public async Task The_raw_client_says_in_plain_words_that_a_pid_the_restore_needs_is_in_use()
    {
        var (pid, _) = StartSessionLeaderWithOrphan();
        var images = Directory.CreateDirectory(Path.Combine(_dir, "images")).FullName;
        var criu = new CriuClient(new CriuClientOptions { CriuPath = _testbed.Criu });
        await criu.DumpAsync(new CriuDumpOptions { ImagesDirectory = images, Pid = pid });
        Workload.WaitFor(() => Workload.IsRunning(pid) ? 0 : 1, "CRIU to end the dumped tree");

        var e = Assert.ThrowsAsync<CriuRequestFailedException>(() => criu.RestoreAsync(new CriuRestoreOptions { ImagesDirectory = images }));

        TestContext.Out.WriteLine(e!.Message);
        Assert.That(e.Message, Does.StartWith(
            $"criu RESTORE failed: pid {pid} that the restored tree needs is still in use on this host (CRIU: Can't fork for {pid}: File exists); errno"));
        Assert.That(Workload.IsRunning(pid), Is.False, "nothing restored");
    }

    /// <summary>Sleeps in <paramref name="session"/> whose parent is not the session's leader (orphans of a double fork).</summary>
    private static IEnumerable<int> OrphansInSession(int session) =>
        Directory.GetDirectories("/proc").Select(d => int.TryParse(Path.GetFileName(d), out var pid) ? ProcStat.Read(pid) : null)
            .Where(s => s is { Comm: "sleep" } && s.Session == session && s.ParentPid != session).Select(s => s!.Pid);
}
