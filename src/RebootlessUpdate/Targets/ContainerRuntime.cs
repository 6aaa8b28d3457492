namespace RebootlessUpdate.Targets;

/// <summary>
/// The runc container a target is: kept with the target's settings (and so in the journal), so that every run that
/// restores the tree, on this kernel or the next, gives runc its state back and <c>runc state ID</c> shows the
/// restored container running (see <see cref="Stages.ContainerHandback"/>).
/// </summary>
public sealed record ContainerRuntime
{
    /// <summary>The container's id, e.g. <c>web</c>.</summary>
    public required string Id { get; init; }

    /// <summary>runc's state folder (its <c>--root</c>): <c>/run/runc</c> unless runc was told otherwise.</summary>
    public required string StateRoot { get; init; }
}
