using RebootlessUpdate.Criu;
using RebootlessUpdate.Images;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;
using RebootlessUpdate.Targets;
using RebootlessUpdate.UnitTests.Images;

namespace RebootlessUpdate.UnitTests.Stages;

/// <summary>Retention of journals, logs folders and sets over a real store in a temp folder.</summary>
public class StoreRetentionTests
{
    private static readonly RetentionPolicy Policy = new(KeepSealedSets: 2, KeepJournals: 3, GracePeriod: TimeSpan.FromDays(1));
    private StoreFixture _f = null!;

    [SetUp]
    public void SetUp() => _f = new StoreFixture();

    [TearDown]
    public void TearDown() => _f.Dispose();

    private string Root => _f.Store.RootDirectory;

    /// <summary>A run an hour after the previous one: a sealed set, its journal in <paramref name="state"/>, a logs folder with a log.</summary>
    private async Task<string> Run(JournalState state, bool seal = true, TargetPhase phase = TargetPhase.Restored, UpdateMode mode = UpdateMode.Update)
    {
        _f.Clock.Now = _f.Clock.Now.AddHours(1);
        var set = seal ? await _f.SealedSet() : _f.FillSet();
        using (var held = _f.Store.AcquireLock())
        {
            var journal = UpdateJournal.Create(Root, set.Id, mode,
                [new JournalTarget { Id = "pid:4242", Folder = "00-pid-4242", Settings = new TargetCriuSettings() }], held, _f.Clock);
            journal.Transition(state, change: r => r with { Targets = [.. r.Targets.Select(t => t with { Phase = phase })] });
        }

        var work = Directory.CreateDirectory(Path.Combine(UpdateJournal.LogDirectoryOf(Root, set.Id), "00-pid-4242")).FullName;
        await File.WriteAllTextAsync(Path.Combine(work, "restore.log"), "log");
        return set.Id;
    }

    private Task<RetentionResult> Apply(RetentionPolicy? policy = null, IReadOnlyList<RunningLazyPagesDaemon>? daemons = null) =>
        StoreRetention.ApplyAsync(_f.Store, policy ?? Policy, _f.Clock, daemons ?? []);

    private bool HasSet(string id) => _f.Store.ListSets().Any(s => s.SetId == id);

    private bool HasJournal(string id) => File.Exists(Path.Combine(UpdateJournal.DirectoryOf(Root), id + ".json"));

    private bool HasLogs(string id) => Directory.Exists(UpdateJournal.LogDirectoryOf(Root, id));

    [Test]
    public async Task Finished_runs_beyond_the_limits_go_with_their_logs_and_the_newest_are_kept_whole()
    {
        var ids = new List<string>();
        for (var i = 0; i < 6; i++)
        {
            ids.Add(await Run(i % 2 == 0 ? JournalState.Resumed : JournalState.RolledBack));
        }

        var result = await Apply();

        Assert.Multiple(() =>
        {
            // Sets: the newest 2 sealed. Journals: the newest 3; the third's set is gone, its journal stays (within 3).
            Assert.That(ids.Select(HasSet), Is.EqualTo(new[] { false, false, false, false, true, true }));
            Assert.That(ids.Select(HasJournal), Is.EqualTo(new[] { false, false, false, true, true, true }));
            Assert.That(ids.Select(HasLogs), Is.EqualTo(new[] { false, false, false, true, true, true }), "logs go with their journal");
            Assert.That(result.Sets, Is.EquivalentTo(ids.Take(4)));
            Assert.That(result.Journals, Is.EquivalentTo(ids.Take(3)));
            Assert.That(result.LogFolders, Is.EquivalentTo(ids.Take(3)));
        });

        var again = await Apply();
        Assert.That(again.IsEmpty, Is.True, "a second pass finds nothing more to do");
    }

    [Test]
    public async Task A_kept_set_keeps_its_journal_even_beyond_the_journal_limit()
    {
        var old = await Run(JournalState.Resumed);
        var newer = await Run(JournalState.Resumed);

        await Apply(new RetentionPolicy(KeepSealedSets: 5, KeepJournals: 0, GracePeriod: TimeSpan.FromDays(1)));

        Assert.That(new[] { HasSet(old), HasJournal(old), HasSet(newer), HasJournal(newer) }, Is.All.True,
            "a set without its journal would look like nobody's");
    }

    [TestCase(JournalState.Failed, TestName = "A Failed run is never pruned (it needs an operator and its images)")]
    [TestCase(JournalState.Sealed, TestName = "An interrupted update is never pruned")]
    [TestCase(JournalState.Resuming, TestName = "A run interrupted while resuming is never pruned")]
    public async Task Unfinished_runs_are_never_pruned(JournalState state)
    {
        var unfinished = await Run(state, phase: TargetPhase.Dumped);
        for (var i = 0; i < 5; i++)
        {
            await Run(JournalState.Resumed);
        }

        _f.Clock.Now = _f.Clock.Now.AddDays(30);
        await Apply(new RetentionPolicy(KeepSealedSets: 0, KeepJournals: 0, GracePeriod: TimeSpan.Zero));

        Assert.That((HasSet(unfinished), HasJournal(unfinished), HasLogs(unfinished)), Is.EqualTo((true, true, true)));
        Assert.That(UpdateJournal.List(Root).Select(j => j.SetId), Is.EqualTo(new[] { unfinished }), "every finished run went");
    }

    [Test]
    public async Task An_unreadable_journal_and_its_set_are_kept()
    {
        var id = await Run(JournalState.Resumed);
        await File.WriteAllTextAsync(Path.Combine(UpdateJournal.DirectoryOf(Root), id + ".json"), "{ \"format\": \"rebootless-jo");

        _f.Clock.Now = _f.Clock.Now.AddDays(30);
        await Apply(new RetentionPolicy(KeepSealedSets: 0, KeepJournals: 0, GracePeriod: TimeSpan.Zero));

        Assert.That((HasSet(id), HasJournal(id), HasLogs(id)), Is.EqualTo((true, true, true)));
    }

    [Test]
    public async Task Sets_and_logs_folders_without_a_journal_go_only_after_the_grace_period()
    {
        var lonelySet = _f.FillSet().Id; // a crash between creating the set and its journal
        var lonelyLogs = "20261126T063000Z-00c0ffee";
        Directory.CreateDirectory(Path.Combine(UpdateJournal.LogDirectoryOf(Root, lonelyLogs), "00-pid-1"));
        Directory.CreateDirectory(Path.Combine(UpdateJournal.DirectoryOf(Root), "not-a-set.logs")); // not ours to judge

        _f.Clock.Now = _f.Clock.Now.AddHours(23);
        var early = await Apply();
        Assert.That(early.IsEmpty, Is.True, "within the grace period a run may be between creating its set and its journal");

        _f.Clock.Now = _f.Clock.Now.AddHours(2);
        var late = await Apply();
        Assert.Multiple(() =>
        {
            Assert.That(late.Sets, Is.EqualTo(new[] { lonelySet }));
            Assert.That(late.LogFolders, Is.EqualTo(new[] { lonelyLogs }));
            Assert.That(HasSet(lonelySet), Is.False);
            Assert.That(HasLogs(lonelyLogs), Is.False);
            Assert.That(Directory.Exists(Path.Combine(UpdateJournal.DirectoryOf(Root), "not-a-set.logs")), Is.True);
        });
    }

    [Test]
    public async Task A_run_whose_lazy_pages_daemon_still_serves_is_kept_whole()
    {
        var serving = await Run(JournalState.Resumed);
        using (var held = _f.Store.AcquireLock())
        {
            UpdateJournal.Open(Root, serving, held)!.Transition(JournalState.Resumed, change: r => r with
            {
                Targets = [.. r.Targets.Select(t => t with { RestoredPid = Environment.ProcessId, LazyPagesDaemonPid = 777 })],
            });
        }

        for (var i = 0; i < 3; i++)
        {
            await Run(JournalState.Resumed);
        }

        var daemon = new RunningLazyPagesDaemon(777, 1, Path.Combine(UpdateJournal.LogDirectoryOf(Root, serving), "00-pid-4242"), HoldsUserfaultfd: true);
        await Apply(new RetentionPolicy(KeepSealedSets: 0, KeepJournals: 0, GracePeriod: TimeSpan.Zero), [daemon]);

        Assert.That((HasSet(serving), HasJournal(serving), HasLogs(serving)), Is.EqualTo((true, true, true)), "the daemon reads its pages from the set");
    }

    [Test]
    public async Task A_rehearsal_interrupted_in_an_earlier_boot_is_finished_but_a_failed_one_is_not()
    {
        var boot = "this-boot";
        JournalRecord Record(JournalState state, UpdateMode mode, string bootId) => new()
        {
            SetId = "20261126T063200Z-0a1b2c3d", Mode = mode, State = state, BootId = bootId, KernelRelease = "6.12", Targets = [], History = [],
        };

        Assert.Multiple(() =>
        {
            Assert.That(StoreRetention.IsFinished(Record(JournalState.Resumed, UpdateMode.Update, boot), boot), Is.True);
            Assert.That(StoreRetention.IsFinished(Record(JournalState.RolledBack, UpdateMode.Update, boot), boot), Is.True);
            Assert.That(StoreRetention.IsFinished(Record(JournalState.Failed, UpdateMode.Update, boot), boot), Is.False);
            Assert.That(StoreRetention.IsFinished(Record(JournalState.Sealed, UpdateMode.Update, "earlier"), boot), Is.False, "an update resumes after the jump");
            Assert.That(StoreRetention.IsFinished(Record(JournalState.Sealed, UpdateMode.Rehearse, "earlier"), boot), Is.True);
            Assert.That(StoreRetention.IsFinished(Record(JournalState.Sealed, UpdateMode.Rehearse, boot), boot), Is.False);
            Assert.That(StoreRetention.IsFinished(Record(JournalState.Failed, UpdateMode.Rehearse, "earlier"), boot), Is.False);
        });
    }
}

/// <summary>The Cleanup stage applies retention under the store lock, after a resume and after a rehearsal.</summary>
public class CleanupRetentionTests
{
    private StoreFixture _f = null!;

    [SetUp]
    public void SetUp() => _f = new StoreFixture();

    [TearDown]
    public void TearDown() => _f.Dispose();

    private async Task<string> Finished()
    {
        _f.Clock.Now = _f.Clock.Now.AddHours(1);
        var set = await _f.SealedSet();
        using var held = _f.Store.AcquireLock();
        UpdateJournal.Create(_f.Store.RootDirectory, set.Id, UpdateMode.Update,
            [new JournalTarget { Id = "pid:4242", Folder = "00-pid-4242", Settings = new TargetCriuSettings() }], held, _f.Clock).Transition(JournalState.Resumed);
        return set.Id;
    }

    private async Task Cleanup(UpdateMode mode, bool locked = true)
    {
        var context = new UpdateContext(mode, []) { Store = _f.Store, TimeProvider = _f.Clock };
        if (locked)
        {
            context.StoreLock = _f.Store.AcquireLock();
        }

        var options = new CleanupStageOptions { KeepSealedSets = 1, KeepJournals = 1, DeleteRehearsalSet = false };
        CleanupStage stage = mode == UpdateMode.Rehearse ? new RehearsalCleanupStage(options) : new ResumeCleanupStage(options);
        await stage.ExecuteAsync(context, CancellationToken.None);
        Assert.That(context.StoreLock is not null, Is.EqualTo(locked), "Cleanup leaves the lock to the pipeline, which releases it after the last journal record");
        context.ReleaseLock();
    }

    [Test]
    public async Task After_a_resume_old_sets_and_journals_go()
    {
        var ids = new[] { await Finished(), await Finished(), await Finished() };

        await Cleanup(UpdateMode.Resume);

        Assert.That(_f.Store.ListSets().Select(s => s.SetId), Is.EqualTo(new[] { ids[2] }));
        Assert.That(UpdateJournal.List(_f.Store.RootDirectory).Select(j => j.SetId), Is.EqualTo(new[] { ids[2] }));
    }

    [Test]
    public async Task After_a_rehearsal_sealed_sets_stay_with_their_journals_and_without_the_lock_nothing_is_pruned()
    {
        var ids = new[] { await Finished(), await Finished(), await Finished() };

        await Cleanup(UpdateMode.Resume, locked: false);
        Assert.That(UpdateJournal.List(_f.Store.RootDirectory), Has.Count.EqualTo(3), "no pruning without the store lock");

        await Cleanup(UpdateMode.Rehearse);
        Assert.That(_f.Store.ListSets().Select(s => s.SetId), Is.EqualTo(ids), "a rehearsal leaves sealed sets to the operator");
        Assert.That(UpdateJournal.List(_f.Store.RootDirectory), Has.Count.EqualTo(3), "a kept set keeps its journal");
    }
}
