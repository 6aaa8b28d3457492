using System.Diagnostics;
using Mono.Unix.Native;
using RebootlessUpdate.Images;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.UnitTests.Pipeline;

public class JournalTests
{
    private const string SetId = "20260101T000000Z-0000abcd";
    private string _dir = null!;
    private ImageStoreLock _lock = null!;

    [SetUp]
    public void SetUp()
    {
        _dir = Directory.CreateTempSubdirectory("rebootless-journal-").FullName;
        _lock = StoreLock.Acquire(Path.Combine(_dir, ".lock"));
    }

    [TearDown]
    public void TearDown()
    {
        _lock.Dispose();
        Directory.Delete(_dir, true);
    }

    private static JournalTarget[] OneTarget(string folder = "00-pid-5") =>
        [new JournalTarget { Id = "pid:5", Folder = folder, Settings = new TargetCriuSettings { ShellJob = true } }];

    private UpdateJournal Create(string setId = SetId, UpdateMode mode = UpdateMode.Update) =>
        UpdateJournal.Create(_dir, setId, mode, OneTarget(), _lock, TimeProvider.System);

    private string JournalFile(string setId = SetId) => Path.Combine(UpdateJournal.DirectoryOf(_dir), setId + ".json");

    [Test]
    public void The_journal_is_written_atomically_and_reads_back_with_its_history()
    {
        var journal = Create();
        journal.Transition(JournalState.Dumping);
        journal.Transition(JournalState.Sealed, "3 files");

        var read = UpdateJournal.Open(_dir, SetId)!;

        Assert.That(read.State, Is.EqualTo(JournalState.Sealed));
        Assert.That(read.Record.History.Select(h => h.State), Is.EqualTo(new[] { JournalState.Planned, JournalState.Dumping, JournalState.Sealed }));
        Assert.That(read.Record.Targets[0].Settings.ShellJob, Is.True);
        Assert.That(read.Record.BootId, Is.EqualTo(File.ReadAllText("/proc/sys/kernel/random/boot_id").Trim()));
        Assert.That(Directory.GetFiles(UpdateJournal.DirectoryOf(_dir)).Select(Path.GetFileName), Is.EquivalentTo(new[] { SetId + ".json", SetId + ".json.spare", SetId + ".reserve" }), "no temporary file left: the journal, its spare inode and the space kept aside");
        Assert.That(File.ReadAllText(journal.FilePath), Does.Contain("\"state\": \"Sealed\""));
        Assert.That(UpdateJournal.List(_dir), Has.Count.EqualTo(1));
    }

    [Test]
    public void Every_record_after_the_first_goes_into_the_spare_inode_so_a_store_without_free_inodes_still_takes_it()
    {
        var journal = Create();
        var inodes = Inodes(journal);

        foreach (var state in new[] { JournalState.Dumping, JournalState.Sealed, JournalState.Resuming, JournalState.Resuming })
        {
            journal.Transition(state);
            Assert.That(Inodes(journal), Is.EquivalentTo(inodes), "the journal and its spare swap inodes; none is made or freed");
            Assert.That(UpdateJournal.Open(_dir, SetId)!.State, Is.EqualTo(state));
        }

        Assert.That(File.Exists(journal.FilePath + ".prev"), Is.False);
        journal.Transition(JournalState.RolledBack);
        Assert.That(File.Exists(journal.SparePath), Is.False, "a finished journal keeps no spare");
    }

    private static ulong[] Inodes(UpdateJournal journal) =>
        [.. new[] { journal.FilePath, journal.SparePath }.Select(p => Mono.Unix.Native.Syscall.lstat(p, out var st) == 0 ? st.st_ino : 0)];

    [Test]
    public void The_jump_guard_reads_the_journal()
    {
        var journal = UpdateJournal.Create(_dir, SetId, UpdateMode.Update, [new JournalTarget { Id = "pid:5", Folder = "00-pid-5", Settings = new TargetCriuSettings() }], _lock, TimeProvider.System);
        var guard = new JournalJumpGuard(journal);
        Assert.That(guard.IsCheckpointSealed(out var reason), Is.False);
        Assert.That(reason, Does.Contain("never reached 'sealed'"));

        journal.Transition(JournalState.Sealed, null, r => r with { Targets = [r.Targets[0] with { Phase = TargetPhase.Planned }] });
        Assert.That(guard.IsCheckpointSealed(out reason), Is.False);
        Assert.That(reason, Does.Contain("pid:5 (Planned)"));

        journal.Transition(JournalState.Jumping, null, r => r with { Targets = [r.Targets[0] with { Phase = TargetPhase.Frozen }] });
        Assert.That(guard.IsCheckpointSealed(out reason), Is.False, "held, but its images are not in the manifest");
        Assert.That(reason, Does.Contain("pid:5 (Frozen)"));

        journal.Transition(JournalState.Jumping, null, r => r with { Targets = [r.Targets[0] with { Phase = TargetPhase.Sealed }] });
        Assert.That(guard.IsCheckpointSealed(out _), Is.True);
    }

    [Test]
    public void A_journal_is_written_only_while_the_lock_it_was_opened_under_is_held()
    {
        var journal = Create();
        journal.Transition(JournalState.Dumping);
        var before = File.ReadAllBytes(journal.FilePath);

        var readOnly = UpdateJournal.Open(_dir, SetId)!;
        Assert.That(readOnly.IsWritable, Is.False);
        Assert.That(() => readOnly.Transition(JournalState.RolledBack), Throws.InvalidOperationException.With.Message.Contain("opened for reading only"));

        _lock.Dispose();
        Assert.That(journal.IsWritable, Is.False);
        Assert.That(() => journal.Transition(JournalState.RolledBack), Throws.InvalidOperationException.With.Message.Contain("no longer holds it"));
        Assert.That(File.ReadAllBytes(journal.FilePath), Is.EqualTo(before), "a write refused for the lock changes nothing");
        Assert.That(() => UpdateJournal.Open(_dir, SetId, _lock), Throws.ArgumentException.With.Message.Contain("already released"));

        var other = Directory.CreateTempSubdirectory("rebootless-journal-other-").FullName;
        try
        {
            using var foreign = StoreLock.Acquire(Path.Combine(other, ".lock"));
            Assert.That(() => UpdateJournal.Open(_dir, SetId, foreign), Throws.ArgumentException.With.Message.Contain("is not the lock of the store"));
        }
        finally
        {
            Directory.Delete(other, true);
        }

        _lock = StoreLock.Acquire(Path.Combine(_dir, ".lock"));
        UpdateJournal.Open(_dir, SetId, _lock)!.Transition(JournalState.RolledBack);
        Assert.That(UpdateJournal.List(_dir).Single().State, Is.EqualTo(JournalState.RolledBack));
    }

    [TestCase(JournalState.Planned, true)]
    [TestCase(JournalState.Jumping, true)]
    [TestCase(JournalState.Resuming, true)]
    [TestCase(JournalState.Failed, true)]
    [TestCase(JournalState.Resumed, false)]
    [TestCase(JournalState.RolledBack, false)]
    [TestCase(JournalState.Abandoned, false)]
    public void Every_state_short_of_the_end_is_unfinished_a_failed_one_included(JournalState state, bool unfinished)
    {
        Create().Transition(state);

        Assert.That(UpdateJournal.Unfinished(_dir).Select(j => j.SetId), unfinished ? Is.EqualTo(new[] { SetId }) : Is.Empty);
    }

    [Test]
    public void A_rehearsal_from_an_earlier_boot_is_finished_but_one_of_this_boot_that_failed_is_not()
    {
        var record = Create(mode: UpdateMode.Rehearse).Record with { State = JournalState.Failed };
        var listing = new JournalListing(SetId, JournalFile(), record, null);

        Assert.That(UpdateJournal.IsUnfinished(listing, record.BootId), Is.True);
        Assert.That(UpdateJournal.IsUnfinished(listing, "another-boot"), Is.False);
    }

    [Test]
    public void A_journal_cut_at_any_byte_is_unfinished_and_listed_with_why_never_skipped()
    {
        var journal = Create();
        journal.Transition(JournalState.Sealed, "3 files");
        var whole = File.ReadAllBytes(journal.FilePath);
        var cuts = Enumerable.Range(0, whole.Length).Where(i => i % 7 == 0 || i > whole.Length - 16).ToList();
        foreach (var cut in cuts)
        {
            File.WriteAllBytes(journal.FilePath, whole[..cut]);

            var listing = UpdateJournal.Scan(_dir).Single();
            Assert.That(listing.Record, Is.Null, $"cut at {cut} of {whole.Length}");
            Assert.That(listing.Problem, Does.Contain(journal.FilePath), $"cut at {cut}");
            Assert.That(UpdateJournal.Unfinished(_dir).Single().SetId, Is.EqualTo(SetId), $"cut at {cut}");
            Assert.That(listing.Describe(), Does.Contain("cannot be read").And.Contain($"rebootless images rm --force {SetId}"));
        }

        Assert.That(UpdateJournal.List(_dir), Is.Empty, "List keeps only what can be read");
    }

    [Test]
    public void A_failed_journal_says_which_set_and_the_commands_that_recover_or_give_it_up()
    {
        Create().Transition(JournalState.Failed, "criu vanished");

        var text = UpdateJournal.Unfinished(_dir).Single().Describe();

        Assert.That(text, Does.Contain(SetId).And.Contain($"rebootless resume --set {SetId}").And.Contain($"rebootless images rm --force {SetId}").And.Contain("pid:5="));
    }

    [Test]
    public void A_file_that_is_not_named_after_a_set_is_listed_but_blocks_nothing()
    {
        Create().Transition(JournalState.Resumed);
        File.WriteAllText(Path.Combine(UpdateJournal.DirectoryOf(_dir), "notes.json"), "{}");

        Assert.That(UpdateJournal.Scan(_dir).Select(j => (j.SetId, j.Record is null)), Is.EquivalentTo(new[] { (SetId, false), ("notes", true) }));
        Assert.That(UpdateJournal.Unfinished(_dir), Is.Empty);
    }

    private static IEnumerable<TestCaseData> Substitutes()
    {
        yield return new TestCaseData((Action<string, string>)((path, outside) => Assert.That(Syscall.mkfifo(path, FilePermissions.S_IRUSR | FilePermissions.S_IWUSR), Is.Zero)), "named pipe")
            .SetName("A FIFO in place of a journal is refused without blocking");
        yield return new TestCaseData((Action<string, string>)((path, outside) => File.CreateSymbolicLink(path, outside)), "symbolic link")
            .SetName("A symbolic link in place of a journal is refused, its target never read");
        yield return new TestCaseData((Action<string, string>)((path, outside) => { File.Copy(outside, path); File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.OtherWrite); }), "writable by group or others")
            .SetName("A journal others can write is refused");
        yield return new TestCaseData((Action<string, string>)((path, outside) => { File.Copy(outside, path); Assert.That(Syscall.chown(path, 65534, 65534), Is.Zero); }), "belongs to uid 65534")
            .SetName("A journal of another user is refused");
        yield return new TestCaseData((Action<string, string>)((path, outside) => { using var f = File.Create(path); f.SetLength(UpdateJournal.MaxBytes + 1); }), "more than the")
            .SetName("A journal larger than 16 MiB is refused unread");
    }

    [TestCaseSource(nameof(Substitutes))]
    public void Something_else_in_place_of_a_journal_is_refused_with_why(Action<string, string> plant, string why)
    {
        if (Syscall.geteuid() != 0 && why.Contains("uid", StringComparison.Ordinal))
        {
            Assert.Ignore("chown to another user needs root");
        }

        var journal = Create();
        var outside = Path.Combine(_dir, "outside.json");
        File.Copy(journal.FilePath, outside);
        File.Delete(journal.FilePath);
        plant(journal.FilePath, outside);

        var sw = Stopwatch.StartNew();
        var listing = UpdateJournal.Scan(_dir).Single();
        Assert.That(sw.Elapsed, Is.LessThan(TimeSpan.FromSeconds(5)), "nothing blocks");
        Assert.That(listing.Record, Is.Null);
        Assert.That(listing.Problem, Does.Contain(why));
        Assert.That(() => UpdateJournal.Open(_dir, SetId), Throws.TypeOf<InvalidDataException>().With.Message.Contain(why));
        Assert.That(UpdateJournal.Unfinished(_dir).Single().SetId, Is.EqualTo(SetId));
    }

    [TestCase("../escape", "escapes the set")]
    [TestCase("/etc", "is absolute")]
    [TestCase("a/b", "more than one component")]
    [TestCase("", "is empty")]
    public void A_journal_whose_target_folder_is_not_one_name_is_refused(string folder, string why)
    {
        var journal = Create();
        var text = File.ReadAllText(journal.FilePath).Replace("\"folder\": \"00-pid-5\"", $"\"folder\": \"{folder}\"", StringComparison.Ordinal);
        File.WriteAllText(journal.FilePath, text);

        Assert.That(() => UpdateJournal.Open(_dir, SetId), Throws.TypeOf<InvalidDataException>().With.Message.Contain(why));
        Assert.That(() => UpdateJournal.Create(_dir, "20260101T000000Z-0000abce", UpdateMode.Update, OneTarget(folder), _lock, TimeProvider.System),
            Throws.ArgumentException.With.Message.Contain(why), "never written either");
    }

    [TestCase("--rm=true")]
    [TestCase("web")]
    [TestCase("D315BDE8A1F0C0FFEE0123456789ABCDEF0123456789ABCDEF0123456789ABCD")]
    public void A_journal_whose_podman_container_is_not_named_by_its_full_id_is_refused(string id)
    {
        const string Good = "d315bde8a1f0c0ffee0123456789abcdef0123456789abcdef0123456789abcd";
        var target = new JournalTarget
        {
            Id = "podman:web", Folder = "00-podman-web",
            Settings = new TargetCriuSettings { Podman = new PodmanContainer { Id = Good, Name = "web" } },
        };
        var journal = UpdateJournal.Create(_dir, SetId, UpdateMode.Update, [target], _lock, TimeProvider.System);
        Assert.That(UpdateJournal.Open(_dir, SetId)!.Record.Targets[0].Settings.Podman!.Id, Is.EqualTo(Good), "a full id reads back");
        File.WriteAllText(journal.FilePath, File.ReadAllText(journal.FilePath).Replace(Good, id, StringComparison.Ordinal));

        // The id becomes an argument of podman, run as root: an option in its place must never get there.
        Assert.That(() => UpdateJournal.Open(_dir, SetId), Throws.TypeOf<InvalidDataException>().With.Message.Contain($"podman container id '{id}' is not a full container id"));
    }

    [Test]
    public void A_journal_whose_set_id_is_not_its_file_name_is_refused()
    {
        var journal = Create();
        const string Other = "20260101T000000Z-0000ffff";
        File.Move(journal.FilePath, JournalFile(Other));

        Assert.That(() => UpdateJournal.Open(_dir, Other), Throws.TypeOf<InvalidDataException>().With.Message.Contain($"names set {SetId} but is the journal file of {Other}"));
    }

    [TestCase("../x")]
    [TestCase("/etc/passwd")]
    [TestCase("20260101T000000Z-0000abcd/../../x")]
    [TestCase("evil-link")]
    public void A_set_id_that_is_not_one_is_refused_before_any_path_is_made(string id)
    {
        Assert.That(UpdateJournal.IsSetId(id), Is.False);
        Assert.That(() => UpdateJournal.Open(_dir, id), Throws.ArgumentException);
        Assert.That(() => UpdateJournal.LogDirectoryOf(_dir, id), Throws.ArgumentException);
    }

    [Test]
    public void A_journal_folder_that_is_a_symbolic_link_is_refused()
    {
        var elsewhere = Directory.CreateDirectory(Path.Combine(_dir, "elsewhere")).FullName;
        Directory.CreateSymbolicLink(UpdateJournal.DirectoryOf(_dir), elsewhere);

        Assert.That(() => UpdateJournal.Scan(_dir), Throws.TypeOf<JournalException>().With.Message.Contain("is a symbolic link")
            .And.Property(nameof(JournalException.Problem)).EqualTo(JournalProblem.UnsafeFolder));
        Assert.That(() => Create(), Throws.TypeOf<JournalException>());
        Assert.That(Directory.GetFileSystemEntries(elsewhere), Is.Empty, "nothing written through the link");
    }

    [Test]
    public void Space_is_kept_aside_per_journal_and_freed_when_the_run_is_over()
    {
        var journal = Create();
        var reserve = new FileInfo(journal.ReservePath);
        Assert.That(reserve.Exists && reserve.Length >= UpdateJournal.MinReserveBytes, Is.True, "kept aside at creation");
        Assert.That(Syscall.stat(journal.ReservePath, out var st), Is.Zero);
        Assert.That(st.st_blocks * 512, Is.GreaterThanOrEqualTo(UpdateJournal.MinReserveBytes), "allocated, not a sparse file");

        journal.Transition(JournalState.Failed, "criu vanished");
        Assert.That(File.Exists(journal.ReservePath), Is.True, "a failed run is not over");

        journal.Transition(JournalState.RolledBack);
        Assert.That(File.Exists(journal.ReservePath), Is.False);
    }

    [Test]
    public void Abandoning_records_what_was_lost_and_finishes_the_run()
    {
        var journal = Create();
        journal.Transition(JournalState.Failed, "criu vanished", r => r with { Targets = [r.Targets[0] with { Phase = TargetPhase.Dumped }] });

        var lost = journal.Abandon("given up");

        Assert.That(lost.Select(t => t.Id), Is.EqualTo(new[] { "pid:5" }));
        var read = UpdateJournal.List(_dir).Single();
        Assert.That(read.State, Is.EqualTo(JournalState.Abandoned));
        Assert.That(read.History[^1].Detail, Does.Contain("given up").And.Contain("lost: pid:5 (Dumped)"));
        Assert.That(UpdateJournal.Unfinished(_dir), Is.Empty);
    }

    [Test]
    public void An_unreadable_journal_set_aside_is_kept_for_inspection_and_blocks_nothing()
    {
        var journal = Create();
        File.WriteAllText(journal.FilePath, "{\"format\": \"rebootless-jour");

        var aside = UpdateJournal.SetAside(_dir, SetId, _lock);

        Assert.That(File.ReadAllText(aside), Is.EqualTo("{\"format\": \"rebootless-jour"));
        Assert.That(UpdateJournal.Unfinished(_dir), Is.Empty);
        Assert.That(File.Exists(journal.ReservePath), Is.False);
    }
}
