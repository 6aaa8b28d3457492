using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.UnitTests.Stages;

/// <summary>
/// The restore and rollback steps keep to the phase table without touching what the journal knows: a target whose
/// restore has an unknown outcome is not asked for again, and keeps the root its interrupted restore recorded.
/// </summary>
public class RestoreGuardTests
{
    private static TargetRun Run(TargetPhase phase) => TargetRun.FromJournal(new JournalTarget
    {
        Id = "pid:7",
        Folder = "00-pid-7",
        Settings = new TargetCriuSettings(),
        Phase = phase,
        RestoredPid = 4242,
        RestoredStartTime = 99,
    }, "/nonexistent");

    [TestCase(TargetPhase.Restoring)]
    [TestCase(TargetPhase.Restored)]
    [TestCase(TargetPhase.Ended)]
    public void A_restore_refused_by_the_table_leaves_the_recorded_root_alone(TargetPhase phase)
    {
        var t = Run(phase);
        var context = new UpdateContext(UpdateMode.Rehearse, []) { SetId = "20261130T000000Z-00000001" };

        Assert.That(() => TargetRestore.RestoreAsync(context, t, "/nonexistent", releaseWait: TimeSpan.FromSeconds(1), lazy: false, CancellationToken.None),
            Throws.InvalidOperationException.With.Message.Contains("cannot become restoring"));
        Assert.Multiple(() =>
        {
            Assert.That(t.Phase, Is.EqualTo(phase));
            Assert.That(t.RestoredPid, Is.EqualTo(4242));
            Assert.That(t.RestoredStartTime, Is.EqualTo(99));
        });
    }

    [Test]
    public async Task A_rollback_does_not_ask_again_for_a_target_whose_restore_may_still_be_under_way()
    {
        var t = Run(TargetPhase.Restoring);
        var context = new UpdateContext(UpdateMode.Rehearse, []) { SetId = "20261130T000000Z-00000001" };

        await TargetRollback.RecoverAsync(context, t, TimeSpan.FromSeconds(1));

        Assert.Multiple(() =>
        {
            Assert.That(t.Phase, Is.EqualTo(TargetPhase.Restoring));
            Assert.That(t.RestoredPid, Is.EqualTo(4242), "the root its restore recorded is kept for the next resume to find");
            Assert.That(t.Error, Does.Contain("may still be restoring it").And.Contain("rebootless resume --set 20261130T000000Z-00000001"));
        });
    }
}
