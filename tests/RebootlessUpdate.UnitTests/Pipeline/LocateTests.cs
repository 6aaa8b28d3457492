using RebootlessUpdate.Images;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;
using RebootlessUpdate.Targets;
using RebootlessUpdate.UnitTests.Images;

namespace RebootlessUpdate.UnitTests.Pipeline;

/// <summary>The top of the Locate stage: which set, under which lock, and when it refuses (changing nothing).</summary>
public class LocateTests
{
    private StoreFixture _fixture = null!;
    private string _cmdline = null!;

    [SetUp]
    public void SetUp()
    {
        _fixture = new StoreFixture();
        _cmdline = Path.Combine(_fixture.Dir, "cmdline");
        File.WriteAllText(_cmdline, "root=/dev/vda quiet\n");
    }

    [TearDown]
    public void TearDown() => _fixture.Dispose();

    private string Root => _fixture.Store.RootDirectory;

    /// <summary>A journal of a dumped target whose process is long gone, left in <paramref name="state"/>; returns its set id.</summary>
    private string Journal(JournalState state, string setId = "20260101T000000Z-0000abcd")
    {
        using var held = _fixture.Store.AcquireLock();
        var journal = UpdateJournal.Create(Root, setId, UpdateMode.Update,
            [new JournalTarget { Id = "pid:999999", Folder = "00-pid-999999", Settings = new TargetCriuSettings(), Phase = TargetPhase.Dumped }], held, TimeProvider.System);
        if (state != JournalState.Planned)
        {
            journal.Transition(state, "test");
        }

        return setId;
    }

    private async Task<(UpdateResult Result, UpdateContext Context)> Locate(string? setId = null)
    {
        var context = new UpdateContext(UpdateMode.Resume, []) { Store = _fixture.Store };
        var pipeline = new UpdatePipelineBuilder(UpdateMode.Resume).AddLocate(new LocateStageOptions { SetId = setId, CommandLinePath = _cmdline, CriuReleaseWait = TimeSpan.Zero }).AddCleanup().Build();
        return (await pipeline.ExecuteAsync(context), context);
    }

    private byte[] Bytes(string setId) => File.ReadAllBytes(Path.Combine(UpdateJournal.DirectoryOf(Root), setId + ".json"));

    [Test]
    public async Task A_resume_refused_by_the_lock_changes_nothing_and_a_later_one_goes_on()
    {
        var id = Journal(JournalState.Jumping);
        var before = Bytes(id);
        using (_fixture.Open().AcquireLock())
        {
            var (refused, context) = await Locate();

            Assert.That(refused.Exception, Is.TypeOf<ImageStoreLockedException>());
            Assert.That(refused.Error, Does.Contain($"pid {Environment.ProcessId}"), "names the holder");
            Assert.That(context.Journal, Is.Null, "no journal was opened without the lock");
            Assert.That(Bytes(id), Is.EqualTo(before), "the journal is byte-identical");
        }

        var (result, after) = await Locate();
        Assert.That(result.Exception, Is.Null, result.Error);
        Assert.That(after.SetId, Is.EqualTo(id));
        Assert.That(after.Targets.Single().Phase, Is.EqualTo(TargetPhase.Dumped), "the next resume restores it");
    }

    [Test]
    public async Task A_failed_journal_is_not_resumed_blindly_it_names_the_set_and_the_commands()
    {
        var id = Journal(JournalState.Failed);
        var before = Bytes(id);

        var (result, context) = await Locate();

        Assert.That(result.Exception, Is.TypeOf<JournalException>().With.Property(nameof(JournalException.Problem)).EqualTo(JournalProblem.NeedsAttention));
        Assert.That(result.Error, Does.Contain($"rebootless resume --set {id}").And.Contain($"rebootless images rm --force {id}"));
        Assert.That(context.NothingToDo, Is.False);
        Assert.That(Bytes(id), Is.EqualTo(before));
    }

    [Test]
    public async Task A_failed_journal_named_on_the_kernel_command_line_is_not_resumed_blindly_either()
    {
        var id = Journal(JournalState.Failed);
        File.WriteAllText(_cmdline, $"root=/dev/vda {RebootlessInfo.ResumeParameter}={id}\n");

        var (result, _) = await Locate();

        Assert.That(result.Exception, Is.TypeOf<JournalException>().With.Message.Contain($"rebootless resume --set {id}"));
    }

    [Test]
    public async Task Resume_with_set_retries_a_failed_run_and_restores_only_what_does_not_run()
    {
        var id = Journal(JournalState.Failed);

        var (result, context) = await Locate(id);

        Assert.That(result.Exception, Is.Null, result.Error);
        Assert.That(context.Journal!.State, Is.EqualTo(JournalState.Failed), "Locate decides; the restore records what it does");
        Assert.That(context.Targets.Single().Phase, Is.EqualTo(TargetPhase.Dumped), "its process is gone: restored again");
    }

    [Test]
    public async Task A_truncated_journal_is_not_skipped_it_names_the_set_and_how_to_give_it_up()
    {
        var id = Journal(JournalState.Sealed);
        var path = Path.Combine(UpdateJournal.DirectoryOf(Root), id + ".json");
        File.WriteAllBytes(path, File.ReadAllBytes(path)[..(new Random(7).Next(1, 200))]);

        var (plain, _) = await Locate();
        var (named, _) = await Locate(id);

        foreach (var r in new[] { plain, named })
        {
            Assert.That(r.Exception, Is.TypeOf<JournalException>().With.Property(nameof(JournalException.Problem)).EqualTo(JournalProblem.NeedsAttention));
            Assert.That(r.Error, Does.Contain("cannot be read").And.Contain($"rebootless images rm --force {id}"));
        }
    }

    [TestCase("../../outside/20260101T000000Z-0000abcd")]
    [TestCase("/etc/passwd")]
    [TestCase("20260101T000000Z-0000abcd/../x")]
    public async Task A_set_id_from_the_command_line_marker_or_set_that_is_not_one_is_refused_before_anything_is_read(string bad)
    {
        var outside = Directory.CreateDirectory(Path.Combine(_fixture.Dir, "outside", "journal")).FullName;
        File.WriteAllText(_cmdline, $"root=/dev/vda {RebootlessInfo.ResumeParameter}={bad}\n");

        var (fromMarker, c1) = await Locate();
        var (fromOption, c2) = await Locate(bad);

        foreach (var (r, c) in new[] { (fromMarker, c1), (fromOption, c2) })
        {
            Assert.That(r.Exception, Is.TypeOf<JournalException>().With.Property(nameof(JournalException.Problem)).EqualTo(JournalProblem.BadSetId));
            Assert.That(r.Error, Does.Contain($"'{bad}' is not a checkpoint set id"));
            Assert.That(c.Journal, Is.Null);
        }

        Assert.That(fromMarker.Error, Does.Contain($"{RebootlessInfo.ResumeParameter}="));
        Assert.That(fromOption.Error, Does.StartWith("--set"));
        Assert.That(Directory.Exists(UpdateJournal.DirectoryOf(Root)), Is.False, "nothing was created either");
        Assert.That(Directory.GetFileSystemEntries(outside), Is.Empty);
    }
}

/// <summary>The pipeline keeps the store's lock until the failure is journaled, whatever the compensations do.</summary>
public class PipelineLockTests
{
    [TestCase(UpdateMode.Rehearse, JournalState.RolledBack)]
    [TestCase(UpdateMode.Resume, JournalState.Failed)]
    public async Task A_failure_is_journaled_under_the_lock_which_is_released_only_afterwards(UpdateMode mode, JournalState end)
    {
        using var fixture = new StoreFixture();
        var root = fixture.Store.RootDirectory;
        const string Id = "20260101T000000Z-0000abcd";
        var context = new UpdateContext(mode, []) { Store = fixture.Store };
        var pipeline = new UpdatePipelineBuilder(mode)
            .AddStage("Plan", (c, _) =>
            {
                c.StoreLock = fixture.Store.AcquireLock();
                c.Journal = UpdateJournal.Create(root, Id, mode, [], c.StoreLock, TimeProvider.System);
                return ValueTask.CompletedTask;
            })
            .AddCleanup()
            .AddStage("Boom", (_, _) => throw new InvalidOperationException("boom"))
            .Build();

        var result = await pipeline.ExecuteAsync(context);

        Assert.That(result.Stages.Where(s => s.Status == StageStatus.CompensationFailed), Is.Empty, "the journal write was not refused");
        Assert.That(UpdateJournal.List(root).Single().State, Is.EqualTo(end), "a resume rolls nothing back: it stays unfinished");
        Assert.That(context.Journal!.IsWritable, Is.False, "released at the end");
        using var again = fixture.Store.AcquireLock();
    }
}
