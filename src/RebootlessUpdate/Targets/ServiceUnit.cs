namespace RebootlessUpdate.Targets;

/// <summary>
/// The systemd service whose processes a target is: kept with the target's settings (and so in the journal),
/// so that every run that restores the tree, on this kernel or the next, hands it back to the unit.
/// </summary>
public sealed record ServiceUnit
{
    /// <summary>The unit's name, e.g. <c>web.service</c>.</summary>
    public required string Name { get; init; }

    /// <summary>The unit belongs to the calling user's service manager (<c>systemctl --user</c>), not the system's.</summary>
    public bool UserManager { get; init; }
}
