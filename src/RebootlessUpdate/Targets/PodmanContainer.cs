namespace RebootlessUpdate.Targets;

/// <summary>
/// The podman container a target is: kept with the target's settings (and so in the journal). Podman dumps and
/// restores it itself (<c>podman container checkpoint --export</c>, <c>podman container restore --import</c>), because
/// only podman's own restore gives podman its record of the container back: after the update <c>podman ps</c> shows
/// the same container id running and <c>podman stop</c> works (see <see cref="Stages.PodmanHandover"/>).
/// </summary>
public sealed record PodmanContainer
{
    /// <summary>The container's full id (64 hex digits): the same after the restore.</summary>
    public required string Id { get; init; }

    /// <summary>Its name, e.g. <c>web</c>.</summary>
    public required string Name { get; init; }

    /// <summary>The podman binary that dumped it, and restores it.</summary>
    public string Binary { get; init; } = "podman";

    /// <summary>How long one podman checkpoint or restore may take.</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromMinutes(5);

    /// <summary>Whether <paramref name="id"/> is a full container id as podman gives it: 64 lower-case hex digits.</summary>
    internal static bool IsFullId(string? id) => id is { Length: 64 } && id.All(char.IsAsciiHexDigitLower);
}
