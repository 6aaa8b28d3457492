using System.Diagnostics;
using Mono.Unix.Native;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Targets;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Pipeline;

/// <summary>
/// Lock and journal discipline through the real tool, after a real interrupted run (the tool killed once
/// criu ended the workload, so its only copy is the checkpoint): a resume refused by the lock changes
/// nothing, failed and unreadable journals are never taken for finished, `images rm` keeps a set a run
/// needs, and input never becomes a path before it is checked.
/// </summary>
public partial class CrashRecoveryTests
{
    private string InterruptedRun(string store, params Workload[] workloads)
    {
        var crashed = Tool("sealed/dumped", ["rehearse", .. workloads.SelectMany(w => new[] { "--pid", Pid(w.RootPid) }), "--store", store, "--criu", _testbed.Criu]);
        Assert.That(crashed.ExitCode, Is.EqualTo(137), crashed.ToString());
        return UpdateJournal.List(store)[^1].SetId; // the newest
    }

    private static string JournalPath(string store, string setId) => Path.Combine(UpdateJournal.DirectoryOf(store), setId + ".json");

    private static void AssertOneLine(ProcessResult r, int code, params string[] contains)
    {
        TestContext.Out.WriteLine(r.ToString());
        Assert.That(r.ExitCode, Is.EqualTo(code), r.ToString());
        var lines = r.Error.Trim().Split('\n').Where(l => l.StartsWith("rebootless: ", StringComparison.Ordinal)).ToList();
        Assert.That(lines, Has.Count.EqualTo(1), r.Error);
        foreach (var c in contains)
        {
            Assert.That(lines[0], Does.Contain(c));
        }
    }

    [Test]
    public void A_resume_refused_by_the_lock_changes_nothing_and_the_next_resume_restores_the_workload()
    {
        var store = Directory.CreateDirectory(Path.Combine(_dir, "store")).FullName;
        var appDir = Path.Combine(_dir, "app");
        _workload = Workload.StartProgram(appDir, 16);
        var id = InterruptedRun(store, _workload);
        var before = File.ReadAllBytes(JournalPath(store, id));

        // Another process holds the store lock (flock on STORE/.lock) and records its pid there, as the tool does.
        var lockFile = Path.Combine(store, ".lock");
        using var holder = Process.Start("sh", ["-c", $"exec 9<>'{lockFile}'; flock -x 9; printf '%10d\\n' $$ >&9; exec sleep 120"])!;
        try
        {
            // Read with cat: .NET's own open would take a shared flock on the file and fail.
            Workload.WaitFor(() => ProcessRunner.Run("cat", [lockFile], TimeSpan.FromSeconds(10)).Output.Trim() == Pid(holder.Id) ? 1 : 0, "the other process to hold the lock");
            var refused = Tool(null, "resume", "--store", store, "--criu", _testbed.Criu, "--json");
            AssertOneLine(refused, 11, $"locked by pid {holder.Id}");
            Assert.That(File.ReadAllBytes(JournalPath(store, id)), Is.EqualTo(before), "the journal is byte-identical");
            Assert.That(Instances(appDir), Is.Zero, "nothing was restored either");
        }
        finally
        {
            holder.Kill();
            holder.WaitForExit();
        }

        var resumed = Tool(null, "resume", "--store", store, "--criu", _testbed.Criu, "--json");
        TestContext.Out.WriteLine(resumed.ToString());
        Assert.That(resumed.ExitCode, Is.Zero, resumed.ToString());
        var after = UpdateJournal.List(store).Single();
        Assert.That(after.State, Is.EqualTo(JournalState.RolledBack));
        _workload.RootPid = after.Targets.Single().RestoredPid!.Value;
        Assert.That(_workload.Check(), Does.StartWith("ok"));
        Assert.That(Instances(appDir), Is.EqualTo(1));
    }

    [Test]
    public void A_failed_journal_makes_resume_exit_non_zero_naming_the_set_and_resume_set_recovers_it_without_a_second_copy()
    {
        var store = Directory.CreateDirectory(Path.Combine(_dir, "store")).FullName;
        var richDir = Path.Combine(_dir, "rich");
        var shellDir = Path.Combine(_dir, "shell");
        _workload = Workload.StartProgram(richDir, 16);
        using var shell = Workload.Start(shellDir);
        var id = InterruptedRun(store, _workload, shell);
        var journal = UpdateJournal.List(store).Single();
        var victim = FlipAByteOfTheLargestPageImage(store, journal, journal.Targets[0]);

        // The page check refuses the damaged target: the journal is Failed, the other target runs again.
        var first = Tool(null, "resume", "--store", store, "--criu", _testbed.Criu, "--json");
        TestContext.Out.WriteLine(first.ToString());
        Assert.That(first.ExitCode, Is.EqualTo(12), first.ToString());
        var failed = UpdateJournal.List(store).Single();
        Assert.That(failed.State, Is.EqualTo(JournalState.Failed));
        shell.RootPid = failed.Targets[1].RestoredPid!.Value;
        var failedBytes = File.ReadAllBytes(JournalPath(store, id));

        // A plain resume does not take it for finished: it exits non-zero naming the set and the commands, changing nothing.
        var plain = Tool(null, "resume", "--store", store, "--criu", _testbed.Criu, "--json");
        AssertOneLine(plain, 12, id, $"rebootless resume --set {id}", $"rebootless images rm --force {id}");
        Assert.That(File.ReadAllBytes(JournalPath(store, id)), Is.EqualTo(failedBytes));
        Assert.That(UpdateJournal.List(store).Single().State, Is.EqualTo(JournalState.Failed), "still unfinished");

        // The status shows it with the same advice.
        var status = Tool(null, "status", "--store", store);
        Assert.That(status.ExitCode, Is.Zero, status.ToString());
        Assert.That(status.Output, Does.Match($@"{id}\s+rehearsal\s+failed\s").And.Contain($"rebootless resume --set {id}"));

        // The cause fixed (the byte flipped back), `resume --set` restores what does not run, and only that.
        Assert.That(FlipAByteOfTheLargestPageImage(store, journal, journal.Targets[0]), Is.EqualTo(victim));
        var retried = Tool(null, "resume", "--set", id, "--store", store, "--criu", _testbed.Criu, "--json");
        TestContext.Out.WriteLine(retried.ToString());
        Assert.That(retried.ExitCode, Is.Zero, retried.ToString());
        var after = UpdateJournal.List(store).Single();
        Assert.That(after.State, Is.EqualTo(JournalState.RolledBack), string.Join(" -> ", after.History.Select(h => h.State)));
        Assert.That(after.Targets[0].Phase, Is.EqualTo(TargetPhase.Restored), after.Targets[0].Error);
        Assert.That(after.Targets[1].RestoredPid, Is.EqualTo(shell.RootPid), "the running target was left alone");
        _workload.RootPid = after.Targets[0].RestoredPid!.Value;
        Assert.That(_workload.Check(), Does.StartWith("ok"));
        Assert.That(Instances(richDir), Is.EqualTo(1));
        Assert.That(Instances(shellDir), Is.EqualTo(1), "no second copy of the target that already ran");
    }

    [Test]
    public void A_truncated_journal_is_shown_refused_by_resume_and_images_rm_until_forced_which_says_what_is_lost()
    {
        var store = Directory.CreateDirectory(Path.Combine(_dir, "store")).FullName;
        _workload = Workload.StartProgram(Path.Combine(_dir, "app"), 16);
        var id = InterruptedRun(store, _workload);
        var path = JournalPath(store, id);
        var bytes = File.ReadAllBytes(path);
        var cut = new Random().Next(1, bytes.Length);
        TestContext.Out.WriteLine($"journal cut at byte {cut} of {bytes.Length}");
        File.WriteAllBytes(path, bytes[..cut]);

        var status = Tool(null, "status", "--store", store);
        Assert.That(status.ExitCode, Is.Zero, status.ToString());
        Assert.That(status.Output, Does.Contain($"{id}:\n  unreadable: {path} is not a readable journal"));

        AssertOneLine(Tool(null, "resume", "--store", store, "--criu", _testbed.Criu), 12, id, "cannot be read", $"rebootless images rm --force {id}");
        AssertOneLine(Tool(null, "images", "rm", id, "--store", store), 12, $"set {id} is not deleted: an unfinished run needs it");
        Assert.That(Directory.Exists(Path.Combine(store, "sets", id)), Is.True);

        var forced = Tool(null, "images", "rm", "--force", id, "--store", store);
        AssertOneLine(forced, 0, $"deleted set {id}", "could not be read", "is lost");
        Assert.That(Directory.Exists(Path.Combine(store, "sets", id)), Is.False);
        Assert.That(File.ReadAllBytes(path + ".unreadable"), Is.EqualTo(bytes[..cut]), "the damaged journal is kept for inspection");

        var resume = Tool(null, "resume", "--store", store, "--criu", _testbed.Criu, "--json");
        Assert.That(resume.ExitCode, Is.Zero, "given up: the store is no longer blocked. " + resume);
    }

    [Test]
    public void Images_rm_keeps_the_only_checkpoint_of_an_interrupted_run_and_force_records_the_run_as_abandoned()
    {
        var store = Directory.CreateDirectory(Path.Combine(_dir, "store")).FullName;
        var appDir = Path.Combine(_dir, "app");
        _workload = Workload.StartProgram(appDir, 16);
        var id = InterruptedRun(store, _workload);

        AssertOneLine(Tool(null, "images", "rm", id, "--store", store), 12,
            $"set {id} is not deleted: an unfinished run needs it", "was interrupted at 'sealed'", "--force");
        Assert.That(Directory.Exists(Path.Combine(store, "sets", id)), Is.True, "the checkpoint is kept");

        // It was the only copy: the interrupted run can still be finished from it.
        var resumed = Tool(null, "resume", "--store", store, "--criu", _testbed.Criu, "--json");
        Assert.That(resumed.ExitCode, Is.Zero, resumed.ToString());
        _workload.RootPid = UpdateJournal.List(store).Single().Targets.Single().RestoredPid!.Value;
        Assert.That(Instances(appDir), Is.EqualTo(1));
        Assert.That(_workload.Check(), Does.StartWith("ok"));

        // A second interrupted run, given up with --force: the tool says what is lost and the journal records it.
        var id2 = InterruptedRun(store, _workload);
        var target = UpdateJournal.List(store)[^1].Targets.Single().Id;
        var forced = Tool(null, "images", "rm", "--force", id2, "--store", store);
        AssertOneLine(forced, 0, $"deleted set {id2}", $"lost: {target} (last journaled dumped)", "can no longer be restored");
        var abandoned = UpdateJournal.List(store).Single(j => j.SetId == id2);
        Assert.That(abandoned.State, Is.EqualTo(JournalState.Abandoned));
        Assert.That(abandoned.History[^1].Detail, Does.Contain("images rm --force").And.Contain(target));
        Assert.That(Directory.Exists(Path.Combine(store, "sets", id2)), Is.False);
        var after = Tool(null, "resume", "--store", store, "--criu", _testbed.Criu);
        Assert.That(after.ExitCode, Is.Zero, "nothing left to resume: " + after);
    }

    [Test]
    public void Set_ids_from_input_are_checked_before_use_and_a_link_or_fifo_in_place_of_a_journal_is_refused_promptly()
    {
        var store = Directory.CreateDirectory(Path.Combine(_dir, "store")).FullName;
        _workload = Workload.StartProgram(Path.Combine(_dir, "app"), 16);
        var id = InterruptedRun(store, _workload);

        // An outside "store" whose journal names a set: nothing of it may be read through --set.
        var outside = Path.Combine(_dir, "outside");
        Directory.CreateDirectory(Path.Combine(outside, "journal"));
        File.Copy(JournalPath(store, id), Path.Combine(outside, "journal", id + ".json"));
        File.CreateSymbolicLink(Path.Combine(UpdateJournal.DirectoryOf(store), "evil.json"), Path.Combine(outside, "journal", id + ".json"));
        foreach (var bad in new[] { $"../../outside/journal/{id}", Path.Combine(outside, "journal", id), "evil", $"{id}/../{id}" })
        {
            AssertOneLine(Tool(null, "resume", "--set", bad, "--store", store, "--criu", _testbed.Criu), 2, $"--set '{bad}' is not a checkpoint set id");
            AssertOneLine(Tool(null, "images", "rm", "--force", bad, "--store", store), 2, $"'{bad}' is not a checkpoint set id");
        }

        // A well-formed id of no set in this store: a usage error that changes nothing, not a rollback.
        var journals = Directory.GetFiles(UpdateJournal.DirectoryOf(store)).Order().ToList();
        AssertOneLine(Tool(null, "resume", "--set", "20260101T000000Z-00000001", "--store", store, "--criu", _testbed.Criu), 2,
            "--set 20260101T000000Z-00000001: there is no run of that set", "nothing was changed");

        // A new run while this one is unfinished: refused with the needs-attention code, naming the set; nothing frozen.
        using (var other = Process.Start("sleep", ["120"])!)
        {
            try
            {
                AssertOneLine(Tool(null, "rehearse", "--pid", Pid(other.Id), "--store", store, "--criu", _testbed.Criu), 12,
                    "rehearse refused", id, "was interrupted at 'sealed'", "run `rebootless resume` first");
                Assert.That(Workload.IsFree(other.Id), Is.True, "the other process was never frozen");
            }
            finally
            {
                other.Kill();
            }
        }

        Assert.That(Directory.GetFiles(UpdateJournal.DirectoryOf(store)).Order(), Is.EqualTo(journals), "no journal was written");

        // A link named like a set's journal, to a journal outside the store: refused as a link, its target never used.
        const string Linked = "20260101T000000Z-0000beef";
        File.CreateSymbolicLink(JournalPath(store, Linked), Path.Combine(outside, "journal", id + ".json"));
        AssertOneLine(Tool(null, "resume", "--set", Linked, "--store", store, "--criu", _testbed.Criu), 12, "is a symbolic link, not a regular file");
        File.Delete(JournalPath(store, Linked));

        // A FIFO in place of the journal: status and resume return at once instead of blocking on it.
        var path = JournalPath(store, id);
        File.Move(path, path + ".saved");
        Assert.That(Mono.Unix.Native.Syscall.mkfifo(path, Mono.Unix.Native.FilePermissions.S_IRUSR | Mono.Unix.Native.FilePermissions.S_IWUSR), Is.Zero);
        var sw = Stopwatch.StartNew();
        var status = Tool(null, "status", "--store", store);
        Assert.That(status.ExitCode, Is.Zero, status.ToString());
        Assert.That(status.Output, Does.Contain($"{id}:\n  unreadable: {path} is a named pipe, not a regular file"));
        AssertOneLine(Tool(null, "resume", "--store", store, "--criu", _testbed.Criu), 12, "is a named pipe, not a regular file");
        Assert.That(sw.Elapsed, Is.LessThan(TimeSpan.FromSeconds(60)), "nothing blocked on the FIFO");

        // Put back, the run resumes as usual.
        File.Delete(path);
        File.Move(path + ".saved", path);
        var resumed = Tool(null, "resume", "--store", store, "--criu", _testbed.Criu, "--json");
        Assert.That(resumed.ExitCode, Is.Zero, resumed.ToString());
        _workload.RootPid = UpdateJournal.List(store).Single().Targets.Single().RestoredPid!.Value;
    }
}

/// <summary>The journal on a store that is really full (a small tmpfs filled to ENOSPC).</summary>
[NonParallelizable]
public class JournalFullStoreTests
{
    private string _mount = null!;

    [SetUp]
    public void SetUp()
    {
        Testbed.RequireRoot();
        _mount = Directory.CreateTempSubdirectory("rebootless-full-store-").FullName;
        var r = ProcessRunner.Run("mount", ["-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", _mount], TimeSpan.FromSeconds(30));
        Assert.That(r.ExitCode, Is.Zero, r.ToString());
    }

    [TearDown]
    public void TearDown()
    {
        ProcessRunner.Run("umount", [_mount], TimeSpan.FromSeconds(30));
        Directory.Delete(_mount, recursive: true);
    }

    [Test]
    public void On_a_full_store_the_space_kept_aside_lets_the_rollback_be_journaled_and_without_it_the_write_fails()
    {
        var store = Directory.CreateDirectory(Path.Combine(_mount, "store")).FullName;
        using var held = RebootlessUpdate.Images.StoreLock.Acquire(Path.Combine(store, ".lock"));
        var journal = UpdateJournal.Create(store, "20260101T000000Z-0000aaaa", UpdateMode.Rehearse, OneTarget(TargetPhase.Dumped), held, TimeProvider.System);
        var bare = UpdateJournal.Create(store, "20260101T000000Z-0000bbbb", UpdateMode.Rehearse, OneTarget(TargetPhase.Dumped), held, TimeProvider.System);
        File.Delete(bare.ReservePath); // as every journal was before: nothing kept aside

        // CRIU's images fill the store.
        using (var filler = new FileStream(Path.Combine(store, "images.img"), FileMode.CreateNew))
        {
            TakeEverything(filler);
        }

        Assert.That(() => File.WriteAllBytes(Path.Combine(store, "probe"), new byte[8192]), Throws.InstanceOf<IOException>(), "the store is full");
        File.Delete(Path.Combine(store, "probe"));
        Assert.That(() => bare.Transition(JournalState.RolledBack), Throws.InstanceOf<IOException>().With.Property(nameof(IOException.HResult)).EqualTo(28),
            "without space kept aside the rollback cannot be journaled (and the next resume would restore a second copy)");

        journal.Transition(JournalState.RolledBack, "every workload runs again",
            r => r with { Targets = [r.Targets[0] with { Phase = TargetPhase.Restored, RestoredPid = 4242 }] });

        var onDisk = UpdateJournal.List(store).Single(j => j.SetId == journal.Record.SetId);
        Assert.That(onDisk.State, Is.EqualTo(JournalState.RolledBack));
        Assert.That(onDisk.Targets.Single().Phase, Is.EqualTo(TargetPhase.Restored));
        Assert.That(onDisk.Targets.Single().RestoredPid, Is.EqualTo(4242));
        Assert.That(File.Exists(journal.ReservePath), Is.False, "the reserve paid for it");
        Assert.That(Directory.GetFiles(UpdateJournal.DirectoryOf(store), "*.tmp"), Is.Empty, "no partial record left behind");
    }

    [Test]
    public void On_a_store_another_writer_keeps_full_the_space_kept_aside_pays_for_one_record_after_another()
    {
        var store = Directory.CreateDirectory(Path.Combine(_mount, "store")).FullName;
        using var held = RebootlessUpdate.Images.StoreLock.Acquire(Path.Combine(store, ".lock"));
        var journal = UpdateJournal.Create(store, "20260101T000000Z-0000cccc", UpdateMode.Rehearse, OneTarget(TargetPhase.Sealed), held, TimeProvider.System);
        var reserve = new FileInfo(journal.ReservePath).Length;

        // CRIU's restore log takes every byte the journal frees between two records (as on a store filled at commit).
        using var log = new FileStream(Path.Combine(store, "restore.log"), FileMode.CreateNew);
        var written = 0;
        foreach (var (state, phase) in new[]
        {
            (JournalState.Sealed, TargetPhase.Dumped), (JournalState.Resuming, TargetPhase.Dumped), (JournalState.Resuming, TargetPhase.Restoring),
            (JournalState.Resuming, TargetPhase.Restored), (JournalState.Resuming, TargetPhase.Restored),
        })
        {
            TakeEverything(log);
            journal.Transition(state, $"record {written}", r => r with { Targets = [r.Targets[0] with { Phase = phase, RestoredPid = 4242 }] });
            written++;
            Assert.That(UpdateJournal.List(store).Single().Targets.Single().Phase, Is.EqualTo(phase), $"record {written} is on disk");
        }

        TestContext.Out.WriteLine($"{written} records on a full store; the reserve went from {reserve} to {(File.Exists(journal.ReservePath) ? new FileInfo(journal.ReservePath).Length : 0)} bytes");
        Assert.That(File.Exists(journal.ReservePath), Is.True, "each record took a record's worth of the reserve, not all of it");
        TakeEverything(log);
        journal.Transition(JournalState.RolledBack, "every workload runs again");
        Assert.That(UpdateJournal.List(store).Single().State, Is.EqualTo(JournalState.RolledBack));
        Assert.That(File.Exists(journal.ReservePath), Is.False, "a finished run keeps nothing aside");
    }

    [Test]
    public void What_is_planted_at_the_reserve_or_the_spare_is_never_written_through_and_a_folder_there_fails_nothing()
    {
        var store = Directory.CreateDirectory(Path.Combine(_mount, "store")).FullName;
        using var held = RebootlessUpdate.Images.StoreLock.Acquire(Path.Combine(store, ".lock"));
        var journal = UpdateJournal.Create(store, "20260101T000000Z-0000dddd", UpdateMode.Rehearse, OneTarget(TargetPhase.Sealed), held, TimeProvider.System);
        Assert.That(File.Exists(journal.SparePath), Is.True, "a new journal has its spare inode");

        // Someone else's files on the same file system, hard-linked in place of the reserve and the spare.
        var victims = new[] { Path.Combine(_mount, "victim-reserve"), Path.Combine(_mount, "victim-spare") };
        var content = new byte[256 << 10];
        Random.Shared.NextBytes(content);
        foreach (var (victim, planted) in victims.Zip([journal.ReservePath, journal.SparePath]))
        {
            File.WriteAllBytes(victim, content);
            File.Delete(planted);
            Assert.That(Syscall.link(victim, planted), Is.Zero);
        }

        // On a full store the planted reserve pays for nothing (it is removed, not cut short), so the record fails...
        var logPath = Path.Combine(store, "restore.log");
        using (var log = new FileStream(logPath, FileMode.CreateNew))
        {
            TakeEverything(log);
            Assert.That(() => journal.Transition(JournalState.Resuming, "on a full store"),
                Throws.InstanceOf<IOException>().With.Property(nameof(IOException.HResult)).EqualTo(28));
        }

        // ... and once there is room it is written, without a spare of ours (the planted one is removed, not written into).
        File.Delete(logPath);
        journal.Transition(JournalState.Resuming, "with room again");
        Assert.That(UpdateJournal.List(store).Single().State, Is.EqualTo(JournalState.Resuming));
        foreach (var victim in victims)
        {
            Assert.That(File.ReadAllBytes(victim), Is.EqualTo(content), $"{victim} was not written through its planted link");
        }

        // A folder in place of the reserve: the finished record is durable and the run does not fail on what it cannot release.
        File.Delete(journal.ReservePath);
        Directory.CreateDirectory(Path.Combine(journal.ReservePath, "inside"));
        Assert.That(() => journal.Transition(JournalState.RolledBack, "every workload runs again"), Throws.Nothing);
        Assert.That(UpdateJournal.List(store).Single().State, Is.EqualTo(JournalState.RolledBack));
    }

    private static JournalTarget[] OneTarget(TargetPhase phase) =>
        [new JournalTarget { Id = "pid:77", Folder = "00-pid-77", Settings = new TargetCriuSettings(), Phase = phase }];

    /// <summary>Writes until the file system answers ENOSPC.</summary>
    private static void TakeEverything(FileStream writer)
    {
        var chunk = new byte[4096];
        try
        {
            while (true)
            {
                writer.Write(chunk);
                writer.Flush();
            }
        }
        catch (IOException e) when (e.HResult == 28)
        {
        }
    }
}
