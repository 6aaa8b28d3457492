namespace RebootlessUpdate.Targets;

/// <summary>
/// The cgroup freezer as the stages use it: CRIU freezes a cgroup target itself, the stages only thaw one that a CRIU
/// which died left frozen. <see cref="HostCgroupFreezer"/> writes the host's cgroup files.
/// </summary>
internal interface ICgroupFreezer
{
    /// <summary>Thaws <paramref name="cgroup"/> (a cgroup folder, v1 freezer or v2) when it is frozen.</summary>
    /// <exception cref="IOException">The cgroup's freezer file cannot be read or written.</exception>
    /// <exception cref="UnauthorizedAccessException">Not allowed to write it.</exception>
    void Thaw(string cgroup);
}

/// <summary>The host's cgroup freezer.</summary>
internal sealed class HostCgroupFreezer : ICgroupFreezer
{
    /// <summary>The one instance.</summary>
    public static HostCgroupFreezer Instance { get; } = new();

    private HostCgroupFreezer()
    {
    }

    public void Thaw(string cgroup) => CgroupTarget.Thaw(cgroup);
}
