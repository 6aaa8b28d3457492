namespace RebootlessUpdate.Pipeline;

/// <summary>What a progress event reports.</summary>
public enum UpdateProgressKind
{
    /// <summary>A stage started.</summary>
    StageStarted,

    /// <summary>A stage finished.</summary>
    StageCompleted,

    /// <summary>A stage decided there was nothing for it to do.</summary>
    StageSkipped,

    /// <summary>A stage attempt failed and will be tried again.</summary>
    StageRetrying,

    /// <summary>A stage failed.</summary>
    StageFailed,

    /// <summary>A stage is being compensated (rolled back).</summary>
    Compensating,

    /// <summary>An informational message from a stage (e.g. a target dumped).</summary>
    Info,
}

/// <summary>A progress event of a pipeline run.</summary>
/// <param name="Kind">What happened.</param>
/// <param name="Stage">The stage's name.</param>
/// <param name="Message">A short human-readable message, when there is one.</param>
/// <param name="Target">The target concerned, when there is one.</param>
/// <param name="Bytes">Bytes the event reports (dumped, pre-dumped, verified), when it reports an amount.</param>
public readonly record struct UpdateProgress(UpdateProgressKind Kind, string Stage, string? Message = null, string? Target = null, long? Bytes = null);
