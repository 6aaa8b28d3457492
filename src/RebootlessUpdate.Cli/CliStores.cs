using RebootlessUpdate.Images;
using RebootlessUpdate.Images.Luo;
using RebootlessUpdate.Kexec;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;

namespace RebootlessUpdate.Cli;

/// <summary>Opens the store the settings name, after the checks that must come first (bad input changes nothing).</summary>
internal static class CliStores
{
    /// <summary>
    /// Root, criu (and kexec) usable, then the store opened (a new folder store is initialised here, so everything
    /// before must have passed).
    /// </summary>
    /// <param name="incomingSetId">For the LUO store on the kernel after the jump: the set whose session to receive (default: the resume marker's).</param>
    public static IImageStore Ready(CliInvocation c, bool needKexec, CancellationToken ct, bool mustExist = false, string? incomingSetId = null)
    {
        CliInvocation.RequireRoot(c.Parse.CommandResult.Command.Name);
        var s = c.Settings;
        if (s.PmemDevice is null && !s.Luo && (s.StoreFolder is not null || mustExist) && !Directory.Exists(s.StorePath))
        {
            throw MissingFolder(s.StorePath);
        }

        var report = Readiness.CheckAsync(c.Criu(), null, needKexec, false, ct).GetAwaiter().GetResult();
        // Before the store is opened (for LUO: before its tmpfs is mounted), whether it could cross the jump at all.
        var luo = s.Luo && needKexec ? LuoChecks().Where(x => !x.Ok).Select(x => x.Detail).ToList() : [];
        if (report.FirstFailure is { } f)
        {
            throw CliFailure.Of(Code(f.Problem!.Value), string.Join("; and ", [f.Detail, .. luo]));
        }

        if (luo.Count > 0)
        {
            throw CliFailure.Of(ExitCodes.BadStore, string.Join("; and ", luo) + "; nothing was changed",
                "use a persistent-memory store (--pmem DEVICE) here, or boot a kernel with the Live Update Orchestrator on");
        }

        return Open(c, mustExist, readOnly: false, incomingSetId);
    }

    /// <summary>The store, or a <see cref="CliFailure"/> saying why it cannot be used.</summary>
    public static IImageStore Open(CliInvocation c, bool mustExist, bool readOnly, string? incomingSetId = null)
    {
        var s = c.Settings;
        if (s.PmemDevice is { } device)
        {
            // Opening a pmem store may format and mount the device: a command that only looks uses it where it is mounted.
            return readOnly ? OpenMountedPmem(c, device) : OpenPmem(c, device);
        }

        if (s.Luo)
        {
            // A command that only looks reads the tmpfs where it is: it never mounts, and never takes the kernel's session.
            return readOnly ? OpenFolder(s.StorePath, readOnly: true, s.ManifestKey) : OpenLuo(c, incomingSetId ?? ResumeMarker());
        }

        if (s.StoreMount is not null)
        {
            throw CliFailure.Of(ExitCodes.Usage, "--store-mount goes with --pmem DEVICE or --store luo", "for a folder store use --store DIR");
        }

        if ((s.StoreFolder is not null || mustExist) && !Directory.Exists(s.StorePath))
        {
            throw MissingFolder(s.StorePath);
        }

        return OpenFolder(s.StorePath, readOnly, s.ManifestKey);
    }

    private static DirectoryImageStore OpenFolder(string path, bool readOnly, string? manifestKey)
    {
        try
        {
            return new DirectoryImageStore(new DirectoryImageStoreOptions { RootDirectory = path, ReadOnly = readOnly, ManifestKeyPath = manifestKey });
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ImageStoreException)
        {
            throw CliFailure.Of(ExitCodes.BadStore, $"{path} cannot be used as a store: {e.Message}");
        }
    }

    private static LuoImageStore OpenLuo(CliInvocation c, string? incomingSetId)
    {
        try
        {
            // Mounts the private tmpfs when it is not there; on the kernel after a jump, receives the set's session into it.
            return LuoImageStore.Open(new LuoImageStoreOptions
            {
                MountPoint = c.Settings.StoreMount ?? new LuoImageStoreOptions().MountPoint,
                IncomingSetId = incomingSetId,
                ManifestKeyPath = c.Settings.ManifestKey,
            });
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ImageStoreException and not ImageStoreLockedException)
        {
            // (In use by another run is exit 11, as for every store.)
            throw CliFailure.Of(ExitCodes.BadStore, $"the LUO store cannot be used: {e.Message}");
        }
    }

    /// <summary>
    /// Whether a LUO store can cross a jump from this kernel: the device opens, and the jump is not systemd's (which
    /// ends the session's holder first).
    /// </summary>
    public static IReadOnlyList<ReadinessCheck> LuoChecks()
    {
        var probe = LuoProbe.Check();
        var checks = new List<ReadinessCheck>
        {
            new("luo", probe.Usable, probe.Usable ? probe.Detail : "the LUO store cannot be used here: " + probe.Detail, probe.Usable ? null : ReadinessProblem.StoreUnusable),
        };
        if (Readiness.HandoverJumpCheck() is { } jump)
        {
            checks.Add(jump);
        }

        return checks;
    }

    /// <summary>
    /// For <c>--store luo</c>: where the store is and whether the kernel still holds it (a line for status and images
    /// ls, which only look: they never take the session); null for other stores.
    /// </summary>
    public static string? LuoNote(CliSettings s)
    {
        if (!s.Luo)
        {
            return null;
        }

        var mount = Path.GetDirectoryName(s.StorePath)!;
        var incoming = Path.Combine(mount, "incoming");
        if (File.Exists(Path.Combine(mount, "holder")))
        {
            return $"LUO store: a receive was cut short; a holder process keeps the session ({File.ReadAllText(Path.Combine(mount, "holder")).Trim()}): "
                + "`rebootless resume --store luo` carries it on";
        }

        if (Directory.Exists(incoming))
        {
            return $"LUO store: a receive was cut short and nothing holds its session any more; what it got is in {incoming} (`rebootless resume --store luo` says what to do)";
        }

        if (Directory.Exists(s.StorePath))
        {
            return $"LUO store on the tmpfs at {mount}: handed to the kernel in session {LuoImageStore.SessionPrefix}SET at the next jump";
        }

        return ResumeMarker() is { } id
            ? $"LUO store not received yet: this kernel should hold it in session {LuoImageStore.SessionName(id)}; `rebootless resume --store luo` receives it"
            : $"LUO store: nothing at {mount} yet (rehearse or update makes it)";
    }

    /// <summary>The set the kernel command line's resume marker names, when it names one.</summary>
    private static string? ResumeMarker()
    {
        try
        {
            var id = KexecCommandLine.ReadCurrent().GetValue(RebootlessInfo.ResumeParameter);
            return id is not null && UpdateJournal.IsSetId(id) ? id : null;
        }
        catch (IOException)
        {
            return null;
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
