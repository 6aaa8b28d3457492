namespace RebootlessUpdate.Pipeline;

/// <summary>
/// Composes stages into an <see cref="UpdatePipeline"/>. Options are validated
/// when a stage is added; <see cref="Build"/> may be called once, after which the
/// builder refuses further use and the built pipeline is immutable.
/// A builder made for one kind of run (<see cref="UpdatePipelineBuilder(UpdateMode)"/>)
/// adds that run's standard stages and builds a pipeline that runs only contexts of that kind.
/// </summary>
public sealed class UpdatePipelineBuilder
{
    private readonly List<UpdatePipeline.Entry> _stages = [];
    private bool _built;

    /// <summary>A builder for a pipeline of custom stages only; it runs a context of any kind.</summary>
    public UpdatePipelineBuilder()
    {
    }

    /// <summary>A builder for one kind of run: the standard stages it adds are that run's, and the pipeline refuses a context of another kind.</summary>
    /// <param name="mode">What the pipeline's runs are for.</param>
    public UpdatePipelineBuilder(UpdateMode mode)
    {
        if (!Enum.IsDefined(mode))
        {
            throw new ArgumentOutOfRangeException(nameof(mode), mode, "not a kind of run");
        }

        Mode = mode;
    }

    /// <summary>The kind of run this pipeline is for, or null for a pipeline of custom stages only.</summary>
    public UpdateMode? Mode { get; }

    /// <summary>The clock for retry delays and timeouts. Default: <see cref="System.TimeProvider.System"/>.</summary>
    public TimeProvider TimeProvider { get; set; } = TimeProvider.System;

    /// <summary>The names of the stages added so far, in order.</summary>
    public IReadOnlyList<string> StageNames => [.. _stages.Select(s => s.Stage.Name)];

    /// <summary>Appends a stage.</summary>
    /// <param name="stage">The stage; its name must be unique in the pipeline.</param>
    /// <param name="options">Timeout and retries; default <see cref="StageOptions.Default"/>.</param>
    /// <exception cref="ArgumentException">The name is empty or taken, or the options are invalid.</exception>
    /// <exception cref="InvalidOperationException">The builder was already built.</exception>
    public UpdatePipelineBuilder AddStage(IUpdateStage stage, StageOptions? options = null)
    {
        ThrowIfBuilt();
        ArgumentNullException.ThrowIfNull(stage);
        var name = stage.Name;
        if (string.IsNullOrWhiteSpace(name))
        {
            throw new ArgumentException($"a stage of type {stage.GetType().Name} has no name; every stage needs a unique name.", nameof(stage));
        }

        if (_stages.Any(s => string.Equals(s.Stage.Name, name, StringComparison.Ordinal)))
        {
            throw new ArgumentException($"a stage named '{name}' is already in the pipeline; stage names must be unique.", nameof(stage));
        }

        options ??= StageOptions.Default;
        options.Validate(name);
        _stages.Add(new UpdatePipeline.Entry(stage, options));
        return this;
    }

    /// <summary>Appends a stage made of delegates (handy for platform hooks).</summary>
    /// <param name="name">The stage's unique name.</param>
    /// <param name="execute">Its work.</param>
    /// <param name="compensate">Its undo, or null when there is nothing to undo.</param>
    /// <param name="options">Timeout and retries.</param>
    public UpdatePipelineBuilder AddStage(string name, Func<UpdateContext, CancellationToken, ValueTask> execute,
        Func<UpdateContext, CancellationToken, ValueTask>? compensate = null, StageOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(execute);
        return AddStage(new DelegateStage(name, execute, compensate), options);
    }

    /// <summary>Builds the pipeline. The builder cannot be used afterwards.</summary>
    /// <exception cref="InvalidOperationException">No stage was added, or the builder was already built.</exception>
    public UpdatePipeline Build()
    {
        ThrowIfBuilt();
        if (_stages.Count == 0)
        {
            throw new InvalidOperationException("a pipeline needs at least one stage.");
        }

        _built = true;
        return new UpdatePipeline([.. _stages], TimeProvider, Mode);
    }

    private void ThrowIfBuilt()
    {
        if (_built)
        {
            throw new InvalidOperationException("this UpdatePipelineBuilder was already built; create a new builder for another pipeline.");
        }
    }

    private sealed class DelegateStage(string name, Func<UpdateContext, CancellationToken, ValueTask> execute,
        Func<UpdateContext, CancellationToken, ValueTask>? compensate) : IUpdateStage
    {
        public string Name => name;

        public ValueTask ExecuteAsync(UpdateContext context, CancellationToken cancellationToken) => execute(context, cancellationToken);

        public ValueTask CompensateAsync(UpdateContext context, CancellationToken cancellationToken) =>
            compensate is null ? ValueTask.CompletedTask : compensate(context, cancellationToken);
    }
}
