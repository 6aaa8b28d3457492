using RebootlessUpdate.Images;
using RebootlessUpdate.Stages;

namespace RebootlessUpdate.Cli;

/// <summary>Opens the store the settings name, after the checks that must come first (bad input changes nothing).</summary>
internal static class CliStores
{
    /// <summary>
    /// Root, criu (and kexec) usable, then the store opened (a new folder store is initialised here, so everything
    /// before must have passed).
    /// </summary>
    public static IImageStore Ready(CliInvocation c, bool needKexec, CancellationToken ct, bool mustExist = false)
    {
        CliInvocation.RequireRoot(c.Parse.CommandResult.Command.Name);
        var s = c.Settings;
        if (s.PmemDevice is null && (s.StoreFolder is not null || mustExist) && !Directory.Exists(s.StorePath))
        {
            throw MissingFolder(s.StorePath);
        }

        var report = Readiness.CheckAsync(c.Criu(), null, needKexec, false, ct).GetAwaiter().GetResult();
        if (report.FirstFailure is { } f)
        {
            throw CliFailure.Of(Code(f.Problem!.Value), f.Detail);
        }

        return Open(c, mustExist, readOnly: false);
    }

    /// <summary>The store, or a <see cref="CliFailure"/> saying why it cannot be used.</summary>
    public static IImageStore Open(CliInvocation c, bool mustExist, bool readOnly)
    {
        var s = c.Settings;
        if (s.PmemDevice is { } device)
        {
            // Opening a pmem store may format and mount the device: a command that only looks uses it where it is mounted.
            return readOnly ? OpenMountedPmem(c, device) : OpenPmem(c, device);
        }

        if (s.StoreMount is not null)
        {
            throw CliFailure.Of(ExitCodes.Usage, "--store-mount goes with --pmem DEVICE", "for a folder store use --store DIR");
        }

        if ((s.StoreFolder is not null || mustExist) && !Directory.Exists(s.StorePath))
        {
            throw MissingFolder(s.StorePath);
        }

        try
        {
            return new DirectoryImageStore(new DirectoryImageStoreOptions { RootDirectory = s.StorePath, ReadOnly = readOnly, ManifestKeyPath = s.ManifestKey });
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ImageStoreException)
        {
            throw CliFailure.Of(ExitCodes.BadStore, $"{s.StorePath} cannot be used as a store: {e.Message}");
        }
    }

    private static PmemImageStore OpenPmem(CliInvocation c, string device)
    {
        if (c.Value(CliOptions.Store) is not null)
        {
            throw CliFailure.Of(ExitCodes.Usage, "give either --store DIR or --pmem DEVICE, not both");
        }

        try
        {
            // Formats the device only when it holds nothing; a device holding anything but our store is refused.
            // The mount is left in place: the store must stay reachable until the jump and for `resume`.
            return PmemImageStore.Open(new PmemImageStoreOptions
            {
                Device = device,
                MountPoint = c.Settings.StoreMount ?? new PmemImageStoreOptions().MountPoint,
                ManifestKeyPath = c.Settings.ManifestKey,
            });
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ImageStoreException)
        {
            throw CliFailure.Of(ExitCodes.BadStore, $"{device} cannot be used as a store: {e.Message}");
        }
        catch (ArgumentException e)
        {
            throw CliFailure.Of(ExitCodes.Usage, $"--pmem {device}: {e.Message}");
        }
    }

    /// <summary>The store on <paramref name="device"/> where it is mounted now, read-only; never formats or mounts.</summary>
    private static DirectoryImageStore OpenMountedPmem(CliInvocation c, string device)
    {
        if (c.Value(CliOptions.Store) is not null)
        {
            throw CliFailure.Of(ExitCodes.Usage, "give either --store DIR or --pmem DEVICE, not both");
        }

        var mount = MountInfo.Read().LastOrDefault(m => m.Source == device)
            ?? throw CliFailure.Of(ExitCodes.BadStore, $"the store on {device} is not mounted, so there is nothing to look at yet",
                "rehearse, update and resume mount it (and format an empty device)");
        try
        {
            return new DirectoryImageStore(new DirectoryImageStoreOptions { RootDirectory = mount.MountPoint, ReadOnly = true, ManifestKeyPath = c.Settings.ManifestKey });
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ImageStoreException)
        {
            throw CliFailure.Of(ExitCodes.BadStore, $"the store on {device} (mounted at {mount.MountPoint}) cannot be read: {e.Message}");
        }
    }

    /// <summary>True when <paramref name="device"/> is mounted (its store can be looked at without mounting anything).</summary>
    public static bool IsMounted(string device) => MountInfo.Read().Any(m => m.Source == device);

    /// <summary>The size of the block device <paramref name="device"/> (from /sys/class/block).</summary>
    public static long DeviceBytes(string device)
    {
        try
        {
            var name = Path.GetFileName(new FileInfo(device).ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? device);
            return long.Parse(File.ReadAllText($"/sys/class/block/{name}/size").Trim(), System.Globalization.CultureInfo.InvariantCulture) * 512;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException)
        {
            throw CliFailure.Of(ExitCodes.BadStore, $"--pmem {device}: not a block device this host knows ({e.Message})", "give the persistent-memory device, e.g. /dev/pmem0");
        }
    }

    private static CliFailure MissingFolder(string path) => Path.Exists(path) || new FileInfo(path).LinkTarget is not null
        ? CliFailure.Of(ExitCodes.BadStore, $"the store {path} is not a folder", "give a folder with --store DIR")
        : CliFailure.Of(ExitCodes.BadStore, $"the store folder {path} does not exist", $"create it with mkdir -p {path}, or pass --store DIR");

    public static int Code(ReadinessProblem problem) => problem switch
    {
        ReadinessProblem.NotRoot => ExitCodes.NotRoot,
        ReadinessProblem.CriuMissing => ExitCodes.CriuMissing,
        ReadinessProblem.CriuTooOld => ExitCodes.CriuTooOld,
        ReadinessProblem.CriuUnusable => ExitCodes.CriuUnusable,
        ReadinessProblem.KexecUnavailable => ExitCodes.KexecUnavailable,
        _ => ExitCodes.BadStore,
    };
}
