namespace RebootlessUpdate.Pipeline;

/// <summary>
/// How the pipeline runs one stage: timeout and retries. Immutable; validated
/// when the stage is added to a <see cref="UpdatePipelineBuilder"/>.
/// </summary>
public sealed record StageOptions
{
    /// <summary>Shared default options: no timeout, no retry.</summary>
    public static StageOptions Default { get; } = new();

    /// <summary>Time one attempt may take before it is abandoned with a timeout. Default: null (no timeout).</summary>
    public TimeSpan? Timeout { get; init; }

    /// <summary>
    /// The stage can run again after a failed attempt without harm (e.g. a restore that
    /// failed on a PID collision leaves nothing behind). Retries need it. Default: false.
    /// </summary>
    public bool SafeToRepeat { get; init; }

    /// <summary>Attempts after the first one when an attempt fails (0-10); needs <see cref="SafeToRepeat"/>. Default: 0.</summary>
    public int MaxRetryAttempts { get; init; }

    /// <summary>Pause between attempts. Default: 200 ms.</summary>
    public TimeSpan RetryDelay { get; init; } = StageDefaults.RetryDelay;

    /// <summary>
    /// Which failures are worth another attempt. Cancellation never is, whatever this says.
    /// Default: null (every failure except cancellation).
    /// </summary>
    public Func<Exception, bool>? ShouldRetry { get; init; }

    internal void Validate(string stageName)
    {
        if (Timeout is { } t && t <= TimeSpan.Zero)
        {
            throw new ArgumentException($"stage '{stageName}': the timeout must be positive (or null for none).");
        }

        if (MaxRetryAttempts is < 0 or > StageDefaults.MaxRetryAttemptsLimit)
        {
            throw new ArgumentException($"stage '{stageName}': retries must be 0-{StageDefaults.MaxRetryAttemptsLimit}.");
        }

        if (MaxRetryAttempts > 0 && !SafeToRepeat)
        {
            throw new ArgumentException(
                $"stage '{stageName}' asks for {MaxRetryAttempts} retries but is not marked SafeToRepeat: only a step that can run again without harm may be retried.",
                nameof(stageName));
        }

        if (RetryDelay < TimeSpan.Zero)
        {
            throw new ArgumentException($"stage '{stageName}': the retry delay must not be negative.");
        }
    }
}

/// <summary>Every default of the pipeline, in one place.</summary>
public static class StageDefaults
{
    /// <summary>Pause between attempts of a retried stage: 200 ms.</summary>
    public static readonly TimeSpan RetryDelay = TimeSpan.FromMilliseconds(200);

    /// <summary>Largest <see cref="StageOptions.MaxRetryAttempts"/>: 10.</summary>
    public const int MaxRetryAttemptsLimit = 10;

    /// <summary>How long a restore waits for the dumped processes' pids to be released before restoring: 10 s.</summary>
    public static readonly TimeSpan PidReleaseWait = TimeSpan.FromSeconds(10);

    /// <summary>Targets dumped or restored at the same time: 4.</summary>
    public const int MaxParallelism = 4;

    /// <summary>
    /// How long an interrupted restore is waited for (a CRIU still restoring from the target's images, or still
    /// holding the restored tree) before it is judged: 5 min. CRIU goes on with a restore whose client died
    /// until its post-restore point, then kills what it restored.
    /// </summary>
    public static readonly TimeSpan InterruptedRestoreWait = TimeSpan.FromMinutes(5);
}
