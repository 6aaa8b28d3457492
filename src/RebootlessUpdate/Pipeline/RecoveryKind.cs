namespace RebootlessUpdate.Pipeline;

/// <summary>What a run after boot (<see cref="UpdateMode.Resume"/>) does, as its Locate stage decides from the journal.</summary>
internal enum RecoveryKind
{
    /// <summary>The journal was written before a jump into this kernel: the targets are restored here.</summary>
    Resume,

    /// <summary>
    /// The journal was written in this very boot: the run crashed before its jump, so the targets run again on the
    /// kernel they ran on (found running in place, or restored once) and the loaded kernel is given up.
    /// </summary>
    Rollback,

    /// <summary>No unfinished run, or the named one already ended: nothing is verified, restored or journaled.</summary>
    NothingToDo,
}
