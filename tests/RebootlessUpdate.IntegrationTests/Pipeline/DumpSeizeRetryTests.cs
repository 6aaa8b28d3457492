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
/// A dump CRIU cannot start because it cannot seize a process (here: one traced by someone else, as a debugger would;
/// in CI once a task caught exiting by the v1 freezer) leaves the tree running, and is asked again, with real criu.
/// </summary>
[NonParallelizable]
public class DumpSeizeRetryTests
{
    private Testbed _testbed = null!;
    private string _dir = null!;
    private readonly StartedWorkloads _workloads = new();

    [SetUp]
    public void SetUp()
    {
        _testbed = Testbed.Require();
        Testbed.RequireRoot();
        _dir = Directory.CreateTempSubdirectory("rebootless-seize-it-").FullName;
    }

    [TearDown]
    public void TearDown()
    {
        _workloads.Clear();
        Directory.Delete(_dir, recursive: true);
    }

    [Test]
    public async Task A_tree_another_tracer_holds_is_dumped_once_released_while_the_other_target_stays_frozen()
    {
        var first = Start("first");
        var held = Start("held");
        var heldRoot = held.RootPid;
        using var tracer = new Tracer(heldRoot);
        var retries = new List<string>();
        var progress = new Progress(p =>
        {
            if (p.Message?.Contains("asking again", StringComparison.Ordinal) == true)
            {
                retries.Add($"{p.Target}: {p.Message}");
                tracer.Release();
            }
        });

        var result = await Rehearsal(new DumpStageOptions { SeizeRetryDelay = TimeSpan.FromSeconds(3) }).ExecuteAsync(Context(progress, first, held));
        _workloads.Adopt(result, first, held);

        TestContext.Out.WriteLine(string.Join("\n", retries));
        foreach (var t in result.Targets)
        {
            TestContext.Out.WriteLine($"{t.Target}: {t.Phase} frozen {t.FrozenTime?.TotalMilliseconds:0} ms {t.Error}");
        }

        Assert.That(result.Outcome, Is.EqualTo(UpdateOutcome.Succeeded), result.Error);
        Assert.Multiple(() =>
        {
            Assert.That(retries, Has.Count.EqualTo(1).And.Some.Contains("criu could not seize process").And.Some.Contains("attempt 2 of 3"));
            Assert.That(retries[0], Does.StartWith($"pid:{heldRoot}"), "only the held target was asked again");
            // The held target's frozen time counts its last attempt, not the pause before it.
            Assert.That(result.Targets[1].FrozenTime, Is.LessThan(TimeSpan.FromSeconds(3)));
            // The first target was frozen through the other's retry: the set is one moment of both.
            Assert.That(result.Targets[0].FrozenTime, Is.GreaterThan(TimeSpan.FromSeconds(3)));
        });
        foreach (var w in new[] { first, held })
        {
            var before = w.ReadCounter();
            Workload.WaitFor(() => w.ReadCounter() > before + 2 ? 1 : 0, $"the restored {Path.GetFileName(w.Directory)} workload to count on");
        }
    }

    [TestCase(0)]
    [TestCase(2)]
    public async Task A_tree_held_for_good_fails_after_every_attempt_and_runs_on_untouched(int retries)
    {
        var held = Start("held");
        var pid = held.RootPid;
        using var tracer = new Tracer(pid);
        var asked = 0;
        var progress = new Progress(p => asked += p.Message?.Contains("asking again", StringComparison.Ordinal) == true ? 1 : 0);

        var result = await Rehearsal(new DumpStageOptions { SeizeRetries = retries, SeizeRetryDelay = TimeSpan.FromMilliseconds(200) })
            .ExecuteAsync(Context(progress, held));

        TestContext.Out.WriteLine($"{result.Outcome}: {result.Error}");
        Assert.Multiple(() =>
        {
            Assert.That(result.Outcome, Is.Not.EqualTo(UpdateOutcome.Succeeded));
            Assert.That(result.Targets[0].Phase, Is.EqualTo(TargetPhase.Resumed), "rolled back: running where it was");
            Assert.That(result.Targets[0].Error, Does.Contain("criu could not seize process").And.Contain("another tracer"));
            Assert.That(asked, Is.EqualTo(retries));
            Assert.That(held.RootPid, Is.EqualTo(pid), "nothing was restored: the tree ran on");
        });
        tracer.Release();
        var before = held.ReadCounter();
        Workload.WaitFor(() => held.ReadCounter() > before + 2 ? 1 : 0, "the untouched workload to count on once released");
    }

    /// <summary>
    /// A rehearsal without PreDump: where memory tracking works, the held tree's pre-dump would be refused (the tracer is
    /// there already) and that target dumped first, and the test is about the order it sets.
    /// </summary>
    private static UpdatePipeline Rehearsal(DumpStageOptions dump) =>
        new UpdatePipelineBuilder(UpdateMode.Rehearse).AddPreflight().AddPlan().AddDump(dump).AddSeal().AddVerify().AddCommit().AddRestore().AddReport()
            .AddCleanup().Build();

    private Workload Start(string name) => _workloads.Start(Path.Combine(_dir, name));

    private UpdateContext Context(IProgress<UpdateProgress> progress, params Workload[] workloads) =>
        new(UpdateMode.Rehearse, workloads.Select(w => UpdateTarget.ProcessTree(w.RootPid)))
        {
            Store = new DirectoryImageStore(new DirectoryImageStoreOptions { RootDirectory = Path.Combine(_dir, "store") }),
            Criu = new CriuClient(new CriuClientOptions { CriuPath = _testbed.Criu }),
            Progress = progress,
        };


    /// <summary>Reports at once, on the reporting thread (the pipeline's pause must not outrun the test's reaction).</summary>
    private sealed class Progress(Action<UpdateProgress> report) : IProgress<UpdateProgress>
    {
        public void Report(UpdateProgress value) => report(value);
    }

    /// <summary>
    /// Holds a process traced (PTRACE_SEIZE) from a thread of its own, as a debugger would, so nobody else can seize it.
    /// The tracer never waits for it: at its first signal the process stops, and stays stopped until released. Released
    /// when that thread ends: the kernel detaches a dead tracer's tracees and wakes them.
    /// </summary>
    private sealed class Tracer : IDisposable
    {
        private readonly ManualResetEventSlim _release = new();
        private readonly Thread _thread;

        public Tracer(int pid)
        {
            var seized = new TaskCompletionSource<Errno>();
            _thread = new Thread(() =>
            {
                seized.SetResult(Ptrace.TrySeize(pid, out var errno) ? 0 : errno);
                _release.Wait();
            }) { IsBackground = true, Name = $"tracer of {pid}" };
            _thread.Start();
            var errno = seized.Task.Result;
            if (errno != 0)
            {
                throw new InvalidOperationException($"cannot seize {pid}: {errno}");
            }
        }

        public void Release() => _release.Set();

        public void Dispose()
        {
            _release.Set();
            _thread.Join();
            _release.Dispose();
        }
    }
}
