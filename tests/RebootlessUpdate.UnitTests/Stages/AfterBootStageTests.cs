using RebootlessUpdate.Images;
using RebootlessUpdate.Kexec;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;
using RebootlessUpdate.Targets;
using RebootlessUpdate.UnitTests.Images;
using RebootlessUpdate.UnitTests.Kexec;

namespace RebootlessUpdate.UnitTests.Stages;

/// <summary>
/// Verify, Restore, Report and Cleanup of a rehearsal and of a resume, each over a real store, a real journal
/// and a fake kexec system: what each decides for its targets, what it journals, what it deletes.
/// (Restoring itself needs criu: the host tests cover it.)
/// </summary>
public class AfterBootStageTests
{
    private const string A = "pid:101";
    private const string B = "pid:202";
    private StoreFixture _f = null!;
    private FakeKexecSystem _kexec = null!;
    private CheckpointSet _set = null!;

    [SetUp]
    public async Task SetUp()
    {
        _f = new StoreFixture();
        _kexec = new FakeKexecSystem().WithKexec(loaded: true);
        _set = _f.Store.CreateSet([A, B]);
        foreach (var folder in new[] { "00-pid-101", "01-pid-202" })
        {
            var dir = Directory.CreateDirectory(Path.Combine(_set.ImagesDirectory, folder)).FullName;
            File.WriteAllBytes(Path.Combine(dir, "pages-1.img"), Enumerable.Range(0, 64 * 1024).Select(i => (byte)i).ToArray());
            File.WriteAllText(Path.Combine(dir, "core-1.img"), "core of " + folder);
        }

        await _f.Store.SealAsync(_set, new SealOptions { CriuVersion = "4.1.1", KernelRelease = "6.12.117+deb13-amd64" });
    }

    [TearDown]
    public void TearDown()
    {
        _kexec.Dispose();
        _f.Dispose();
    }

    /// <summary>A run of <paramref name="mode"/> on the set, its journal listing A and B in the given phases.</summary>
    private UpdateContext Context(UpdateMode mode, TargetPhase a, TargetPhase b, bool sameBoot = false)
    {
        var targets = new[] { Journaled(A, "00-pid-101", a), Journaled(B, "01-pid-202", b) };
        var context = new UpdateContext(mode, []) { Store = _f.Store, TimeProvider = _f.Clock };
        context.StoreLock = _f.Store.AcquireLock();
        context.Journal = UpdateJournal.Create(_f.StoreRoot, _set.Id, mode, targets, context.StoreLock, _f.Clock);
        context.SetId = _set.Id;
        context.Recovery = sameBoot ? RecoveryKind.Rollback : RecoveryKind.Resume;
        context.Targets = [.. targets.Select(t => LocateStage.Load(t, _set.ImagesDirectory))];
        return context;
    }

    private static JournalTarget Journaled(string id, string folder, TargetPhase phase) =>
        new() { Id = id, Folder = folder, Settings = new TargetCriuSettings(), Phase = phase, RootPid = 1, RestoredPid = phase == TargetPhase.Restored ? 2 : null };

    private static TargetRun Target(UpdateContext context, string id) => context.Targets.Single(t => t.Target.Id == id);

    private JournalRecord Reread(UpdateContext context) =>
        UpdateJournal.Open(_f.StoreRoot, _set.Id, context.StoreLock!, _f.Clock)!.Record;

    private void Flip(string relative)
    {
        var path = Path.Combine(_set.ImagesDirectory, relative);
        var bytes = File.ReadAllBytes(path);
        bytes[^1] ^= 0x5a;
        File.WriteAllBytes(path, bytes);
    }

    private static async Task<string?> Run(IUpdateStage stage, UpdateContext context)
    {
        await stage.ExecuteAsync(context, CancellationToken.None);
        return context.TakeSkipReason();
    }

    [Test]
    public async Task Resume_verify_refuses_only_the_target_whose_folder_is_damaged_and_journals_it()
    {
        using var context = Disposing(Context(UpdateMode.Resume, TargetPhase.Dumped, TargetPhase.Dumped));
        Flip("01-pid-202/core-1.img");

        await Run(new ResumeVerifyStage(new VerifyStageOptions()), context.Value);

        Assert.That(Target(context.Value, A).Phase, Is.EqualTo(TargetPhase.Dumped), "A's images are intact: it is restored");
        Assert.That(Target(context.Value, B).Phase, Is.EqualTo(TargetPhase.Failed));
        Assert.That(Target(context.Value, B).Error, Does.StartWith("not restored: its images failed verification").And.Contains("01-pid-202/core-1.img"));
        Assert.That(Reread(context.Value).Targets.Single(t => t.Id == B).Phase, Is.EqualTo(TargetPhase.Failed), "durable before anything is restored");
        Assert.That(await Target(context.Value, A).PendingPageVerification!, Has.Property(nameof(VerificationResult.IsValid)).True,
            "A's pages are hashed while they are restored");
    }

    [Test]
    public async Task Resume_verify_defers_a_damaged_page_image_to_the_restore_of_its_target()
    {
        using var context = Disposing(Context(UpdateMode.Resume, TargetPhase.Dumped, TargetPhase.Dumped));
        Flip("00-pid-101/pages-1.img");

        await Run(new ResumeVerifyStage(new VerifyStageOptions()), context.Value);

        Assert.That(context.Value.Targets.Select(t => t.Phase), Is.All.EqualTo(TargetPhase.Dumped), "pages are checked while CRIU loads them");
        var a = await Target(context.Value, A).PendingPageVerification!;
        Assert.That(a.IsValid, Is.False, "A's restore is vetoed at post-restore");
        Assert.That((await Target(context.Value, B).PendingPageVerification!).IsValid, Is.True);
    }

    [Test]
    public async Task Resume_verify_refuses_the_whole_set_for_damage_outside_every_target()
    {
        using var context = Disposing(Context(UpdateMode.Resume, TargetPhase.Dumped, TargetPhase.Dumped));
        File.WriteAllText(Path.Combine(_set.ImagesDirectory, "planted.img"), "from outside");

        Assert.That(async () => await Run(new ResumeVerifyStage(new VerifyStageOptions()), context.Value),
            Throws.TypeOf<CheckpointSetVerificationException>().With.Message.Contains("planted.img"));
        Assert.That(context.Value.Targets.Select(t => t.Phase), Is.All.EqualTo(TargetPhase.Dumped), "nothing is restored: the set as a whole is refused");
    }

    [Test]
    public async Task Resume_verify_has_nothing_to_check_when_no_target_needs_restoring()
    {
        using var context = Disposing(Context(UpdateMode.Resume, TargetPhase.Restored, TargetPhase.Resumed));
        Flip("00-pid-101/core-1.img");

        Assert.That(await Run(new ResumeVerifyStage(new VerifyStageOptions()), context.Value), Is.EqualTo("no target needs restoring"));
        Assert.That(Target(context.Value, A).Phase, Is.EqualTo(TargetPhase.Restored), "a running target is never marked failed for old images");
    }

    [Test]
    public async Task Rehearsal_verify_refuses_the_set_for_damage_in_any_target_before_commit()
    {
        using var context = Disposing(Context(UpdateMode.Rehearse, TargetPhase.Dumped, TargetPhase.Dumped));
        Flip("01-pid-202/pages-1.img");

        Assert.That(async () => await Run(new RehearsalVerifyStage(), context.Value), Throws.TypeOf<CheckpointSetVerificationException>(),
            "the rollback resumes both in place: no target of a rehearsal is given up");
        Assert.That(context.Value.Targets.Select(t => t.Phase), Is.All.EqualTo(TargetPhase.Dumped));
    }

    [Test]
    public async Task Restore_journals_resuming_and_restores_nothing_when_every_target_runs()
    {
        using var context = Disposing(Context(UpdateMode.Resume, TargetPhase.Restored, TargetPhase.Resumed));

        await Run(new ResumeRestoreStage(new RestoreStageOptions()), context.Value);

        Assert.That(Reread(context.Value).State, Is.EqualTo(JournalState.Resuming));
        Assert.That(Reread(context.Value).History[^1].Detail, Is.EqualTo("0 target(s) to restore"));
        await new ResumeRestoreStage(new RestoreStageOptions()).CompensateAsync(context.Value, CancellationToken.None);
        Assert.That(Target(context.Value, A).Phase, Is.EqualTo(TargetPhase.Restored), "a resume's Restore undoes nothing");
    }

    [Test]
    public async Task A_resume_with_nothing_to_do_verifies_restores_reports_and_prunes_nothing()
    {
        using var context = Disposing(Context(UpdateMode.Resume, TargetPhase.Dumped, TargetPhase.Dumped));
        context.Value.Recovery = RecoveryKind.NothingToDo;
        Flip("00-pid-101/core-1.img");
        var resume = RebootlessPipelines.Resume(cleanup: new CleanupStageOptions { KeepJournals = 0, KeepSealedSets = 0 });
        var finished = await _f.SealedSet(); // a finished run's set: what retention would prune
        UpdateJournal.Create(_f.StoreRoot, finished.Id, UpdateMode.Update, [Journaled(A, "00-pid-101", TargetPhase.Restored)], context.Value.StoreLock!, _f.Clock)
            .Transition(JournalState.Resumed);

        foreach (var step in new[] { "Verify", "Restore", "Report" })
        {
            Assert.That(await Run(resume.Stage(step), context.Value), Is.EqualTo("nothing to resume"), step);
        }

        Assert.That(await Run(resume.Stage("Cleanup"), context.Value), Is.Null);
        Assert.That(Reread(context.Value).State, Is.EqualTo(JournalState.Planned), "nothing was journaled");
        Assert.That(context.Value.Targets.Select(t => t.Phase), Is.All.EqualTo(TargetPhase.Dumped), "nothing was verified or refused");
        Assert.That(_kexec.Loaded, Is.True, "nothing was unloaded");
        Assert.That(Directory.Exists(finished.Directory), Is.True, "nothing was pruned");

        context.Value.Recovery = RecoveryKind.Resume;
        await Run(resume.Stage("Cleanup"), context.Value);
        Assert.That(Directory.Exists(finished.Directory), Is.False, "a resume's Cleanup prunes it");
    }

    [TestCase("Resume", "Verify", typeof(ResumeVerifyStage))]
    [TestCase("Rollback", "Verify", typeof(RollbackVerifyStage))]
    [TestCase("NothingToDo", "Verify", null)]
    [TestCase("Resume", "Restore", typeof(ResumeRestoreStage))]
    [TestCase("Rollback", "Restore", typeof(RollbackRestoreStage))]
    [TestCase("NothingToDo", "Restore", null)]
    [TestCase("Resume", "Report", typeof(ReportStage))]
    [TestCase("Rollback", "Report", typeof(RollbackReportStage))]
    [TestCase("NothingToDo", "Report", null)]
    [TestCase("Resume", "Cleanup", typeof(ResumeCleanupStage))]
    [TestCase("Rollback", "Cleanup", typeof(RollbackCleanupStage))]
    [TestCase("NothingToDo", "Cleanup", typeof(NothingToResumeCleanupStage))]
    public void Each_step_after_boot_is_done_by_the_stage_of_the_kind_of_run_locate_decided_on(string kind, string step, Type? expected)
    {
        var stage = (RecoveryStep)RebootlessPipelines.Resume().Stage(step);

        Assert.That(stage.For(Enum.Parse<RecoveryKind>(kind))?.GetType(), Is.EqualTo(expected));
    }

    [Test]
    public async Task Rollback_verify_restores_a_set_that_never_began_sealing_without_verifying_it_and_resume_verify_refuses_it()
    {
        var unsealed = _f.Store.CreateSet([A]);
        File.WriteAllText(Path.Combine(Directory.CreateDirectory(Path.Combine(unsealed.ImagesDirectory, "00-pid-101")).FullName, "core-1.img"), "core");
        foreach (var kind in new[] { RecoveryKind.Rollback, RecoveryKind.Resume })
        {
            var targets = new[] { Journaled(A, "00-pid-101", TargetPhase.Dumped) };
            using var context = Disposing(new UpdateContext(UpdateMode.Resume, []) { Store = _f.Store, TimeProvider = _f.Clock, Recovery = kind });
            context.Value.StoreLock = _f.Store.AcquireLock();
            context.Value.Journal = UpdateJournal.Create(_f.StoreRoot, unsealed.Id, UpdateMode.Update, targets, context.Value.StoreLock, _f.Clock);
            context.Value.SetId = unsealed.Id;
            context.Value.Targets = [.. targets.Select(t => LocateStage.Load(t, unsealed.ImagesDirectory))];
            var verify = RebootlessPipelines.Resume().Stage("Verify");

            if (kind == RecoveryKind.Rollback)
            {
                Assert.That(await Run(verify, context.Value), Does.StartWith("the set was never sealed"), "this boot's own images, CRIU checks them");
            }
            else
            {
                Assert.That(async () => await Run(verify, context.Value), Throws.TypeOf<CheckpointSetVerificationException>(),
                    "after a jump, a set that was never sealed is never restored from");
            }
        }
    }

    [Test]
    public async Task Report_journals_resumed_with_the_longest_downtime_when_every_target_runs([Values] bool rehearsal)
    {
        using var context = Disposing(Context(rehearsal ? UpdateMode.Rehearse : UpdateMode.Resume, TargetPhase.Restored, TargetPhase.Restored));
        Target(context.Value, A).MarkRestored(2, null, TimeSpan.FromMilliseconds(40), 0, _f.Clock.Now, TimeSpan.FromMilliseconds(120));
        Target(context.Value, B).MarkRestored(3, null, TimeSpan.FromMilliseconds(90), 0, _f.Clock.Now, TimeSpan.FromMilliseconds(250));

        await Run(new ReportStage(), context.Value);

        var record = Reread(context.Value);
        Assert.That(record.State, Is.EqualTo(JournalState.Resumed));
        Assert.That(record.History[^1].Detail, Is.EqualTo("longest downtime 250 ms"));
        Assert.That(_kexec.KexecFileLoadCalls, Is.Empty, "after the jump there is no loaded kernel to give up");
    }

    [Test]
    public async Task Report_fails_naming_every_target_not_running_and_leaves_the_journal_unfinished([Values] bool rehearsal)
    {
        using var context = Disposing(Context(rehearsal ? UpdateMode.Rehearse : UpdateMode.Resume, TargetPhase.Restored, TargetPhase.Failed));
        Target(context.Value, B).RestoreFailed("restore failed: criu said no");

        Assert.That(async () => await Run(new ReportStage(), context.Value),
            Throws.InvalidOperationException.With.Message.EqualTo("1 of 2 target(s) not restored: pid:202: restore failed: criu said no"));
        Assert.That(Reread(context.Value).State, Is.EqualTo(JournalState.Planned), "a later resume retries B");
    }

    [Test]
    public async Task Report_after_a_crash_before_the_jump_unloads_the_kernel_and_journals_the_rollback()
    {
        using var context = Disposing(Context(UpdateMode.Resume, TargetPhase.Resumed, TargetPhase.Restored, sameBoot: true));

        await Run(new RollbackReportStage(Loader()), context.Value);

        Assert.That(_kexec.Loaded, Is.False, "a later `systemctl kexec` must not jump into the abandoned kernel");
        Assert.That(_kexec.KexecFileLoadCalls.Single().Flags & 1, Is.EqualTo(1UL), "KEXEC_FILE_UNLOAD");
        Assert.That(Reread(context.Value).State, Is.EqualTo(JournalState.RolledBack));
    }

    [Test]
    public async Task Report_after_a_crash_before_the_jump_unloads_the_kernel_even_when_a_target_is_not_back()
    {
        using var context = Disposing(Context(UpdateMode.Resume, TargetPhase.Resumed, TargetPhase.Failed, sameBoot: true));

        Assert.That(async () => await Run(new RollbackReportStage(Loader()), context.Value), Throws.InvalidOperationException.With.Message.Contains(B));
        Assert.That(_kexec.Loaded, Is.False);
        Assert.That(Reread(context.Value).State, Is.Not.EqualTo(JournalState.RolledBack));
    }

    [TestCase(true, TargetPhase.Restored, false, TestName = "Rollback cleanup deletes the set of a recovered crash before the jump")]
    [TestCase(true, TargetPhase.Failed, true, TestName = "Rollback cleanup keeps the set while a target of the crash is not back")]
    [TestCase(false, TargetPhase.Restored, true, TestName = "Resume cleanup keeps the set after the jump")]
    public async Task Resume_cleanup(bool sameBoot, TargetPhase b, bool kept)
    {
        using var context = Disposing(Context(UpdateMode.Resume, TargetPhase.Resumed, b, sameBoot));

        await Run(sameBoot ? new RollbackCleanupStage(new CleanupStageOptions()) : new ResumeCleanupStage(new CleanupStageOptions()), context.Value);

        Assert.That(Directory.Exists(_set.Directory), Is.EqualTo(kept));
    }

    [TestCase(true, false)]
    [TestCase(false, true)]
    public async Task Rehearsal_cleanup_deletes_its_set_unless_kept(bool delete, bool kept)
    {
        using var context = Disposing(Context(UpdateMode.Rehearse, TargetPhase.Restored, TargetPhase.Restored));

        await Run(new RehearsalCleanupStage(new CleanupStageOptions { DeleteRehearsalSet = delete }), context.Value);

        Assert.That(Directory.Exists(_set.Directory), Is.EqualTo(kept));
    }

    [Test]
    public async Task Cleanup_never_fails_the_run_it_comes_after()
    {
        using var context = Disposing(new UpdateContext(UpdateMode.Resume, []));

        Assert.That(await Run(new ResumeCleanupStage(new CleanupStageOptions()), context.Value), Does.StartWith("cleanup did not finish"),
            "no store: said, not thrown");
    }

    private KexecLoader Loader() => new(new KexecLoaderOptions(), _kexec);

    /// <summary>Releases the context's store lock at the end of a test.</summary>
    private static Releasing Disposing(UpdateContext context) => new(context);

    private readonly struct Releasing(UpdateContext context) : IDisposable
    {
        public UpdateContext Value => context;

        public void Dispose() => context.ReleaseLock();
    }
}
