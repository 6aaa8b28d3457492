using RebootlessUpdate.Images;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;
using RebootlessUpdate.Targets;
using RebootlessUpdate.UnitTests.Images;

namespace RebootlessUpdate.UnitTests.Stages;

/// <summary>
/// What Locate and the rollback of a dump decide from the host's processes, over a scripted process table and
/// cgroup freezer: the decisions alone, without a process of their own (the same decisions over real processes are
/// in LocateDecisionTests and the host tier).
/// </summary>
public class ProcessTableDecisionTests
{
    private const string Cgroup = "/sys/fs/cgroup/freezer/workload";
    private StoreFixture _f = null!;
    private FakeProcessTable _processes = null!;
    private FakeCgroupFreezer _freezer = null!;

    [SetUp]
    public void SetUp()
    {
        _f = new StoreFixture();
        _processes = new FakeProcessTable();
        _freezer = new FakeCgroupFreezer();
    }

    [TearDown]
    public void TearDown() => _f.Dispose();

    private string Images => Directory.CreateDirectory(Path.Combine(_f.Dir, "images")).FullName;

    private UpdateContext Context(RecoveryKind kind = RecoveryKind.Resume) =>
        new(UpdateMode.Resume, []) { Processes = _processes, Freezer = _freezer, Recovery = kind, TimeProvider = TimeProvider.System };

    private static JournalTarget Journaled(TargetPhase phase, ProcessIdentity? original = null, ProcessIdentity? restored = null, string? cgroup = null) => new()
    {
        Id = "pid:500",
        Folder = "00-pid-500",
        Settings = new TargetCriuSettings { FreezeCgroup = cgroup },
        Phase = phase,
        RootPid = original?.Pid ?? 500,
        RootStartTime = original?.StartTime ?? 0,
        RestoredPid = restored?.Pid,
        RestoredStartTime = restored?.StartTime,
    };

    private async Task<TargetRun> DecideAsync(JournalTarget jt, RecoveryKind kind = RecoveryKind.Resume, double waitSeconds = 5)
    {
        var run = LocateStage.Load(jt, Images);
        var locate = new LocateStage(new LocateStageOptions { InterruptedRestoreWait = TimeSpan.FromSeconds(waitSeconds) });
        await locate.DecideAsync(Context(kind), run, jt, CancellationToken.None);
        return run;
    }

    [Test]
    public async Task A_rollback_finds_the_original_running_and_leaves_it_in_place()
    {
        var original = _processes.Start(500, startTime: 7000);

        var run = await DecideAsync(Journaled(TargetPhase.Frozen, original), RecoveryKind.Rollback);

        Assert.That(run.Phase, Is.EqualTo(TargetPhase.Resumed));
    }

    [Test]
    public async Task A_rollback_whose_original_pid_now_belongs_to_another_process_restores_it_once()
    {
        var original = new ProcessIdentity(500, 7000);
        _processes.Start(500, startTime: 9000); // the pid was reused after the original ended

        var run = await DecideAsync(Journaled(TargetPhase.Dumped, original), RecoveryKind.Rollback);

        Assert.That(run.Phase, Is.EqualTo(TargetPhase.Dumped), "restored from its images, not taken for the stranger");
    }

    [Test]
    public async Task After_the_jump_a_process_that_matches_the_original_is_never_taken_for_it()
    {
        var original = _processes.Start(500, startTime: 7000); // the same pid and start time on the new kernel, by chance

        var run = await DecideAsync(Journaled(TargetPhase.Dumped, original), RecoveryKind.Resume);

        Assert.That(run.Phase, Is.EqualTo(TargetPhase.Dumped), "nothing of the old kernel runs after the jump");
    }

    [Test]
    public async Task A_restored_target_whose_tree_runs_is_adopted_and_one_whose_tree_is_gone_is_ended()
    {
        var restored = _processes.Start(600, startTime: 8000);

        var running = await DecideAsync(Journaled(TargetPhase.Restored, restored: restored));
        _processes.Exit(600);
        var gone = await DecideAsync(Journaled(TargetPhase.Restored, restored: restored));

        Assert.That(running.Phase, Is.EqualTo(TargetPhase.Restored));
        Assert.That(gone.Phase, Is.EqualTo(TargetPhase.Ended));
        Assert.That(gone.Error, Does.Contain("restored as pid 600 and has exited since"));
    }

    [Test]
    public async Task An_interrupted_restore_is_judged_only_once_criu_let_go_of_the_restored_root()
    {
        var restored = _processes.Start(600, startTime: 8000);
        _processes.TraceFor(restored, looks: 3); // CRIU still holds the tree at post-restore

        var run = await DecideAsync(Journaled(TargetPhase.Restoring, restored: restored));

        Assert.That(run.Phase, Is.EqualTo(TargetPhase.Restored), "adopted as the one copy");
        Assert.That(run.RestoredPid, Is.EqualTo(600));
        Assert.That(_processes.IsTraced(restored), Is.False, "every traced look was used up before the judgement");
    }

    [Test]
    public async Task An_interrupted_restore_whose_images_stay_held_is_neither_adopted_nor_restored()
    {
        var jt = Journaled(TargetPhase.Restoring);
        _processes.Holders[Path.Combine(Images, jt.Folder)] = [4242];

        var run = await DecideAsync(jt, waitSeconds: 0.3);

        Assert.That(run.Phase, Is.EqualTo(TargetPhase.Restoring), "never asked for a second time");
        Assert.That(run.Error, Does.Contain("process(es) 4242 hold its images"));
    }

    [Test]
    public async Task An_interrupted_restore_whose_root_is_gone_and_whose_images_are_free_is_restored_once()
    {
        var run = await DecideAsync(Journaled(TargetPhase.Restoring, restored: new ProcessIdentity(600, 8000)));

        Assert.That(run.Phase, Is.EqualTo(TargetPhase.Dumped));
        Assert.That(run.RestoredPid, Is.Null, "the old pid is forgotten");
    }

    [Test]
    public async Task A_rollback_waits_until_criu_lets_go_of_the_root_and_thaws_the_cgroup_a_dead_criu_left_frozen()
    {
        var original = _processes.Start(500, startTime: 7000);
        _processes.TraceFor(original, looks: 5);
        const string setId = "20260101T000000Z-0000abcd";
        using (var held = _f.Store.AcquireLock())
        {
            UpdateJournal.Create(_f.StoreRoot, setId, UpdateMode.Update, [Journaled(TargetPhase.Frozen, original, cgroup: Cgroup)], held, _f.Clock);
        }

        var context = new UpdateContext(UpdateMode.Resume, []) { Processes = _processes, Freezer = _freezer, Store = _f.Store };
        try
        {
            await new LocateStage(new LocateStageOptions { SetId = setId, CriuReleaseWait = TimeSpan.FromSeconds(30) })
                .ExecuteAsync(context, CancellationToken.None);
        }
        finally
        {
            context.ReleaseLock();
        }

        Assert.That(context.Recovery, Is.EqualTo(RecoveryKind.Rollback), "the journal was written in this boot");
        Assert.That(_processes.IsTraced(original), Is.False, "Locate looked until CRIU let go");
        Assert.That(_freezer.Thawed, Is.EqualTo(new[] { Cgroup }));
        Assert.That(context.Targets.Single().Phase, Is.EqualTo(TargetPhase.Resumed));
    }

    /// <summary>A target of a run that failed before the jump, as the Dump stage's compensation finds it.</summary>
    private static TargetRun Held(TargetPhase phase, ProcessIdentity? original, string? cgroup = Cgroup)
    {
        var settings = new TargetCriuSettings { FreezeCgroup = cgroup };
        var run = new TargetRun(new JournaledTarget("pid:500", settings), TargetPhase.Planned);
        run.Resolve(new ResolvedTarget(500, 1, settings), settings, "00-pid-500");
        if (original is { } o)
        {
            run.DumpRequested("/nonexistent/00-pid-500", o, false, 0, DateTimeOffset.UnixEpoch, new TargetRun.Pending());
        }

        foreach (var step in phase switch
        {
            TargetPhase.Frozen => new[] { TargetPhase.Frozen },
            TargetPhase.Dumped => [TargetPhase.Frozen, TargetPhase.Dumped],
            _ => [],
        })
        {
            run.MoveTo(step);
        }

        return run;
    }

    [Test]
    public async Task The_rollback_of_a_dump_thaws_the_cgroup_and_leaves_a_target_whose_original_runs_in_place()
    {
        var t = Held(TargetPhase.Frozen, _processes.Start(500, startTime: 7000));

        await TargetRollback.RecoverAsync(Context(), t, releaseWait: null); // no criu: asking it would throw

        Assert.That(t.Phase, Is.EqualTo(TargetPhase.Resumed));
        Assert.That(_freezer.Thawed, Is.EqualTo(new[] { Cgroup }));
    }

    [Test]
    public async Task A_cgroup_that_will_not_thaw_does_not_stop_the_rollback_from_judging_the_target()
    {
        _freezer.Failure = new UnauthorizedAccessException("read-only cgroup");
        var t = Held(TargetPhase.Frozen, _processes.Start(500, startTime: 7000));

        await TargetRollback.RecoverAsync(Context(), t, releaseWait: null);

        Assert.That(t.Phase, Is.EqualTo(TargetPhase.Resumed));
    }

    [Test]
    public async Task A_target_whose_processes_are_gone_without_complete_images_is_failed_not_restored()
    {
        var t = Held(TargetPhase.Dumped, new ProcessIdentity(500, 7000));

        await TargetRollback.RecoverAsync(Context(), t, releaseWait: null);

        Assert.That(t.Phase, Is.EqualTo(TargetPhase.Failed));
        Assert.That(t.Error, Does.Contain("no complete images to restore from"));
    }

    [Test]
    public async Task A_target_that_never_reached_its_dump_is_resumed_without_a_look_at_its_processes()
    {
        var t = Held(TargetPhase.Planned, original: null, cgroup: null);

        await TargetRollback.RecoverAsync(Context(), t, releaseWait: null);

        Assert.That(t.Phase, Is.EqualTo(TargetPhase.Resumed));
        Assert.That(_freezer.Thawed, Is.Empty);
        Assert.That(_processes.Looks, Is.Zero);
    }
}
