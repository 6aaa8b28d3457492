namespace RebootlessUpdate.Pipeline;

/// <summary>
/// Where <see cref="UpdatePipelineBuilder.AddStage(IUpdateStage, StagePosition, StageOptions?)"/> puts a stage:
/// right before or after a stage already in the builder, named when the stage is added (an unknown name is
/// refused then, listing the known ones). The default value, <see cref="Default"/>, puts it before the
/// pipeline's closing stages (Report and Cleanup of a rehearsal or resume, Jump of an update), or at the end
/// when there are none.
/// </summary>
public readonly record struct StagePosition
{
    private StagePosition(string stage, bool after)
    {
        Stage = stage;
        IsAfter = after;
    }

    /// <summary>
    /// Before the closing stages, else at the end: a custom stage of <c>RebootlessPipelines.Rehearsal()</c> runs
    /// after Restore while the sealed set still exists (Cleanup deletes it), and one of <c>Update()</c> runs before Jump.
    /// </summary>
    public static StagePosition Default => default;

    /// <summary>The stage the new one goes next to, or null for <see cref="Default"/>.</summary>
    public string? Stage { get; }

    /// <summary>True when the new stage goes after <see cref="Stage"/>, false when before it.</summary>
    public bool IsAfter { get; }

    /// <summary>Right before the stage named <paramref name="stage"/> (names are case-sensitive).</summary>
    /// <exception cref="ArgumentException">The name is null or blank.</exception>
    public static StagePosition Before(string stage) => new(RequireName(stage), after: false);

    /// <summary>Right after the stage named <paramref name="stage"/> (names are case-sensitive).</summary>
    /// <exception cref="ArgumentException">The name is null or blank.</exception>
    public static StagePosition After(string stage) => new(RequireName(stage), after: true);

    /// <inheritdoc/>
    public override string ToString() => Stage is null ? "before the closing stages" : $"{(IsAfter ? "after" : "before")} '{Stage}'";

    private static string RequireName(string stage)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(stage);
        return stage;
    }
}
