namespace RebootlessUpdate.Targets;

/// <summary>
/// The systemd scope a target's tree runs in (runc's systemd cgroup driver puts a container in <c>runc-ID.scope</c>):
/// kept with the target's settings (and so in the journal), so that every run that restores the tree, on this kernel
/// or the next, has systemd hold it in that scope again (see <see cref="Stages.ScopeHandback"/>).
/// </summary>
public sealed record ScopeUnit
{
    /// <summary>The scope's name, e.g. <c>runc-web.scope</c>.</summary>
    public required string Name { get; init; }

    /// <summary>Its cgroup, e.g. <c>/system.slice/runc-web.scope</c>: the restored tree must be there again.</summary>
    public required string ControlGroup { get; init; }

    /// <summary>The slice it is in, e.g. <c>system.slice</c>.</summary>
    public required string Slice { get; init; }

    /// <summary>Its description, as <c>systemctl status</c> shows it.</summary>
    public string? Description { get; init; }

    /// <summary>Its cgroup is delegated to the processes in it (runc's scopes are).</summary>
    public bool Delegate { get; init; }

    /// <summary>
    /// Its resource limits and device rules as <c>systemd-run -p</c> assignments (<c>MemoryMax=268435456</c>,
    /// <c>CPUQuota=50%</c>, <c>DevicePolicy=strict</c>, <c>DeviceAllow=/dev/char/1:3 rwm</c>, ...): given to the scope
    /// again, so the restored tree is held to them as before. Empty when it had none.
    /// </summary>
    public IReadOnlyList<string> Properties { get; init; } = [];
}
