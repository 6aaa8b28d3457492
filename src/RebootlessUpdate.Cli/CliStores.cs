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
            return OpenPmem(c, device);
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
    }

    private static CliFailure MissingFolder(string path) =>
        CliFailure.Of(ExitCodes.BadStore, $"the store folder {path} does not exist", $"create it (mkdir -p {path}) or pass --store DIR");

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
