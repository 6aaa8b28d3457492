namespace RebootlessUpdate.Pipeline;

/// <summary>
/// Composes stages into an <see cref="UpdatePipeline"/>. Options are validated
/// when a stage is added; <see cref="Build"/> may be called once, after which the
/// builder refuses further use and the built pipeline is immutable.
/// A builder made for one kind of run (<see cref="UpdatePipelineBuilder(UpdateMode)"/>)
/// adds that run's standard stages and builds a pipeline that runs only contexts of that kind.
/// Custom stages go where a <see cref="StagePosition"/> says, and by default before the run's closing
/// stages (Report and Cleanup, or Jump), so they see the run's set and workloads.
/// </summary>
public sealed class UpdatePipelineBuilder
{
    private readonly List<UpdatePipeline.Entry> _stages = [];
    private readonly Dictionary<string, string> _closing = new(StringComparer.Ordinal);
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

    /// <summary>The stage named <paramref name="name"/>, as added.</summary>
    internal IUpdateStage Stage(string name) => _stages.Single(s => s.Stage.Name == name).Stage;

    /// <summary>
    /// Adds a stage before the pipeline's closing stages (see <see cref="StagePosition.Default"/>): after Restore and
    /// before Report and Cleanup in a rehearsal or resume, before Jump in an update; at the end when there are none.
    /// </summary>
    /// <param name="stage">The stage; its name must be unique in the pipeline.</param>
    /// <param name="options">Timeout and retries; default <see cref="StageOptions.Default"/>.</param>
    /// <exception cref="ArgumentException">The name is empty or taken, or the options are invalid.</exception>
    /// <exception cref="InvalidOperationException">The builder was already built.</exception>
    public UpdatePipelineBuilder AddStage(IUpdateStage stage, StageOptions? options = null) => AddStage(stage, StagePosition.Default, options);

    /// <summary>Adds a stage at <paramref name="position"/>, e.g. <c>StagePosition.Before("Dump")</c>.</summary>
    /// <param name="stage">The stage; its name must be unique in the pipeline.</param>
    /// <param name="position">Next to which stage already added; nothing may go after a closing stage (Report, Cleanup, Jump).</param>
    /// <param name="options">Timeout and retries; default <see cref="StageOptions.Default"/>.</param>
    /// <exception cref="ArgumentException">
    /// The name is empty or taken, the options are invalid, the position names no stage of the builder (the message
    /// lists them), or it falls after a closing stage.
    /// </exception>
    /// <exception cref="InvalidOperationException">The builder was already built.</exception>
    public UpdatePipelineBuilder AddStage(IUpdateStage stage, StagePosition position, StageOptions? options = null)
    {
        var entry = Validated(stage, options);
        _stages.Insert(IndexFor(entry.Stage.Name, position), entry);
        return this;
    }

    /// <summary>Adds a stage made of delegates (handy for platform hooks) before the closing stages, like <see cref="AddStage(IUpdateStage, StageOptions?)"/>.</summary>
    /// <param name="name">The stage's unique name.</param>
    /// <param name="execute">Its work.</param>
    /// <param name="compensate">Its undo, or null when there is nothing to undo.</param>
    /// <param name="options">Timeout and retries.</param>
    public UpdatePipelineBuilder AddStage(string name, Func<UpdateContext, CancellationToken, ValueTask> execute,
        Func<UpdateContext, CancellationToken, ValueTask>? compensate = null, StageOptions? options = null) =>
        AddStage(name, StagePosition.Default, execute, compensate, options);

    /// <summary>Adds a stage made of delegates at <paramref name="position"/>, like <see cref="AddStage(IUpdateStage, StagePosition, StageOptions?)"/>.</summary>
    /// <param name="name">The stage's unique name.</param>
    /// <param name="position">Next to which stage already added.</param>
    /// <param name="execute">Its work.</param>
    /// <param name="compensate">Its undo, or null when there is nothing to undo.</param>
    /// <param name="options">Timeout and retries.</param>
    public UpdatePipelineBuilder AddStage(string name, StagePosition position, Func<UpdateContext, CancellationToken, ValueTask> execute,
        Func<UpdateContext, CancellationToken, ValueTask>? compensate = null, StageOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(execute);
        return AddStage(new DelegateStage(name, execute, compensate), position, options);
    }

    /// <summary>Appends a standard stage: standard stages go in the order they are added, and none after a closing stage.</summary>
    /// <exception cref="InvalidOperationException">A closing stage was added already.</exception>
    internal UpdatePipelineBuilder AppendStage(IUpdateStage stage, StageOptions? options = null)
    {
        var entry = Validated(stage, options);
        if (_closing.Count > 0)
        {
            var closing = _stages.Where(s => _closing.ContainsKey(s.Stage.Name)).Select(s => s.Stage.Name).ToList();
            throw new InvalidOperationException($"{entry.Stage.Name} must come before {string.Join(" and ", closing)}: nothing runs after the run's "
                + $"closing stages ({string.Join("; ", closing.Select(c => _closing[c]))}).");
        }

        _stages.Add(entry);
        return this;
    }

    /// <summary>Appends a standard stage that closes the run (after the other closing ones): nothing may be added after it; <paramref name="why"/> says why.</summary>
    internal UpdatePipelineBuilder AppendClosingStage(IUpdateStage stage, string why)
    {
        _stages.Add(Validated(stage, null));
        _closing[stage.Name] = why;
        return this;
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

    private UpdatePipeline.Entry Validated(IUpdateStage stage, StageOptions? options)
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
        return new UpdatePipeline.Entry(stage, options);
    }

    /// <summary>Where a stage named <paramref name="name"/> goes: next to the named stage, never after a closing one.</summary>
    private int IndexFor(string name, StagePosition position)
    {
        var firstClosing = _stages.FindIndex(s => _closing.ContainsKey(s.Stage.Name));
        if (position.Stage is not { } anchor)
        {
            return firstClosing < 0 ? _stages.Count : firstClosing;
        }

        var index = _stages.FindIndex(s => string.Equals(s.Stage.Name, anchor, StringComparison.Ordinal));
        if (index < 0)
        {
            var known = _stages.Count == 0 ? "no stages yet" : "these stages: " + string.Join(", ", StageNames);
            throw new ArgumentException($"there is no stage named '{anchor}' to put '{name}' {(position.IsAfter ? "after" : "before")} it; "
                + $"the pipeline has {known} (names are case-sensitive).", nameof(position));
        }

        var at = position.IsAfter ? index + 1 : index;
        if (firstClosing >= 0 && at > firstClosing)
        {
            var closing = _stages.Skip(firstClosing).Where(s => _closing.ContainsKey(s.Stage.Name)).Select(s => s.Stage.Name).ToList();
            var first = closing[0];
            throw new ArgumentException($"'{name}' cannot go {position}: nothing may run after the run's closing stages ("
                + string.Join("; ", closing.Select(c => _closing[c])) + $"). Put it before '{first}' (plain AddStage does): "
                + "the run's set and workloads are still there.", nameof(position));
        }

        return at;
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
