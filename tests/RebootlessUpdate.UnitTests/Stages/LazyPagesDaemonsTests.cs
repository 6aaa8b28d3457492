using RebootlessUpdate.Images;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.UnitTests.Stages;

/// <summary>Whose a lazy-pages daemon is and whether it holds up a checkpoint, judged from its work folder and its set's journal.</summary>
public class LazyPagesDaemonsTests
{
    private const string SetId = "20261130T120000Z-0a1b2c3d";
    private const string Folder = "00-pid-4242";
    private const int DeadPid = 0x3FFFFFF0; // above any pid_max: never a live process
    private string _root = null!;

    [SetUp]
    public void SetUp() => _root = Directory.CreateTempSubdirectory("rebootless-daemons-unit-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(_root, recursive: true);

    private string Work => Path.Combine(UpdateJournal.LogDirectoryOf(_root, SetId), Folder);

    private RunningLazyPagesDaemon Daemon(int pid = 777, bool uffd = false, string? work = null) => new(pid, 12345, work ?? Work, uffd);

    /// <summary>A journal of <see cref="SetId"/> with one target in <see cref="Folder"/>, then moved to <paramref name="state"/> with <paramref name="target"/>'s fields.</summary>
    private void Journal(JournalState state, Func<JournalTarget, JournalTarget> target, UpdateMode mode = UpdateMode.Rehearse)
    {
        using var held = StoreLock.Acquire(Path.Combine(_root, ".lock"));
        var journal = UpdateJournal.Create(_root, SetId, mode,
            [new JournalTarget { Id = "pid:4242", Folder = Folder, Settings = new TargetCriuSettings(), RootPid = 4242 }], held, TimeProvider.System);
        journal.Transition(state, change: r => r with { Targets = [.. r.Targets.Select(target)] });
    }

    [Test]
    public void A_daemon_serving_a_live_restored_target_blocks_a_checkpoint()
    {
        Journal(JournalState.Resumed, t => t with { Phase = TargetPhase.Restored, RestoredPid = Environment.ProcessId, LazyPagesDaemonPid = 777 });

        var v = LazyPagesDaemons.Judge(Daemon(uffd: true));

        Assert.That(v.Role, Is.EqualTo(LazyPagesDaemonRole.Serving));
        Assert.That(v.BlocksCheckpoint, Is.True);
        Assert.That((v.StoreRoot, v.SetId, v.Folder), Is.EqualTo((_root, SetId, Folder)));
        Assert.That(v.Describe(), Does.Contain("pid 777").And.Contain(SetId).And.Contain($"restored lazily as pid {Environment.ProcessId}"));
        Assert.That(v.ServedRoot, Is.EqualTo(Environment.ProcessId));
        Assert.That(v.BlocksCheckpointOf([Environment.ProcessId]), Is.True, "a checkpoint of the tree it serves");
        Assert.That(v.BlocksCheckpointOf([2, Environment.ProcessId]), Is.True, "one of several targets is that tree");
        Assert.That(v.BlocksCheckpointOf([2]), Is.False, "kthreadd's tree shares no process with the one it serves");
    }

    [Test]
    public void A_daemon_whose_restored_tree_is_gone_is_an_orphan()
    {
        Journal(JournalState.Resumed, t => t with { Phase = TargetPhase.Restored, RestoredPid = DeadPid, LazyPagesDaemonPid = 777 });

        var v = LazyPagesDaemons.Judge(Daemon(uffd: true));

        Assert.That(v.Role, Is.EqualTo(LazyPagesDaemonRole.Orphan));
        Assert.That(v.BlocksCheckpoint, Is.False);
        Assert.That(v.Reason, Does.Contain("is gone"));
    }

    [Test]
    public void A_daemon_other_than_the_one_the_journal_names_is_an_orphan_even_when_the_target_runs()
    {
        // E.g. a killed lazy restore's daemon, then a resume restored the target again (fully, or through another daemon).
        Journal(JournalState.RolledBack, t => t with { Phase = TargetPhase.Restored, RestoredPid = Environment.ProcessId, LazyPagesDaemonPid = null });

        var v = LazyPagesDaemons.Judge(Daemon(uffd: true));

        Assert.That(v.Role, Is.EqualTo(LazyPagesDaemonRole.Orphan));
        Assert.That(v.Reason, Does.Contain("restored without it"));
    }

    [TestCase(TargetPhase.Failed, "failed or was refused")]
    [TestCase(TargetPhase.Resumed, "ran on in place")]
    public void A_daemon_of_a_target_that_failed_was_refused_or_rolled_back_in_place_is_an_orphan(TargetPhase phase, string reason)
    {
        Journal(JournalState.Failed, t => t with { Phase = phase });

        var v = LazyPagesDaemons.Judge(Daemon(uffd: true));

        Assert.That(v.Role, Is.EqualTo(LazyPagesDaemonRole.Orphan));
        Assert.That(v.BlocksCheckpoint, Is.False);
        Assert.That(v.Reason, Does.Contain(reason));
    }

    [Test]
    public void A_daemon_of_a_finished_run_that_never_recorded_a_restore_through_it_is_an_orphan()
    {
        Journal(JournalState.RolledBack, t => t with { Phase = TargetPhase.Dumped });

        Assert.That(LazyPagesDaemons.Judge(Daemon(uffd: true)).Role, Is.EqualTo(LazyPagesDaemonRole.Orphan));
    }

    [Test]
    public void In_an_interrupted_run_a_daemon_no_restore_reached_is_an_orphan_and_one_holding_a_tree_is_left_to_resume()
    {
        // The tool was killed between starting the daemon and recording the restore.
        Journal(JournalState.Resuming, t => t with { Phase = TargetPhase.Dumped });

        var waiting = LazyPagesDaemons.Judge(Daemon(uffd: false));
        var holding = LazyPagesDaemons.Judge(Daemon(uffd: true));

        Assert.That(waiting.Role, Is.EqualTo(LazyPagesDaemonRole.Orphan));
        Assert.That(waiting.BlocksCheckpoint, Is.False);
        Assert.That(holding.Role, Is.EqualTo(LazyPagesDaemonRole.Undecided), "CRIU may have finished that restore on its own: the tree may run");
        Assert.That(holding.BlocksCheckpoint, Is.True);
        Assert.That(holding.BlocksCheckpointOf([2]), Is.True, "the tree it holds is unknown: any checkpoint could miss its pages");
        Assert.That(holding.Reason, Does.Contain($"rebootless resume --store {_root}"));
    }

    [Test]
    public void A_daemon_of_a_set_without_a_journal_or_without_that_target_is_an_orphan()
    {
        Assert.That(LazyPagesDaemons.Judge(Daemon(uffd: true)), Has.Property("Role").EqualTo(LazyPagesDaemonRole.Orphan).And.Property("Reason").Contains("no journal"));

        Journal(JournalState.Resumed, t => t with { Phase = TargetPhase.Restored, RestoredPid = Environment.ProcessId, LazyPagesDaemonPid = 777 });
        var other = Path.Combine(UpdateJournal.LogDirectoryOf(_root, SetId), "01-pid-9");
        Assert.That(LazyPagesDaemons.Judge(Daemon(uffd: true, work: other)), Has.Property("Role").EqualTo(LazyPagesDaemonRole.Orphan).And.Property("Reason").Contains("no target"));
    }

    [Test]
    public void A_daemon_whose_journal_cannot_be_read_is_not_judged_an_orphan()
    {
        Directory.CreateDirectory(UpdateJournal.DirectoryOf(_root));
        File.WriteAllText(Path.Combine(UpdateJournal.DirectoryOf(_root), SetId + ".json"), "{ \"format\": \"rebootless-jou");

        var v = LazyPagesDaemons.Judge(Daemon());

        Assert.That(v.Role, Is.EqualTo(LazyPagesDaemonRole.Undecided));
        Assert.That(v.BlocksCheckpoint, Is.True);
        Assert.That(v.Reason, Does.Contain("unreadable"));
    }

    [Test]
    public void A_daemon_outside_any_set_blocks_only_while_it_holds_a_tree()
    {
        var idle = LazyPagesDaemons.Judge(Daemon(uffd: false, work: "/var/tmp/somewhere"));
        var serving = LazyPagesDaemons.Judge(Daemon(uffd: true, work: "/var/tmp/somewhere"));
        var relative = LazyPagesDaemons.Judge(new RunningLazyPagesDaemon(777, 1, WorkDirectory: null, HoldsUserfaultfd: false)); // relative or no -W

        Assert.That((idle.Role, idle.BlocksCheckpoint, idle.SetId), Is.EqualTo((LazyPagesDaemonRole.Foreign, false, (string?)null)));
        Assert.That((serving.Role, serving.BlocksCheckpoint), Is.EqualTo((LazyPagesDaemonRole.Foreign, true)));
        Assert.That(relative.Role, Is.EqualTo(LazyPagesDaemonRole.Foreign));
    }

    [TestCase("/s/journal/20261130T120000Z-0a1b2c3d.logs/00-pid-1", "/s", "20261130T120000Z-0a1b2c3d", "00-pid-1")]
    [TestCase("/s/journal/20261130T120000Z-0a1b2c3d.logs/00-pid-1/", "/s", "20261130T120000Z-0a1b2c3d", "00-pid-1")]
    [TestCase("/s/other/20261130T120000Z-0a1b2c3d.logs/00-pid-1", null, null, null)]
    [TestCase("/s/journal/20261130T120000Z-0a1b2c3d/00-pid-1", null, null, null)]
    [TestCase("/s/journal/.logs/00-pid-1", null, null, null)]
    [TestCase("/journal/x.logs", null, null, null)]
    public void The_owner_is_read_from_the_work_folder_shape(string work, string? root, string? set, string? folder)
    {
        var owner = LazyPagesDaemons.OwnerOf(work);

        Assert.That(owner, root is null ? Is.Null : Is.EqualTo((root, set!, folder!)));
    }

    [Test]
    public async Task Stopping_orphans_touches_no_daemon_it_cannot_find_through_its_pid_file()
    {
        // No pid file in the work folder: nothing to verify the pid against, so nothing is signalled (pid 777 is a stranger).
        Directory.CreateDirectory(Work);

        var stopped = await LazyPagesDaemons.StopOrphansAsync(_root, daemons: [Daemon()]);

        Assert.That(stopped, Is.Empty);
        Assert.That(await LazyPagesDaemons.StopForAsync(Work), Is.Null);
    }

    [Test]
    public async Task A_pid_file_naming_a_process_that_is_not_that_folders_criu_lazy_pages_is_never_acted_on()
    {
        // The pid file names this very test process (alive, not criu): a reused or forged pid must not be killed.
        Directory.CreateDirectory(Work);
        await File.WriteAllTextAsync(Path.Combine(Work, "lazy-pages.pid"), Environment.ProcessId + "\n");

        Assert.That(CriuLazyPagesDaemon.Find(Work), Is.Null);
        Assert.That(await LazyPagesDaemons.StopForAsync(Work), Is.Null);
    }
}
