using Microsoft.Extensions.Logging;

namespace RebootlessUpdate.Images.Luo;

/// <summary>Options of a <see cref="LuoImageStore"/>. Immutable; validated by <see cref="LuoImageStore.Open"/>.</summary>
public sealed record LuoImageStoreOptions
{
    /// <summary>Where the store's private tmpfs is mounted (default <c>/run/rebootless/luo</c>; mounted 0700 when it is not).</summary>
    public string MountPoint { get; init; } = "/run/rebootless/luo";

    /// <summary>The Live Update Orchestrator's device (default <c>/dev/liveupdate</c>).</summary>
    public string DevicePath { get; init; } = "/dev/liveupdate";

    /// <summary>
    /// On the kernel after the jump: the set whose session to receive (from the resume marker on the command line, or
    /// named by the operator) when the store has not been received in this boot. Default null: receive nothing.
    /// </summary>
    public string? IncomingSetId { get; init; }

    /// <summary>Clock for set times (default <see cref="TimeProvider.System"/>).</summary>
    public TimeProvider TimeProvider { get; init; } = TimeProvider.System;

    /// <summary>File holding this host's id (default <c>/etc/machine-id</c>).</summary>
    public string MachineIdPath { get; init; } = "/etc/machine-id";

    /// <summary>Logger (default: none).</summary>
    public ILogger? Logger { get; init; }

    /// <summary>
    /// A root-only key file outside the store: when set, every seal writes a keyed hash of the manifest and
    /// verification refuses a set without a valid one (see <see cref="DirectoryImageStoreOptions.ManifestKeyPath"/>).
    /// Default null: no keyed hash.
    /// </summary>
    public string? ManifestKeyPath { get; init; }
}
