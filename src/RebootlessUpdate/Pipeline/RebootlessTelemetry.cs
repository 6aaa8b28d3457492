using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace RebootlessUpdate.Pipeline;

/// <summary>
/// Names of the library's traces and metrics, so OpenTelemetry (or any
/// <see cref="ActivityListener"/>/<see cref="MeterListener"/>) can subscribe:
/// <c>AddSource(RebootlessTelemetry.Name)</c>, <c>AddMeter(RebootlessTelemetry.Name)</c>.
/// </summary>
public static class RebootlessTelemetry
{
    /// <summary>The ActivitySource and Meter name: <c>RebootlessUpdate</c>.</summary>
    public const string Name = "RebootlessUpdate";

    /// <summary>Histogram of stage durations in seconds (tags: stage, mode, status).</summary>
    public const string StageDurationMetric = "rebootless.stage.duration";

    /// <summary>Histogram of per-target downtime in seconds (tags: mode).</summary>
    public const string DowntimeMetric = "rebootless.target.downtime";

    /// <summary>Counter of pipeline runs (tags: mode, outcome).</summary>
    public const string RunsMetric = "rebootless.pipeline.runs";

    private static readonly string? Version = typeof(RebootlessTelemetry).Assembly.GetName().Version?.ToString();

    internal static ActivitySource ActivitySource { get; } = new(Name, Version);

    internal static Meter Meter { get; } = new(Name, Version);

    internal static Histogram<double> StageDuration { get; } = Meter.CreateHistogram<double>(StageDurationMetric, "s", "Time spent in a pipeline stage");

    internal static Histogram<double> Downtime { get; } = Meter.CreateHistogram<double>(DowntimeMetric, "s", "Time a target was not running: from freeze to restored");

    internal static Counter<long> Runs { get; } = Meter.CreateCounter<long>(RunsMetric, null, "Pipeline runs by outcome");
}
