using System.Diagnostics;
using System.Globalization;
using Mono.Unix.Native;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Pipeline;

/// <summary>
/// Exactly once, attacked: the real tool rehearses a real workload and is SIGKILLed at random instants from
/// the freeze to the end of the restore (half of the kills anywhere in that span, half inside the restore
/// itself), then `rebootless resume` runs. Every time exactly one copy of the workload runs afterwards and
/// its state continued. The seed is printed, so a failing draw can be replayed (REBOOTLESS_KILL_SEED).
/// </summary>
[NonParallelizable]
public class RandomKillTests
{
    private const string FreezerRoot = "/sys/fs/cgroup/freezer";
    private Testbed _testbed = null!;
    private string _dir = null!;
    private string _tool = null!;
    private Random _random = null!;
    private readonly List<string> _hits = [];

    [SetUp]
    public void SetUp()
    {
        _testbed = Testbed.Require();
        Testbed.RequireRoot();
        _tool = BuiltTool.Path;
        _dir = Directory.CreateTempSubdirectory("rebootless-kill-it-").FullName;
        var seed = int.TryParse(Environment.GetEnvironmentVariable("REBOOTLESS_KILL_SEED"), NumberStyles.None, CultureInfo.InvariantCulture, out var s)
            ? s : Random.Shared.Next();
        TestContext.Out.WriteLine($"seed {seed} (REBOOTLESS_KILL_SEED={seed} replays these kill instants)");
        _random = new Random(seed);
        _hits.Clear();
    }

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    [TestCase("pid", 12, 12, TestName = "A process tree: the tool killed at 24 random instants between freeze and restored, resume leaves exactly one copy")]
    [TestCase("lazy", 10, 10, TestName = "A lazily restored tree: the tool killed at 20 random instants between freeze and restored, resume leaves exactly one copy")]
    [TestCase("cgroup", 10, 10, TestName = "A freezer cgroup: the tool killed at 20 random instants between freeze and restored, resume leaves exactly one copy")]
    public void Killed_at_random_instants_then_resumed_exactly_one_copy_runs(string kind, int anywhere, int duringRestore)
    {
        // Calibration: how long the span lasts on this machine, from the journal's "dumping" to the tool's end, and its restore part.
        var (span, restore) = Calibrate(kind);
        TestContext.Out.WriteLine($"{kind}: freeze -> end {span.TotalMilliseconds:0} ms, of which the restore {restore.TotalMilliseconds:0} ms");
        for (var i = 0; i < anywhere + duringRestore; i++)
        {
            var inRestore = i >= anywhere;
            var window = inRestore ? restore : span;
            var delay = TimeSpan.FromMilliseconds(_random.NextDouble() * window.TotalMilliseconds * 1.1);
            if (Trial(kind, i, inRestore ? JournalState.Resuming : JournalState.Dumping, delay))
            {
                // The run was over before the kill: the calibration ran slower than the trials (a cold start, a busy
                // machine), so the window shrinks to what the trials show.
                (span, restore) = inRestore ? (span, delay) : (delay, TimeSpan.FromTicks(Math.Min(restore.Ticks, delay.Ticks)));
            }
        }

        TestContext.Out.WriteLine("where the kills landed (journal state/phase at the kill): "
            + string.Join(", ", _hits.GroupBy(h => h).OrderBy(g => g.Key, StringComparer.Ordinal).Select(g => $"{g.Key} x{g.Count()}")));
        Assert.That(_hits.Count(h => h.StartsWith("Resuming/Restoring", StringComparison.Ordinal)), Is.Positive,
            "some kills landed while CRIU restored (the window this test is about); the calibration is off otherwise");
    }

    private (TimeSpan Span, TimeSpan Restore) Calibrate(string kind)
    {
        const int Attempts = 3;
        for (var attempt = 1; ; attempt++)
        {
            using var run = Start(kind, $"calibrate{attempt}");
            var dumping = run.WaitForJournal(JournalState.Dumping, failIfEnded: false);
            var resuming = dumping is null ? null : run.WaitForJournal(JournalState.Resuming, failIfEnded: false);
            // The restore window ends when CRIU let the tree run, not when the tool ends: the report and cleanup after it
            // take longer than the restore of a small tree, and kills there would miss the window this test is about.
            var restored = resuming is null ? null : run.WaitForRestored();
            run.Tool.WaitForExit(TimeSpan.FromMinutes(2));
            var end = Stopwatch.GetTimestamp();
            if (run.Tool.ExitCode == 0 && dumping is { } d && resuming is { } r && restored is { } done)
            {
                return (Stopwatch.GetElapsedTime(d, end), Stopwatch.GetElapsedTime(r, done));
            }

            // The rehearsal failed by itself (seen: criu 4.1.1 cannot seize a short-lived child of the shell loop that the
            // v1 freezer caught while it exited, "Unseizable non-zombie ... state D"): it must have rolled back, leaving
            // the workload running once; then the calibration is tried again.
            TestContext.Out.WriteLine($"calibration {attempt}: the rehearsal failed by itself (exit {run.Tool.ExitCode}):\n{run.Errors}");
            Assert.Multiple(() =>
            {
                Assert.That(run.Tool.ExitCode, Is.EqualTo(1), "a failed rehearsal exits 1 (rolled back): " + run.Errors);
                Assert.That(run.Copies(), Has.Count.EqualTo(1), "the failed rehearsal left exactly one copy running");
            });
            Assert.That(attempt, Is.LessThan(Attempts), $"the calibration rehearsal failed {Attempts} times: " + run.Errors);
        }
    }

    /// <summary>One kill and its recovery; true when the run had finished before the kill.</summary>
    private bool Trial(string kind, int index, JournalState from, TimeSpan delay)
    {
        using var run = Start(kind, $"trial{index}");
        if (run.WaitForJournal(from, failIfEnded: false) is null)
        {
            // The rehearsal failed by itself before the window (seen: a criu dump of the shell loop failing now and then):
            // it rolled back on its own; what follows must still find exactly one copy.
            TestContext.Out.WriteLine($"trial {index}: the rehearsal ended by itself before {from} (exit {run.Tool.ExitCode}):\n{run.Errors}");
        }

        Thread.Sleep(delay);
        var killed = Syscall.kill(run.Tool.Id, Signum.SIGKILL) == 0;
        run.Tool.WaitForExit(TimeSpan.FromMinutes(1));
        var atKill = UpdateJournal.List(run.Store).SingleOrDefault();
        var hit = atKill is null ? "refused before it planned anything"
            : run.Tool.ExitCode == 128 + 9
            ? $"{atKill.State}/{string.Join('+', atKill.Targets.Select(t => t.Phase + (t.Phase == TargetPhase.Restoring && t.RestoredPid is not null ? "(pid recorded)" : "")))}"
            : "finished before the kill";
        _hits.Add(hit);
        TestContext.Out.WriteLine($"trial {index}: {from} + {delay.TotalMilliseconds:0} ms -> {hit} (kill sent: {killed})");

        var resumed = ProcessRunner.Run("dotnet", [_tool, "resume", "--store", run.Store, "--criu", _testbed.Criu], TimeSpan.FromMinutes(3));
        var journal = UpdateJournal.List(run.Store).SingleOrDefault();
        var copies = run.Copies();
        Assert.Multiple(() =>
        {
            Assert.That(resumed.ExitCode, Is.Zero, $"trial {index} ({hit}): resume brought everything back\n{resumed}");
            Assert.That(journal?.State ?? JournalState.RolledBack, Is.AnyOf(JournalState.RolledBack, JournalState.Resumed), $"trial {index} ({hit}): the run is finished");
            Assert.That(copies, Has.Count.EqualTo(1), $"trial {index} ({hit}): exactly one copy of the workload runs");
        });
        run.Workload.RootPid = copies[0];
        if (kind != "cgroup")
        {
            Assert.That(run.Workload.Check(), Does.StartWith("ok"), $"trial {index} ({hit}): its memory, files, pipe and socket are intact");
        }

        var before = run.Workload.ReadCounter();
        Workload.WaitFor(() => run.Workload.ReadCounter() > before + 2 ? 1 : 0, $"trial {index} ({hit}): the workload to count on");
        Assert.That(run.Workload.ReadCounter(), Is.GreaterThan(run.CounterAtStart), $"trial {index} ({hit}): the counter continued from before the rehearsal, it did not restart");
        return hit == "finished before the kill";
    }

    private Run Start(string kind, string name)
    {
        var app = Path.Combine(_dir, name);
        var store = Directory.CreateDirectory(Path.Combine(_dir, name + "-store")).FullName;
        string? cgroup = null;
        Workload workload;
        if (kind == "cgroup")
        {
            if (!File.Exists(Path.Combine(FreezerRoot, "cgroup.procs")))
            {
                Testbed.Missing($"no cgroup v1 freezer hierarchy at {FreezerRoot}");
            }

            cgroup = Directory.CreateDirectory(Path.Combine(FreezerRoot, "rebootless-kill-" + Guid.NewGuid().ToString("N")[..8])).FullName;
            workload = Workload.Start(app);
            workload.MoveInto(cgroup);
        }
        else
        {
            workload = Workload.StartProgram(app, 32);
        }

        string[] target = kind switch
        {
            "cgroup" => ["--cgroup", cgroup!],
            "lazy" => ["--pid", workload.RootPid.ToString(CultureInfo.InvariantCulture), "--lazy-restore"],
            _ => ["--pid", workload.RootPid.ToString(CultureInfo.InvariantCulture)],
        };
        var counter = workload.ReadCounter();
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in (string[])[_tool, "rehearse", .. target, "--store", store, "--criu", _testbed.Criu])
        {
            psi.ArgumentList.Add(a);
        }

        var tool = Process.Start(psi)!;
        var errors = new System.Text.StringBuilder();
        tool.OutputDataReceived += (_, _) => { };
        tool.ErrorDataReceived += (_, e) => { lock (errors) { errors.AppendLine(e.Data); } };
        tool.BeginOutputReadLine();
        tool.BeginErrorReadLine();
        return new Run(workload, app, store, cgroup, tool, counter, errors);
    }

    /// <summary>One rehearsal under attack: the workload, its store, the tool's process.</summary>
    private sealed record Run(Workload Workload, string App, string Store, string? Cgroup, Process Tool, long CounterAtStart, System.Text.StringBuilder ErrorLines) : IDisposable
    {
        /// <summary>Waits (polling the store's journal) until the run's journal has passed <paramref name="state"/>; returns when it was seen.</summary>
        public long WaitForJournal(JournalState state) => WaitForJournal(state, failIfEnded: true)!.Value;

        /// <summary>As <see cref="WaitForJournal(JournalState)"/>; null when the tool ended before, unless <paramref name="failIfEnded"/>.</summary>
        public long? WaitForJournal(JournalState state, bool failIfEnded) =>
            WaitForJournal(j => j.History.Any(h => h.State == state), state.ToString(), failIfEnded);

        /// <summary>Waits until the journal shows every target restored (CRIU let the tree run); null when the tool ended before.</summary>
        public long? WaitForRestored() =>
            WaitForJournal(j => j.Targets.All(t => t.Phase == TargetPhase.Restored), "every target restored", failIfEnded: false);

        private long? WaitForJournal(Func<JournalRecord, bool> reached, string what, bool failIfEnded)
        {
            var deadline = Stopwatch.StartNew();
            while (deadline.Elapsed < TimeSpan.FromMinutes(1))
            {
                var journal = UpdateJournal.List(Store).SingleOrDefault();
                if (journal is not null && reached(journal))
                {
                    return Stopwatch.GetTimestamp();
                }

                if (Tool.HasExited && !failIfEnded)
                {
                    return null;
                }

                if (Tool.HasExited)
                {
                    var logs = Directory.EnumerateFiles(Store, "*.log", SearchOption.AllDirectories)
                        .Select(f => $"--- {f}\n{string.Join('\n', File.ReadLines(f).Where(l => l.Contains("Error", StringComparison.Ordinal)).TakeLast(15))}");
                    Assert.Fail($"the tool ended before its journal reached {what}: exit {Tool.ExitCode}\n{Errors}\n{string.Join('\n', logs)}");
                }

                Thread.Sleep(2);
            }

            throw new TimeoutException($"the journal did not reach {what}");
        }

        public string Errors
        {
            get
            {
                lock (ErrorLines)
                {
                    return ErrorLines.ToString();
                }
            }
        }

        public IReadOnlyList<int> Copies() => Workload.CopiesOf(App);

        /// <summary>The lazy-pages daemons whose work folder lies in <paramref name="store"/> (the product's own daemon finder).</summary>
        private static IEnumerable<int> LazyPagesDaemonsOf(string store) =>
            Criu.CriuLazyPagesDaemon.FindRunningDaemons()
                .Where(d => d.WorkDirectory?.StartsWith(store + "/", StringComparison.Ordinal) == true)
                .Select(d => d.Pid);

        public void Dispose()
        {
            if (!Tool.HasExited)
            {
                Tool.Kill();
                Tool.WaitForExit();
            }

            Tool.Dispose();
            // Whatever copies run are this test's workload (original or restored): end each by pid.
            foreach (var pid in Copies())
            {
                Syscall.kill(pid, Signum.SIGKILL);
            }

            Workload.Dispose();
            Workload.WaitFor(() => Copies().Count == 0 ? 1 : 0, "the workload's copies to end", 15);
            // A lazy-pages daemon of this store's set serves nobody once its tree is gone; it would block the next plan.
            // Found by its work folder in this store, so nothing else is touched.
            foreach (var daemon in LazyPagesDaemonsOf(Store))
            {
                Syscall.kill(daemon, Signum.SIGKILL);
                Workload.WaitFor(() => Workload.IsRunning(daemon) ? 0 : 1, $"lazy-pages daemon {daemon} to end", 15);
            }

            if (Cgroup is not null)
            {
                Workload.WaitFor(() => File.ReadAllText(Path.Combine(Cgroup, "cgroup.procs")).Trim().Length == 0 ? 1 : 0, "the test cgroup to empty", 15);
                Directory.Delete(Cgroup);
            }
        }
    }
}
