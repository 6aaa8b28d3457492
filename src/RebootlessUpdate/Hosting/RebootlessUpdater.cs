using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Images;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.Hosting;

/// <summary>
/// The library wired from dependency injection: the configured store, CRIU client, clock and
/// logging, and the standard pipelines. Build your own pipeline (e.g. with a platform stage)
/// and run it on <see cref="CreateContext"/>.
/// </summary>
public sealed class RebootlessUpdater
{
    private readonly RebootlessUpdateOptions _options;
    private readonly ILogger _logger;

    /// <summary>Created by the container (see <see cref="RebootlessUpdateServiceCollectionExtensions.AddRebootlessUpdate"/>).</summary>
    public RebootlessUpdater(IOptions<RebootlessUpdateOptions> options, IImageStore store, CriuClient criu, TimeProvider timeProvider, ILoggerFactory? loggerFactory = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        _options = options.Value;
        Store = store;
        Criu = criu;
        TimeProvider = timeProvider;
        _logger = (loggerFactory ?? NullLoggerFactory.Instance).CreateLogger("RebootlessUpdate");
    }

    /// <summary>The configured image store.</summary>
    public IImageStore Store { get; }

    /// <summary>The configured CRIU client.</summary>
    public CriuClient Criu { get; }

    /// <summary>The clock.</summary>
    public TimeProvider TimeProvider { get; }

    /// <summary>A context for one run over <paramref name="targets"/>, with the configured services.</summary>
    public UpdateContext CreateContext(UpdateMode mode, IEnumerable<UpdateTarget> targets, IProgress<UpdateProgress>? progress = null) =>
        new(mode, targets) { Store = Store, Criu = Criu, TimeProvider = TimeProvider, Logger = _logger, Progress = progress };

    /// <summary>
    /// The standard rehearsal pipeline with the configured settings, ready for custom stages
    /// (<c>AddStage(stage)</c> puts one after Restore, while the sealed set exists). Run it on
    /// <c>CreateContext(UpdateMode.Rehearse, targets)</c>.
    /// </summary>
    public UpdatePipelineBuilder CreateRehearsalBuilder() =>
        Configured(RebootlessPipelines.Rehearsal(restore: RestoreOptions()));

    /// <summary>
    /// The first half of an update (up to the kexec jump) with the configured settings, ready for custom stages
    /// (<c>AddStage(stage)</c> puts one before Jump; <c>StagePosition.Before("Dump")</c> before the freeze).
    /// </summary>
    /// <param name="kernel">The kernel to load (checked now: the file must exist).</param>
    public UpdatePipelineBuilder CreateUpdateBuilder(LoadKernelStageOptions kernel) =>
        Configured(RebootlessPipelines.Update(kernel));

    /// <summary>The standard resume (after boot, or after a crash before the jump) with the configured settings, ready for custom stages.</summary>
    public UpdatePipelineBuilder CreateResumeBuilder() =>
        Configured(RebootlessPipelines.Resume(restore: RestoreOptions(), cleanup: new CleanupStageOptions { KeepSealedSets = _options.KeepSealedSets }));

    /// <summary>
    /// Runs the standard rehearsal of <paramref name="targets"/> on this kernel: checkpoint, seal, verify, restore.
    /// Neither a stage's failure nor cancellation throws: the run rolls back, every workload runs again, and the
    /// result says what failed (<see cref="UpdateResult.Cancelled"/>, with the <see cref="OperationCanceledException"/>
    /// as <see cref="UpdateResult.Exception"/>, when <paramref name="cancellationToken"/> stopped it).
    /// </summary>
    public Task<UpdateResult> RehearseAsync(IEnumerable<UpdateTarget> targets, IProgress<UpdateProgress>? progress = null, CancellationToken cancellationToken = default) =>
        CreateRehearsalBuilder().Build().ExecuteAsync(CreateContext(UpdateMode.Rehearse, targets, progress), cancellationToken);

    /// <summary>
    /// Runs the first half of an update of <paramref name="targets"/>: loads <paramref name="kernel"/>, checkpoints
    /// into the store and jumps (the process ends with this kernel); <see cref="ResumeAsync"/> restores on the new one.
    /// Any failure before the jump puts every workload back running on this kernel.
    /// </summary>
    /// <param name="targets">The workloads to carry over.</param>
    /// <param name="kernel">The kernel to load (checked before anything runs: the file must exist).</param>
    /// <param name="progress">Stage and target progress.</param>
    /// <param name="cancellationToken">Cancels the run before the jump (it rolls back).</param>
    public Task<UpdateResult> UpdateAsync(IEnumerable<UpdateTarget> targets, LoadKernelStageOptions kernel, IProgress<UpdateProgress>? progress = null,
        CancellationToken cancellationToken = default) =>
        CreateUpdateBuilder(kernel).Build().ExecuteAsync(CreateContext(UpdateMode.Update, targets, progress), cancellationToken);

    /// <summary>Runs the standard resume (after boot, or after a crash before the jump): the targets come from the store's journal.</summary>
    public Task<UpdateResult> ResumeAsync(IProgress<UpdateProgress>? progress = null, CancellationToken cancellationToken = default) =>
        CreateResumeBuilder().Build().ExecuteAsync(CreateContext(UpdateMode.Resume, [], progress), cancellationToken);

    private RestoreStageOptions RestoreOptions() => new() { MaxParallelism = _options.RestoreParallelism };

    private UpdatePipelineBuilder Configured(UpdatePipelineBuilder builder)
    {
        builder.TimeProvider = TimeProvider;
        return builder;
    }
}

/// <summary>Registers RebootlessUpdate with Microsoft.Extensions.DependencyInjection.</summary>
public static class RebootlessUpdateServiceCollectionExtensions
{
    /// <summary>
    /// Registers <see cref="RebootlessUpdateOptions"/> (validated: an invalid setting fails the
    /// first resolve, or host start, with an <see cref="OptionsValidationException"/> naming it),
    /// the <see cref="IImageStore"/> (a <see cref="DirectoryImageStore"/> at the store folder),
    /// the <see cref="CriuClient"/>, <see cref="System.TimeProvider"/> (unless one is registered)
    /// and <see cref="RebootlessUpdater"/>, all singletons.
    /// </summary>
    /// <param name="services">The service collection.</param>
    /// <param name="configure">Sets the options.</param>
    /// <returns>The options builder, for more configuration or validation.</returns>
    public static OptionsBuilder<RebootlessUpdateOptions> AddRebootlessUpdate(this IServiceCollection services, Action<RebootlessUpdateOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        var builder = services.AddOptions<RebootlessUpdateOptions>();
        if (configure is not null)
        {
            builder.Configure(configure);
        }

        builder.ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<RebootlessUpdateOptions>, RebootlessUpdateOptionsValidator>());
        services.TryAddSingleton(TimeProvider.System);
        services.TryAddSingleton<IImageStore>(sp => new DirectoryImageStore(new DirectoryImageStoreOptions
        {
            RootDirectory = sp.GetRequiredService<IOptions<RebootlessUpdateOptions>>().Value.StoreDirectory,
            ManifestKeyPath = sp.GetRequiredService<IOptions<RebootlessUpdateOptions>>().Value.ManifestKeyPath,
            TimeProvider = sp.GetRequiredService<TimeProvider>(),
            Logger = sp.GetService<ILoggerFactory>()?.CreateLogger("RebootlessUpdate.Images"),
        }));
        services.TryAddSingleton(sp => new CriuClient(new CriuClientOptions
        {
            CriuPath = sp.GetRequiredService<IOptions<RebootlessUpdateOptions>>().Value.CriuPath,
            RequestTimeout = sp.GetRequiredService<IOptions<RebootlessUpdateOptions>>().Value.CriuRequestTimeout,
            LoggerFactory = sp.GetService<ILoggerFactory>() ?? NullLoggerFactory.Instance,
        }));
        services.TryAddSingleton<RebootlessUpdater>();
        return builder;
    }
}
