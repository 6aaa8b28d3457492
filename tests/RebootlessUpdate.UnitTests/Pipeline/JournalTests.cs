using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.UnitTests.Pipeline;

public class JournalTests
{
    [Test]
    public void The_journal_is_written_atomically_and_reads_back_with_its_history()
    {
        var dir = Directory.CreateTempSubdirectory("rebootless-journal-").FullName;
        try
        {
            var targets = new[] { new JournalTarget { Id = "pid:5", Folder = "00-pid-5", Settings = new TargetCriuSettings { ShellJob = true } } };
            var journal = UpdateJournal.Create(dir, "20260101T000000Z-0000abcd", UpdateMode.Update, targets, TimeProvider.System);
            journal.Transition(JournalState.Dumping);
            journal.Transition(JournalState.Sealed, "3 files");

            var read = UpdateJournal.Open(dir, "20260101T000000Z-0000abcd")!;

            Assert.That(read.State, Is.EqualTo(JournalState.Sealed));
            Assert.That(read.Record.History.Select(h => h.State), Is.EqualTo(new[] { JournalState.Planned, JournalState.Dumping, JournalState.Sealed }));
            Assert.That(read.Record.Targets[0].Settings.ShellJob, Is.True);
            Assert.That(read.Record.BootId, Is.EqualTo(File.ReadAllText("/proc/sys/kernel/random/boot_id").Trim()));
            Assert.That(Directory.GetFiles(UpdateJournal.DirectoryOf(dir)), Has.Length.EqualTo(1), "no temporary file left");
            Assert.That(File.ReadAllText(journal.FilePath), Does.Contain("\"state\": \"Sealed\""));
            Assert.That(UpdateJournal.List(dir), Has.Count.EqualTo(1));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Test]
    public void The_jump_guard_reads_the_journal()
    {
        var dir = Directory.CreateTempSubdirectory("rebootless-journal-").FullName;
        try
        {
            var targets = new[] { new JournalTarget { Id = "pid:5", Folder = "00-pid-5", Settings = new TargetCriuSettings() } };
            var journal = UpdateJournal.Create(dir, "20260101T000000Z-0000abcd", UpdateMode.Update, targets, TimeProvider.System);
            var guard = new JournalJumpGuard(journal);
            Assert.That(guard.IsCheckpointSealed(out var reason), Is.False);
            Assert.That(reason, Does.Contain("never reached 'sealed'"));

            journal.Transition(JournalState.Sealed, null, r => r with { Targets = [r.Targets[0] with { Phase = TargetPhase.Planned }] });
            Assert.That(guard.IsCheckpointSealed(out reason), Is.False);
            Assert.That(reason, Does.Contain("pid:5 (Planned)"));

            journal.Transition(JournalState.Jumping, null, r => r with { Targets = [r.Targets[0] with { Phase = TargetPhase.Frozen }] });
            Assert.That(guard.IsCheckpointSealed(out _), Is.True);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
