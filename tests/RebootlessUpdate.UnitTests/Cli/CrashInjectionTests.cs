using RebootlessUpdate.Cli;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.UnitTests.Cli;

public class CrashInjectionTests
{
    [TestCase(null)]
    [TestCase("")]
    [TestCase("0")]
    [TestCase("yes")]
    [TestCase("true")]
    public void Without_the_gate_a_crash_point_is_ignored_with_one_warning(string? gate)
    {
        var point = CrashInjection.Parse("sealed", gate, out var warning);

        Assert.That(point, Is.Null);
        Assert.That(warning, Does.Contain("REBOOTLESS_CRASH_AT is set but ignored").And.Contain("REBOOTLESS_TEST_HOOKS=1").And.Not.Contain("\n"));
    }

    [TestCase(null, null)]
    [TestCase(null, "1")]
    [TestCase("  ", "1")]
    public void Nothing_set_arms_nothing_and_says_nothing(string? spec, string? gate)
    {
        Assert.That(CrashInjection.Parse(spec, gate, out var warning), Is.Null);
        Assert.That(warning, Is.Null);
    }

    [Test]
    public void With_the_gate_a_state_is_armed_and_the_warning_says_so()
    {
        var point = CrashInjection.Parse("Sealed", "1", out var warning);

        Assert.That(point, Is.EqualTo(new CrashInjection.CrashPoint("Sealed", JournalState.Sealed, null)));
        Assert.That(warning, Does.Contain("test hook armed").And.Contain("SIGKILL"));
    }

    [Test]
    public void The_stop_hook_takes_the_same_points_and_says_it_stops_the_tool()
    {
        var point = CrashInjection.Parse("sealed", "1", out var warning, stop: true);
        var ignored = CrashInjection.Parse("sealed", null, out var ignoredWarning, stop: true);

        Assert.That(point, Is.EqualTo(new CrashInjection.CrashPoint("sealed", JournalState.Sealed, null, StopOnly: true)));
        Assert.That(warning, Does.Contain("REBOOTLESS_STOP_AT=sealed").And.Contain("SIGSTOP").And.Not.Contain("SIGKILL"));
        Assert.That(ignored, Is.Null);
        Assert.That(ignoredWarning, Does.Contain("REBOOTLESS_STOP_AT is set but ignored"));
    }

    [Test]
    public void With_the_gate_a_state_and_phase_is_armed()
    {
        var point = CrashInjection.Parse("dumping/frozen", "1", out _);

        Assert.That(point, Is.EqualTo(new CrashInjection.CrashPoint("dumping/frozen", JournalState.Dumping, TargetPhase.Frozen)));
    }

    [Test]
    public void With_the_gate_restore_answered_is_armed_at_criu_answering_a_restore_and_matches_no_journal_write()
    {
        var point = CrashInjection.Parse("restore-answered", "1", out var warning);

        Assert.That(point, Is.Not.Null);
        Assert.That(point!.AtRestoreAnswered, Is.True);
        Assert.That(warning, Does.Contain("when CRIU has answered a restore"));
    }

    [Test]
    public void With_the_gate_luo_received_is_armed_where_a_LUO_store_is_written_out_and_matches_no_journal_write()
    {
        var point = CrashInjection.Parse("luo-received", "1", out var warning);

        Assert.That(point, Is.Not.Null);
        Assert.That(point!.AtLuoReceived, Is.True);
        Assert.That(point.Matches(Record(JournalState.Resuming)), Is.True, "its state is never the gate: the install keeps it off the journal hook");
        Assert.That(warning, Does.Contain("when a LUO store is written out"));
    }

    [TestCase("nowhere")]
    [TestCase("sealed/nowhere")]
    [TestCase("99")]
    public void With_the_gate_a_bad_spec_is_ignored_with_a_warning_listing_the_states(string spec)
    {
        var point = CrashInjection.Parse(spec, "1", out var warning);

        Assert.That(point, Is.Null);
        Assert.That(warning, Does.Contain("is not STATE, STATE/PHASE, restore-answered or luo-received").And.Contain("Sealed").And.Contain("ignored"));
    }

    [Test]
    public void A_state_point_matches_only_its_state_and_a_phase_point_only_when_every_target_is_in_that_phase()
    {
        var state = new CrashInjection.CrashPoint("sealed", JournalState.Sealed, null);
        var phase = new CrashInjection.CrashPoint("dumping/frozen", JournalState.Dumping, TargetPhase.Frozen);

        Assert.Multiple(() =>
        {
            Assert.That(state.Matches(Record(JournalState.Sealed, TargetPhase.Dumped)), Is.True);
            Assert.That(state.Matches(Record(JournalState.Dumping, TargetPhase.Dumped)), Is.False);
            Assert.That(phase.Matches(Record(JournalState.Dumping, TargetPhase.Frozen, TargetPhase.Frozen)), Is.True);
            Assert.That(phase.Matches(Record(JournalState.Dumping, TargetPhase.Frozen, TargetPhase.Dumped)), Is.False);
            Assert.That(phase.Matches(Record(JournalState.Dumping)), Is.False, "no targets: no phase to match");
            Assert.That(phase.Matches(Record(JournalState.Sealed, TargetPhase.Frozen)), Is.False);
        });
    }

    private static JournalRecord Record(JournalState state, params TargetPhase[] phases) => new()
    {
        SetId = "20260101T000000Z-0000abcd",
        Mode = UpdateMode.Rehearse,
        State = state,
        BootId = "b",
        KernelRelease = "k",
        Targets = [.. phases.Select((p, i) => new JournalTarget { Id = $"pid:{i + 1}", Folder = $"0{i}", Settings = new TargetCriuSettings(), Phase = p })],
        History = [],
    };
}
