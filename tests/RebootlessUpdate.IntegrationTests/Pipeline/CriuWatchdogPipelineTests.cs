using Mono.Unix.Native;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Images;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;
using RebootlessUpdate.Targets;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Pipeline;

/// <summary>The pipeline's rollback when criu stops responding while it holds a target and no watchdog would end it.</summary>
[NonParallelizable]
public class CriuWatchdogPipelineTests
{
    private Testbed _testbed = null!;
    private string _dir = null!;

    [SetUp]
    public void SetUp()
    {
        _testbed = Testbed.Require();
        Testbed.RequireRoot();
        _dir = Directory.CreateTempSubdirectory("rebootless-watchdog-pipeline-").FullName;
    }

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    [Test]
    public async Task A_rollback_whose_veto_a_stopped_criu_never_acts_on_kills_criu_and_the_workload_runs_on()
    {
        // No watchdog (Timeout.InfiniteTimeSpan): only the rollback's own bound (2 minutes for criu to act on
        // the veto) can release the tree. Without it the target was reported resumed while still seized.
        using var w = Workload.Start(Path.Combine(_dir, "w"));
        var root = w.RootPid;
        var worker = 0;
        var context = new UpdateContext(UpdateMode.Rehearse, [UpdateTarget.ProcessTree(root)])
        {
            Store = new DirectoryImageStore(new DirectoryImageStoreOptions { RootDirectory = Path.Combine(_dir, "store") }),
            Criu = new CriuClient(new CriuClientOptions { CriuPath = _testbed.Criu, RequestTimeout = Timeout.InfiniteTimeSpan }),
        };
        var dump = new DumpStageOptions
        {
            OnCriuNotification = (n, _) =>
            {
                if (n.Script == "post-dump")
                {
                    worker = Workload.TracerOf(root);
                    Assert.That(worker, Is.Not.Zero, "criu holds the tree at post-dump");
                    Assert.That(Syscall.kill(worker, Signum.SIGSTOP), Is.Zero);
                }

                return ValueTask.CompletedTask;
            },
        };
        var pipeline = new UpdatePipelineBuilder(UpdateMode.Rehearse).AddPreflight().AddPlan().AddDump(dump)
            .AddStage("health-gate", (_, _) => throw new InvalidOperationException("platform said no")).Build();

        try
        {
            var result = await pipeline.ExecuteAsync(context).WaitAsync(TimeSpan.FromMinutes(5));

            TestContext.Out.WriteLine($"{result.Outcome} at {result.FailedStage}: {result.Error}; {result.Targets[0].Phase} {result.Targets[0].Error}");
            Assert.Multiple(() =>
            {
                Assert.That(result.Outcome, Is.EqualTo(UpdateOutcome.RolledBack));
                Assert.That(result.Targets[0].Phase, Is.EqualTo(TargetPhase.Resumed));
                Assert.That(Directory.Exists($"/proc/{worker}"), Is.False, "the rollback killed criu");
            });
            Workload.WaitFor(() => Workload.IsFree(root) ? 1 : 0, "the workload to be untraced and running");
            var before = w.ReadCounter();
            Workload.WaitFor(() => w.ReadCounter() > before + 3 ? 1 : 0, "the workload to count on");
        }
        finally
        {
            if (worker > 0 && Directory.Exists($"/proc/{worker}"))
            {
                Syscall.kill(worker, Signum.SIGKILL); // ours: started by this test's client
            }
        }
    }
}
