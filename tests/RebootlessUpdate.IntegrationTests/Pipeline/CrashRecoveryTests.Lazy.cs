using RebootlessUpdate.Pipeline;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Pipeline;

/// <summary>A lazy restore whose tool died after CRIU let the tree run: resume adopts the tree and its daemon.</summary>
public partial class CrashRecoveryTests
{
    [Test]
    public void A_lazy_restore_whose_tool_died_after_criu_answered_is_adopted_with_its_daemon_and_its_memory_is_whole()
    {
        var store = Directory.CreateDirectory(Path.Combine(_dir, "store")).FullName;
        var appDir = Path.Combine(_dir, "app");
        _workload = Workload.StartProgram(appDir, 64);

        var crashed = Tool("restore-answered", "rehearse", "--pid", Pid(_workload.RootPid), "--lazy-restore", "--store", store, "--criu", _testbed.Criu);
        TestContext.Out.WriteLine($"--- rehearse, killed when criu answered the restore\n{crashed}");
        Assert.That(crashed.ExitCode, Is.EqualTo(137), crashed.ToString());
        var atCrash = UpdateJournal.List(store).Single().Targets.Single();
        Assert.Multiple(() =>
        {
            Assert.That(atCrash.Phase, Is.EqualTo(TargetPhase.Restoring), "the run died before it recorded the restore");
            Assert.That(atCrash.RestoredPid, Is.Not.Null, "the restored root was durable before criu let it run");
            Assert.That(atCrash.LazyPagesDaemonPid, Is.Not.Null, "so was its lazy-pages daemon");
        });

        var resumed = Tool(null, "resume", "--store", store, "--criu", _testbed.Criu);
        TestContext.Out.WriteLine($"--- resume\n{resumed}");
        var after = UpdateJournal.List(store).Single().Targets.Single();
        Assert.Multiple(() =>
        {
            Assert.That(resumed.ExitCode, Is.Zero, resumed.ToString());
            Assert.That(after.Phase, Is.EqualTo(TargetPhase.Restored));
            Assert.That(after.RestoredPid, Is.EqualTo(atCrash.RestoredPid), "the tree criu restored was adopted");
            Assert.That(after.LazyPagesDaemonPid, Is.EqualTo(atCrash.LazyPagesDaemonPid), "with its daemon, not as an orphan");
            Assert.That(Instances(appDir), Is.EqualTo(1), "exactly one copy runs");
        });
        _workload.RootPid = after.RestoredPid!.Value;
        Assert.That(_workload.Check(), Does.StartWith("ok"), "every page reached the adopted tree");
        Workload.WaitFor(() => Workload.IsRunning(after.LazyPagesDaemonPid!.Value) ? 0 : 1, "its daemon to deliver every page and exit", 60);
    }
}
