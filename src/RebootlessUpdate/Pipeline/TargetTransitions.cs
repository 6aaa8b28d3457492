namespace RebootlessUpdate.Pipeline;

/// <summary>
/// Every move a target's <see cref="TargetPhase"/> may make, in one table. A move outside it is a bug in the stages,
/// refused before the effect it would announce: above all, nothing that runs (restored, resumed) or ran and ended is
/// ever marked restoring again, and a target is restored only through <see cref="TargetPhase.Restoring"/>.
/// </summary>
internal static class TargetTransitions
{
    private static readonly Dictionary<TargetPhase, TargetPhase[]> Allowed = new()
    {
        // Frozen when CRIU holds it at post-dump; dumped when CRIU ended it without a hold; resumed when the run
        // ended before its dump began.
        // Pre-dumped first when CRIU copies its memory while it runs.
        [TargetPhase.Planned] = [TargetPhase.PreDumped, TargetPhase.Frozen, TargetPhase.Dumped, TargetPhase.Failed, TargetPhase.Resumed],

        // A pre-dump changes nothing of the target: the same ways on as from planned.
        [TargetPhase.PreDumped] = [TargetPhase.Frozen, TargetPhase.Dumped, TargetPhase.Failed, TargetPhase.Resumed],

        // Sealed while held; committed (dumped), vetoed (resumed in place), or, when the held tree died with it,
        // restored from its images.
        [TargetPhase.Frozen] = [TargetPhase.Sealed, TargetPhase.Dumped, TargetPhase.Failed, TargetPhase.Resumed, TargetPhase.Restoring],

        // As frozen: only a commit, a veto or a tree that died with its CRIU moves it on.
        [TargetPhase.Sealed] = [TargetPhase.Dumped, TargetPhase.Failed, TargetPhase.Resumed, TargetPhase.Restoring],

        // Restored, refused (its pages failed their check), or found running in place after a crash before the jump.
        [TargetPhase.Dumped] = [TargetPhase.Restoring, TargetPhase.Failed, TargetPhase.Resumed],

        // CRIU let the tree run, or it is known that nothing of it runs (back to dumped, or failed with a reason), or
        // CRIU let it run and it has exited since (ended).
        [TargetPhase.Restoring] = [TargetPhase.Restored, TargetPhase.Dumped, TargetPhase.Failed, TargetPhase.Ended],

        // A failed target still has its images: a rollback or a retried run (--set) may restore it once, or find
        // it running; one that ran after its checkpoint and exited since is ended.
        [TargetPhase.Failed] = [TargetPhase.Restoring, TargetPhase.Resumed, TargetPhase.Dumped, TargetPhase.Ended],

        // Running again: the only way on is to be found exited (its images are older than what it did).
        [TargetPhase.Restored] = [TargetPhase.Ended],
        [TargetPhase.Resumed] = [TargetPhase.Ended],

        // Needs an operator; never restored again.
        [TargetPhase.Ended] = [],
    };

    /// <summary>
    /// True when a target in <paramref name="from"/> may move to <paramref name="to"/>. Staying is allowed, except in
    /// <see cref="TargetPhase.Restoring"/>: entering it announces a restore request, and a target whose restore has an
    /// unknown outcome must not get a second one.
    /// </summary>
    public static bool IsAllowed(TargetPhase from, TargetPhase to) =>
        (from == to && to != TargetPhase.Restoring) || Allowed[from].Contains(to);

    /// <summary>Throws when the move is not in the table.</summary>
    /// <exception cref="InvalidOperationException">The move is not allowed.</exception>
    public static void Check(string target, TargetPhase from, TargetPhase to)
    {
        if (!IsAllowed(from, to))
        {
            throw new InvalidOperationException($"{target}: a target that is {from.ToString().ToLowerInvariant()} cannot become "
                + $"{to.ToString().ToLowerInvariant()}; this is a bug in rebootless, and nothing was done for this step.");
        }
    }
}
