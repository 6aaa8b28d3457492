using System.Diagnostics;
using RebootlessUpdate.Images;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.UnitTests.Pipeline;

/// <summary>
/// What Locate decides for each journaled target, over real processes (a live `sleep`, one that has exited,
/// one holding the images folder open as a CRIU still restoring would): adopt, restore once, or wait for an operator.
/// </summary>
[NonParallelizable]
public class LocateDecisionTests
{
    private string _images = null!;
    private readonly List<Process> _started = [];

    [SetUp]
    public void SetUp() => _images = Directory.CreateTempSubdirectory("rebootless-locate-").FullName;

    [TearDown]
    public void TearDown()
    {
        foreach (var p in _started.Where(p => !p.HasExited))
        {
            p.Kill();
            p.WaitForExit();
        }

        _started.Clear();
        Directory.Delete(_images, recursive: true);
    }

    private static LocateStage Stage(double waitSeconds = 5) =>
        new(new LocateStageOptions { InterruptedRestoreWait = TimeSpan.FromSeconds(waitSeconds) });

    private async Task<TargetRun> DecideAsync(JournalTarget jt, bool sameBoot = false, double waitSeconds = 5, string? restoreLog = null, Action<string>? inWork = null)
    {
        Directory.CreateDirectory(Path.Combine(_images, jt.Folder));
        var context = new UpdateContext(UpdateMode.Resume, []) { Recovery = sameBoot ? RecoveryKind.Rollback : RecoveryKind.Resume };
        if (restoreLog is not null)
        {
            // A store whose journal logs hold the interrupted attempt's restore log, as RestoreAsync leaves it.
            var store = Directory.CreateDirectory(Path.Combine(_images, "store")).FullName;
            context = new UpdateContext(UpdateMode.Resume, [])
            {
                Recovery = sameBoot ? RecoveryKind.Rollback : RecoveryKind.Resume,
                Store = new DirectoryImageStore(new DirectoryImageStoreOptions { RootDirectory = store }),
                SetId = SetId,
            };
            var work = Directory.CreateDirectory(Path.Combine(UpdateJournal.LogDirectoryOf(store, SetId), jt.Folder)).FullName;
            File.WriteAllText(Path.Combine(work, "restore.log"), restoreLog);
            inWork?.Invoke(work);
        }

        var run = LocateStage.Load(jt, _images);
        await Stage(waitSeconds).DecideAsync(context, run, jt, CancellationToken.None);
        return run;
    }

    private static JournalTarget Target(TargetPhase phase, ProcessIdentity? original = null, ProcessIdentity? restored = null) => new()
    {
        Id = "pid:5",
        Folder = "00-pid-5",
        Settings = new TargetCriuSettings(),
        Phase = phase,
        RootPid = original?.Pid ?? 5,
        RootStartTime = original?.StartTime ?? 0,
        RestoredPid = restored?.Pid,
        RestoredStartTime = restored?.StartTime,
    };

    private ProcessIdentity Running(string command = "sleep 60")
    {
        var p = Process.Start("sh", ["-c", command])!;
        _started.Add(p);
        return ProcessIdentity.Of(p.Id) ?? throw new InvalidOperationException("the helper process ended at once");
    }

    private static ProcessIdentity Exited()
    {
        using var p = Process.Start("true")!;
        var identity = ProcessIdentity.Of(p.Id) ?? new ProcessIdentity(p.Id, 1);
        p.WaitForExit();
        return identity;
    }

    [Test]
    public async Task Restoring_whose_recorded_root_runs_is_adopted_not_restored_again()
    {
        var root = Running();
        var run = await DecideAsync(Target(TargetPhase.Restoring, restored: root));
        Assert.That(run.Phase, Is.EqualTo(TargetPhase.Restored));
        Assert.That(run.RestoredPid, Is.EqualTo(root.Pid));
    }

    [Test]
    public async Task Restoring_with_no_root_recorded_and_nothing_holding_its_images_is_restored_once()
    {
        var run = await DecideAsync(Target(TargetPhase.Restoring));
        Assert.That(run.Phase, Is.EqualTo(TargetPhase.Dumped));
    }

    [Test]
    public async Task Restoring_whose_recorded_root_has_ended_is_restored_once_and_forgets_the_old_pid()
    {
        var run = await DecideAsync(Target(TargetPhase.Restoring, restored: Exited()));
        Assert.That(run.Phase, Is.EqualTo(TargetPhase.Dumped));
        Assert.That(run.RestoredPid, Is.Null);
    }

    private const string SetId = "20261130T000000Z-0000abcd";

    private const string ResumedLog = "(00.101468) Running post-restore scripts\n(00.102849) Running pre-resume scripts\n"
        + "(00.102939) Restore finished successfully. Tasks resumed.\n(00.103149) Running post-resume scripts\n";

    [Test]
    public async Task Restoring_whose_recorded_root_criu_resumed_and_that_has_exited_is_ended_not_restored_again()
    {
        var gone = Exited();
        var run = await DecideAsync(Target(TargetPhase.Restoring, restored: gone), restoreLog: ResumedLog);
        Assert.Multiple(() =>
        {
            Assert.That(run.Phase, Is.EqualTo(TargetPhase.Ended), "it ran after its checkpoint: its images are older than what it did");
            Assert.That(run.RestoredPid, Is.EqualTo(gone.Pid), "the journal keeps which tree it was");
            Assert.That(run.Error, Does.Contain("let it run (its restore log says so)").And.Contain("not restored a second time"));
        });
    }

    [Test]
    public async Task Restoring_whose_recorded_root_criu_killed_at_post_restore_is_restored_once()
    {
        const string Killed = "(00.101468) Running post-restore scripts\n(00.101501) Error (criu/action-scripts.c:134): One of more action scripts failed\n"
            + "(00.101620) Error (criu/cr-restore.c:2310): Restoring FAILED.\n";
        var run = await DecideAsync(Target(TargetPhase.Restoring, restored: Exited()), restoreLog: Killed);
        Assert.That(run.Phase, Is.EqualTo(TargetPhase.Dumped), "never let go by CRIU: nothing of it ever ran");
    }

    [Test]
    public async Task A_restore_log_that_is_a_link_says_nothing()
    {
        var elsewhere = Path.Combine(_images, "elsewhere.log");
        File.WriteAllText(elsewhere, ResumedLog);
        var run = await DecideAsync(Target(TargetPhase.Restoring, restored: Exited()), restoreLog: string.Empty);
        var log = Path.Combine(UpdateJournal.LogDirectoryOf(Path.Combine(_images, "store"), SetId), "00-pid-5", "restore.log");
        File.Delete(log);
        File.CreateSymbolicLink(log, elsewhere);

        Assert.That(InterruptedRestore.CriuResumedTree(Path.GetDirectoryName(log)!), Is.False, "a link is not followed");
        Assert.That(run.Phase, Is.EqualTo(TargetPhase.Dumped), "an empty log says nothing either");
    }

    [Test]
    public async Task Restoring_whose_recorded_pid_was_reused_by_another_process_is_not_adopted()
    {
        var stranger = Running();
        var run = await DecideAsync(Target(TargetPhase.Restoring, restored: stranger with { StartTime = stranger.StartTime + 1 }));
        Assert.That(run.Phase, Is.EqualTo(TargetPhase.Dumped), "a pid with another start time is not the restored tree");
    }

    [Test]
    public async Task Restoring_while_a_process_still_holds_its_images_open_waits_and_then_neither_adopts_nor_restores()
    {
        var folder = Path.Combine(_images, "00-pid-5");
        Directory.CreateDirectory(folder);
        var holder = Running($"exec 3<'{folder}'; sleep 60");
        await Task.Delay(200);
        var sw = Stopwatch.StartNew();
        var run = await DecideAsync(Target(TargetPhase.Restoring), waitSeconds: 1);
        Assert.Multiple(() =>
        {
            Assert.That(run.Phase, Is.EqualTo(TargetPhase.Restoring), "left for a later resume");
            Assert.That(run.Error, Does.Contain(holder.Pid.ToString(System.Globalization.CultureInfo.InvariantCulture)).And.Contain("not restored a second time"));
            Assert.That(sw.Elapsed, Is.GreaterThanOrEqualTo(TimeSpan.FromSeconds(0.9)), "it waited for the holder first");
        });
    }

    [Test]
    public async Task Restoring_while_a_process_holds_its_restore_view_open_waits_and_then_neither_adopts_nor_restores()
    {
        // A lazy restore of a dump on a pre-dump reads the view in the work folder, not the images folder.
        ProcessIdentity? holder = null;
        var run = await DecideAsync(Target(TargetPhase.Restoring), waitSeconds: 1, restoreLog: "(00.000001) Version: 4.1.1\n", inWork: work =>
        {
            var view = Directory.CreateDirectory(Path.Combine(work, TargetRestore.RestoreViewFolder)).FullName;
            holder = Running($"exec 3<'{view}'; sleep 60");
            Thread.Sleep(200);
        });
        Assert.Multiple(() =>
        {
            Assert.That(run.Phase, Is.EqualTo(TargetPhase.Restoring), "left for a later resume");
            Assert.That(run.Error, Does.Contain(holder!.Value.Pid.ToString(System.Globalization.CultureInfo.InvariantCulture)).And.Contain("not restored a second time"));
        });
    }

    [Test]
    public async Task Restoring_is_judged_once_the_holder_of_its_images_lets_go()
    {
        var folder = Path.Combine(_images, "00-pid-5");
        Directory.CreateDirectory(folder);
        Running($"exec 3<'{folder}'; sleep 1");
        await Task.Delay(200);
        var run = await DecideAsync(Target(TargetPhase.Restoring), waitSeconds: 20);
        Assert.That(run.Phase, Is.EqualTo(TargetPhase.Dumped));
    }

    [Test]
    public async Task Restored_whose_tree_runs_is_left_alone()
    {
        var root = Running();
        var run = await DecideAsync(Target(TargetPhase.Restored, restored: root));
        Assert.That(run.Phase, Is.EqualTo(TargetPhase.Restored));
    }

    [Test]
    public async Task Restored_in_a_journal_that_predates_start_times_is_judged_by_its_pid_alone()
    {
        // Journals written before restored roots carried a start time name only the pid.
        var running = await DecideAsync(Target(TargetPhase.Restored, restored: Running()) with { RestoredStartTime = null });
        var gone = await DecideAsync(Target(TargetPhase.Restored, restored: Exited()) with { RestoredStartTime = null });

        Assert.That(running.Phase, Is.EqualTo(TargetPhase.Restored), "its pid runs: left alone");
        Assert.That(gone.Phase, Is.EqualTo(TargetPhase.Ended), "its pid is gone: it ran and exited, never restored again");
    }

    [TestCase(TargetPhase.Restored)]
    [TestCase(TargetPhase.Failed)]
    [TestCase(TargetPhase.Ended)]
    public async Task A_target_whose_restored_tree_has_exited_is_not_restored_a_second_time_even_on_a_retry(TargetPhase journaled)
    {
        // Failed with a restored root: what an older run wrote for such a target; Ended: what the first look at it wrote.
        var run = await DecideAsync(Target(journaled, restored: Exited()) with { Error = "it was restored as pid 9 and has exited since; not restored a second time" });
        Assert.That(run.Phase, Is.EqualTo(TargetPhase.Ended));
        Assert.That(run.Error, Does.Contain("not restored a second time"));
    }

    [Test]
    public async Task Restoring_through_a_symbolic_link_to_the_store_still_sees_a_process_holding_its_images()
    {
        var folder = Path.Combine(_images, "00-pid-5");
        Directory.CreateDirectory(folder);
        var link = _images + "-link";
        File.CreateSymbolicLink(link, _images);
        try
        {
            Running($"exec 3<'{folder}'; sleep 60");
            await Task.Delay(200);
            Assert.That(InterruptedRestore.Holders(Path.Combine(link, "00-pid-5")), Is.Not.Empty, "the descriptor shows the resolved path");
        }
        finally
        {
            File.Delete(link);
        }
    }

    [Test]
    public async Task Same_boot_with_the_original_still_running_resumes_in_place()
    {
        var run = await DecideAsync(Target(TargetPhase.Frozen, original: Running()), sameBoot: true);
        Assert.That(run.Phase, Is.EqualTo(TargetPhase.Resumed));
    }

    [TestCase(TargetPhase.Frozen)]
    [TestCase(TargetPhase.Dumped)]
    [TestCase(TargetPhase.Failed)]
    public async Task A_completed_dump_whose_original_is_gone_is_restored(TargetPhase phase)
    {
        var run = await DecideAsync(Target(phase, original: Exited()), sameBoot: true);
        Assert.That(run.Phase, Is.EqualTo(TargetPhase.Dumped));
    }

    [Test]
    public async Task No_completed_dump_and_the_original_gone_needs_an_operator()
    {
        var run = await DecideAsync(Target(TargetPhase.Planned, original: Exited()), sameBoot: true);
        Assert.That(run.Phase, Is.EqualTo(TargetPhase.Failed));
        Assert.That(run.Error, Does.Contain("no completed dump"));
    }

    [Test]
    public async Task Rolled_back_in_place_and_exited_since_is_not_restored_from_the_older_checkpoint()
    {
        var run = await DecideAsync(Target(TargetPhase.Resumed, original: Exited()), sameBoot: true);
        Assert.That(run.Phase, Is.EqualTo(TargetPhase.Ended));
        Assert.That(run.Error, Does.Contain("not restored from the older checkpoint"));
    }

    [Test]
    public async Task After_the_jump_a_running_pid_of_the_old_kernel_is_not_taken_for_the_original()
    {
        // A new boot: whatever runs under the old root's pid is a stranger; the dump is restored.
        var stranger = Running();
        var run = await DecideAsync(Target(TargetPhase.Dumped, original: stranger), sameBoot: false);
        Assert.That(run.Phase, Is.EqualTo(TargetPhase.Dumped));
    }
}
