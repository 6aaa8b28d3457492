using Microsoft.Extensions.Logging;

namespace RebootlessUpdate.Pipeline;

/// <summary>The pipeline's log messages (event ids 7000-7099).</summary>
internal static partial class PipelineLog
{
    [LoggerMessage(7000, LogLevel.Information, "{Mode}: stage {Stage} started")]
    public static partial void StageStarted(ILogger logger, UpdateMode mode, string stage);

    [LoggerMessage(7001, LogLevel.Information, "{Mode}: stage {Stage} {Status} in {Milliseconds:0.0} ms")]
    public static partial void StageFinished(ILogger logger, UpdateMode mode, string stage, StageStatus status, double milliseconds);

    [LoggerMessage(7002, LogLevel.Information, "stage {Stage} skipped: {Reason}")]
    public static partial void StageSkipped(ILogger logger, string stage, string reason);

    [LoggerMessage(7003, LogLevel.Warning, "stage {Stage} attempt {Attempt} failed; trying again")]
    public static partial void StageRetrying(ILogger logger, string stage, int attempt, Exception? exception);

    [LoggerMessage(7004, LogLevel.Error, "{Mode}: stage {Stage} failed")]
    public static partial void StageFailed(ILogger logger, UpdateMode mode, string stage, Exception exception);

    [LoggerMessage(7005, LogLevel.Warning, "compensating stage {Stage}")]
    public static partial void Compensating(ILogger logger, string stage);

    [LoggerMessage(7006, LogLevel.Error, "compensation of stage {Stage} failed")]
    public static partial void CompensationFailed(ILogger logger, string stage, Exception exception);

    [LoggerMessage(7007, LogLevel.Information, "{Mode} finished: {Outcome} (set {SetId})")]
    public static partial void RunFinished(ILogger logger, UpdateMode mode, UpdateOutcome outcome, string? setId);

    [LoggerMessage(7010, LogLevel.Information, "target {Target}: {Message}")]
    public static partial void TargetEvent(ILogger logger, string target, string message);

    [LoggerMessage(7011, LogLevel.Warning, "target {Target}: {Message}")]
    public static partial void TargetWarning(ILogger logger, string target, string message);

    [LoggerMessage(7012, LogLevel.Information, "journal {SetId}: {State}")]
    public static partial void JournalTransition(ILogger logger, string setId, JournalState state);

    [LoggerMessage(7013, LogLevel.Warning, "{Message}")]
    public static partial void RunWarning(ILogger logger, string message);
}
