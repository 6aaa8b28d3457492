using Microsoft.Extensions.Options;

namespace RebootlessUpdate.Hosting;

/// <summary>
/// Settings of the services <see cref="RebootlessUpdateServiceCollectionExtensions.AddRebootlessUpdate"/>
/// registers. Mutable for the options pattern (configuration binding); validated when first
/// resolved (and at host start, for hosts that run start-up validation).
/// </summary>
public sealed class RebootlessUpdateOptions
{
    /// <summary>The image store folder (absolute). Default <c>/var/lib/rebootless/store</c>.</summary>
    public string StoreDirectory { get; set; } = RebootlessUpdateDefaults.StoreDirectory;

    /// <summary>The criu binary (4.0 or newer). Default <c>criu</c> on PATH.</summary>
    public string CriuPath { get; set; } = "criu";

    /// <summary>
    /// How long one CRIU request may take before its worker is killed and the target is thawed or resumed (the
    /// watchdog): positive and at most 24 days, or <see cref="Timeout.InfiniteTimeSpan"/> for none. Default 10 minutes
    /// (<see cref="Criu.CriuClientOptions.DefaultRequestTimeout"/>), ample for dumping tens of GiB to a local disk.
    /// </summary>
    public TimeSpan CriuRequestTimeout { get; set; } = Criu.CriuClientOptions.DefaultRequestTimeout;

    /// <summary>Targets restored at the same time (1-64). Default 4.</summary>
    public int RestoreParallelism { get; set; } = Pipeline.StageDefaults.MaxParallelism;

    /// <summary>Sealed sets kept after a resume (0-100); null keeps all. Default 2.</summary>
    public int? KeepSealedSets { get; set; } = 2;

    /// <summary>
    /// A root-only key file outside the store (absolute): every seal signs the manifest with it and a set without a
    /// valid signature is refused (see <see cref="Images.DirectoryImageStoreOptions.ManifestKeyPath"/>). Default null: none.
    /// </summary>
    public string? ManifestKeyPath { get; set; }
}

/// <summary>Defaults of <see cref="RebootlessUpdateOptions"/>.</summary>
public static class RebootlessUpdateDefaults
{
    /// <summary>The store folder the tool uses too: <c>/var/lib/rebootless/store</c>.</summary>
    public const string StoreDirectory = "/var/lib/rebootless/store";
}

/// <summary>Checks <see cref="RebootlessUpdateOptions"/>; every failure names the setting, the value and what is expected.</summary>
internal sealed class RebootlessUpdateOptionsValidator : IValidateOptions<RebootlessUpdateOptions>
{
    public ValidateOptionsResult Validate(string? name, RebootlessUpdateOptions options)
    {
        var failures = new List<string>();
        if (string.IsNullOrWhiteSpace(options.StoreDirectory) || !Path.IsPathRooted(options.StoreDirectory))
        {
            failures.Add($"RebootlessUpdateOptions.StoreDirectory must be an absolute folder path, not '{options.StoreDirectory}'.");
        }

        if (string.IsNullOrWhiteSpace(options.CriuPath))
        {
            failures.Add("RebootlessUpdateOptions.CriuPath must name the criu binary (a path, or 'criu' to search PATH).");
        }

        if ((options.CriuRequestTimeout <= TimeSpan.Zero && options.CriuRequestTimeout != Timeout.InfiniteTimeSpan)
            || options.CriuRequestTimeout > TimeSpan.FromMilliseconds(int.MaxValue))
        {
            failures.Add($"RebootlessUpdateOptions.CriuRequestTimeout must be positive and at most 24 days (or Timeout.InfiniteTimeSpan for none), not {options.CriuRequestTimeout}.");
        }

        if (options.RestoreParallelism is < 1 or > 64)
        {
            failures.Add($"RebootlessUpdateOptions.RestoreParallelism must be 1-64, not {options.RestoreParallelism}.");
        }

        if (options.ManifestKeyPath is { } key && (string.IsNullOrWhiteSpace(key) || !Path.IsPathRooted(key)))
        {
            failures.Add($"RebootlessUpdateOptions.ManifestKeyPath must be an absolute file path (or null for none), not '{key}'.");
        }

        if (options.KeepSealedSets is < 0 or > 100)
        {
            failures.Add($"RebootlessUpdateOptions.KeepSealedSets must be 0-100 (or null to keep all), not {options.KeepSealedSets}.");
        }

        return failures.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(failures);
    }
}
