namespace RebootlessUpdate.Pipeline;

/// <summary>What is wrong with a journal, or with what a run asked of one.</summary>
public enum JournalProblem
{
    /// <summary>A set id from input (<c>--set</c>, the resume marker) is not a set id; nothing was read.</summary>
    BadSetId,

    /// <summary>A journal file cannot be trusted or read: truncated or damaged, not a regular file, not ours, or naming unsafe paths.</summary>
    Unreadable,

    /// <summary>The journal folder cannot be trusted: a symbolic link, not a folder, not ours, or writable by others.</summary>
    UnsafeFolder,

    /// <summary>A failed or unreadable run needs an operator's decision before its set is used or given up.</summary>
    NeedsAttention,

    /// <summary>A set id given as input (<c>--set</c>) is well formed, but the store has no journal of that set; nothing was changed.</summary>
    UnknownSet,
}

/// <summary>A journal refused, or a run that needs an operator; the message says which set, why and what to do.</summary>
public sealed class JournalException : Exception
{
    /// <summary>Creates the exception.</summary>
    public JournalException(JournalProblem problem, string? setId, string message, Exception? innerException = null)
        : base(message, innerException)
    {
        Problem = problem;
        SetId = setId;
    }

    /// <summary>Creates the exception.</summary>
    public JournalException()
    {
    }

    /// <summary>Creates the exception.</summary>
    public JournalException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception.</summary>
    public JournalException(string message, Exception innerException)
        : base(message, innerException)
    {
    }

    /// <summary>What is wrong.</summary>
    public JournalProblem Problem { get; }

    /// <summary>The set concerned, when known.</summary>
    public string? SetId { get; }
}

/// <summary>One journal file as found in the store: its record, or why it cannot be read.</summary>
/// <param name="SetId">The set the file is named after (<c>SETID.json</c>).</param>
/// <param name="FilePath">The file.</param>
/// <param name="Record">Its content; null when it cannot be read or trusted.</param>
/// <param name="Problem">Why it cannot be read; null when it can.</param>
public sealed record JournalListing(string SetId, string FilePath, JournalRecord? Record, string? Problem)
{
    /// <summary>
    /// What the run left behind and what to do about it, as one sentence without a final full stop
    /// (the same words in `resume`, `images rm` and the refusal of a new run).
    /// </summary>
    public string Describe()
    {
        if (Record is not { } r)
        {
            return $"the journal of set {SetId} cannot be read ({Problem}); the workloads of that run may be waiting on its images: {Remedy()}";
        }

        var mode = r.Mode.ToString().ToLowerInvariant();
        return r.State == JournalState.Failed
            ? $"{mode} {SetId} failed{(r.FailedStage is null ? "" : $" at {r.FailedStage}")}: {r.Error ?? "no error recorded"}; "
                + $"workloads it did not put back may be down ({string.Join(", ", r.Targets.Select(t => $"{t.Id}={t.Phase}"))}). {Remedy()}"
            : $"{mode} {SetId} in {Path.GetDirectoryName(Path.GetDirectoryName(FilePath))} was interrupted at '{r.State.ToString().ToLowerInvariant()}' "
                + $"and its workloads may be waiting on it: {Remedy()}";
    }

    /// <summary>The commands that recover the run or give it up, without a final full stop.</summary>
    public string Remedy() => Record switch
    {
        null => $"inspect the file, then give the set up with `rebootless images rm --force {SetId}`",
        { State: JournalState.Failed } => $"once the cause is fixed run `rebootless resume --set {SetId}` (it restores the targets that do not run), "
            + $"or give them up with `rebootless images rm --force {SetId}`",
        _ => "run `rebootless resume` first (it finishes the update or puts every workload back running)",
    };
}
