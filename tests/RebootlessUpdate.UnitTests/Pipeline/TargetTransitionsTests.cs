using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.UnitTests.Pipeline;

/// <summary>The one table of a target's phase moves, and <see cref="TargetRun"/> keeping to it.</summary>
public class TargetTransitionsTests
{
    private static readonly TargetPhase[] All = Enum.GetValues<TargetPhase>();

    /// <summary>Every move the stages make, and nothing else.</summary>
    private static readonly (TargetPhase From, TargetPhase To)[] Expected =
    [
        (TargetPhase.Planned, TargetPhase.PreDumped), (TargetPhase.Planned, TargetPhase.Frozen), (TargetPhase.Planned, TargetPhase.Dumped),
        (TargetPhase.Planned, TargetPhase.Failed), (TargetPhase.Planned, TargetPhase.Resumed),
        (TargetPhase.PreDumped, TargetPhase.Frozen), (TargetPhase.PreDumped, TargetPhase.Dumped),
        (TargetPhase.PreDumped, TargetPhase.Failed), (TargetPhase.PreDumped, TargetPhase.Resumed),
        (TargetPhase.Frozen, TargetPhase.Sealed), (TargetPhase.Frozen, TargetPhase.Dumped), (TargetPhase.Frozen, TargetPhase.Failed),
        (TargetPhase.Frozen, TargetPhase.Resumed), (TargetPhase.Frozen, TargetPhase.Restoring),
        (TargetPhase.Sealed, TargetPhase.Dumped), (TargetPhase.Sealed, TargetPhase.Failed),
        (TargetPhase.Sealed, TargetPhase.Resumed), (TargetPhase.Sealed, TargetPhase.Restoring),
        (TargetPhase.Dumped, TargetPhase.Restoring), (TargetPhase.Dumped, TargetPhase.Failed), (TargetPhase.Dumped, TargetPhase.Resumed),
        (TargetPhase.Restoring, TargetPhase.Restored), (TargetPhase.Restoring, TargetPhase.Dumped), (TargetPhase.Restoring, TargetPhase.Failed),
        (TargetPhase.Restoring, TargetPhase.Ended),
        (TargetPhase.Failed, TargetPhase.Restoring), (TargetPhase.Failed, TargetPhase.Resumed),
        (TargetPhase.Failed, TargetPhase.Dumped), (TargetPhase.Failed, TargetPhase.Ended),
        (TargetPhase.Restored, TargetPhase.Ended), (TargetPhase.Resumed, TargetPhase.Ended),
    ];

    [Test]
    public void The_table_allows_exactly_the_moves_the_stages_make()
    {
        var allowed = All.SelectMany(from => All.Where(to => from != to && TargetTransitions.IsAllowed(from, to)).Select(to => (from, to)));

        Assert.That(allowed, Is.EquivalentTo(Expected));
    }

    [TestCase(TargetPhase.Restored)]
    [TestCase(TargetPhase.Resumed)]
    [TestCase(TargetPhase.Ended)]
    [TestCase(TargetPhase.Restoring)]
    [TestCase(TargetPhase.Planned)]
    public void Nothing_that_runs_ran_or_may_be_restoring_is_asked_for_a_restore(TargetPhase phase)
    {
        var run = Run(phase);

        Assert.That(() => run.MoveTo(TargetPhase.Restoring), Throws.InvalidOperationException
            .With.Message.Contains("pid:7").And.Message.Contains("cannot become restoring"));
        Assert.That(run.Phase, Is.EqualTo(phase), "a refused move changes nothing");
    }

    [Test]
    public void A_target_is_restored_only_through_restoring()
    {
        foreach (var from in All.Where(p => p is not (TargetPhase.Restoring or TargetPhase.Restored)))
        {
            Assert.That(TargetTransitions.IsAllowed(from, TargetPhase.Restored), Is.False, $"{from} -> Restored");
        }
    }

    [Test]
    public void Ended_is_final()
    {
        Assert.That(All.Where(to => to != TargetPhase.Ended && TargetTransitions.IsAllowed(TargetPhase.Ended, to)), Is.Empty);
    }

    [Test]
    public void Staying_is_allowed_except_in_restoring()
    {
        Assert.That(All.Where(p => TargetTransitions.IsAllowed(p, p)), Is.EquivalentTo(All.Where(p => p != TargetPhase.Restoring)));
    }

    [Test]
    public void A_restore_that_was_not_journaled_is_taken_back()
    {
        var run = Run(TargetPhase.Dumped);
        run.MoveTo(TargetPhase.Restoring);

        run.RevertRestoring(TargetPhase.Dumped);

        Assert.That(run.Phase, Is.EqualTo(TargetPhase.Dumped));
        Assert.That(() => Run(TargetPhase.Restored).RevertRestoring(TargetPhase.Dumped), Throws.InvalidOperationException);
    }

    [Test]
    public void A_new_target_is_planned_and_a_journaled_one_starts_where_its_journal_left_it()
    {
        Assert.Multiple(() =>
        {
            Assert.That(new TargetRun(new JournaledTarget("pid:7", new TargetCriuSettings())).Phase, Is.EqualTo(TargetPhase.Planned));
            Assert.That(Run(TargetPhase.Restoring).Phase, Is.EqualTo(TargetPhase.Restoring));
        });
    }

    private static TargetRun Run(TargetPhase phase) => new(new JournaledTarget("pid:7", new TargetCriuSettings()), phase);
}
