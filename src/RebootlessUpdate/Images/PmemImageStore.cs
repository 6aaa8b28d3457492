using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using RebootlessUpdate.Images.Interop;

namespace RebootlessUpdate.Images;

/// <summary>Options of a <see cref="PmemImageStore"/>. Immutable; validated by <see cref="PmemImageStore.Open"/>.</summary>
public sealed record PmemImageStoreOptions
{
    /// <summary>The pmem block device (e.g. <c>/dev/pmem0</c>); default: the first legacy-pmem region found.</summary>
    public string? Device { get; init; }

    /// <summary>Where to mount the store (default <c>/run/rebootless/store</c>; created 0700).</summary>
    public string MountPoint { get; init; } = "/run/rebootless/store";

    /// <summary>The ext4 label that marks a device as ours (default <c>rebootless</c>; at most 16 bytes).</summary>
    public string Label { get; init; } = "rebootless";

    /// <summary>Clock for set times (default <see cref="TimeProvider.System"/>).</summary>
    public TimeProvider TimeProvider { get; init; } = TimeProvider.System;

    /// <summary>File holding this host's id (default <c>/etc/machine-id</c>).</summary>
    public string MachineIdPath { get; init; } = "/etc/machine-id";

    /// <summary>Path or name of mkfs.ext4 (default <c>mkfs.ext4</c> from PATH).</summary>
    public string MkfsPath { get; init; } = "mkfs.ext4";

    /// <summary>Logger (default: none). The DAX fallback is logged as a warning.</summary>
    public ILogger? Logger { get; init; }
    /// <summary>
    /// A root-only key file outside the store: when set, every seal writes a keyed hash of the manifest and
    /// verification refuses a set without a valid one (see <see cref="DirectoryImageStoreOptions.ManifestKeyPath"/>).
    /// Default null: no keyed hash.
    /// </summary>
    public string? ManifestKeyPath { get; init; }
}

/// <summary>
/// An image store on a legacy persistent-memory region (<c>memmap=SIZE!START</c>,
/// <c>/dev/pmemN</c>): survives kexec as long as the next kernel gets the same
/// <see cref="PmemRegion.MemmapFragment"/>. The device is formatted as ext4 with
/// our label only when it holds no signature at all; a device holding anything
/// else is refused. Mounted with DAX when the kernel allows it.
/// </summary>
public sealed class PmemImageStore : EngineBackedImageStore, IDisposable
{
    private const ulong MsNoSuid = 2;
    private const ulong MsNoDev = 4;
    private const ulong MsNoExec = 8;

    private readonly ILogger _logger;

    private PmemImageStore(PmemRegion region, string mountPoint, bool dax, bool formatted, PmemImageStoreOptions options, ILogger logger)
    {
        Region = region;
        MountPoint = mountPoint;
        DaxEnabled = dax;
        Formatted = formatted;
        _logger = logger;
        IsMounted = true;
        Engine = new SetStoreEngine(this, mountPoint, options.TimeProvider, options.MachineIdPath, logger, manifestKeyPath: options.ManifestKeyPath);
    }

    /// <summary>The region and device holding the store.</summary>
    public PmemRegion Region { get; }

    /// <summary>Where the store is mounted.</summary>
    public string MountPoint { get; }

    /// <summary>True when the file system is mounted with DAX (no page cache between the store and the region).</summary>
    public bool DaxEnabled { get; }

    /// <summary>True when this call formatted the device (it held nothing before).</summary>
    public bool Formatted { get; }

    /// <summary>True until <see cref="Unmount"/>.</summary>
    public bool IsMounted { get; private set; }

    /// <summary>
    /// Finds the region, formats it when it holds nothing, mounts it (DAX first)
    /// and opens the store in it. An already mounted store at the mount point is reused.
    /// </summary>
    /// <exception cref="ImageStoreException">No region, the device holds something else, it is mounted elsewhere, or mkfs/mount failed.</exception>
    public static PmemImageStore Open(PmemImageStoreOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentException.ThrowIfNullOrWhiteSpace(options.MountPoint);
        ArgumentException.ThrowIfNullOrWhiteSpace(options.Label);
        ArgumentNullException.ThrowIfNull(options.TimeProvider);
        if (System.Text.Encoding.UTF8.GetByteCount(options.Label) > 16)
        {
            throw new ArgumentException("an ext4 label holds at most 16 bytes", nameof(options));
        }

        var logger = options.Logger ?? NullLogger.Instance;
        var regions = PmemRegion.Discover();
        var region = options.Device is null
            ? (regions.Count > 0 ? regions[0] : null) ?? throw new ImageStoreException(
                "no legacy persistent-memory region found (no \"Persistent Memory (legacy)\" in /proc/iomem with a /dev/pmemN): "
                + "boot with memmap=SIZE!START (e.g. memmap=64M!512M) and load nd_e820 and nd_pmem")
            : regions.FirstOrDefault(r => r.Device == options.Device) ?? throw new ImageStoreException(
                $"{options.Device} is not a legacy persistent-memory region (found: {(regions.Count == 0 ? "none" : string.Join(", ", regions.Select(r => r.Device)))})");

        var mountPoint = Path.GetFullPath(options.MountPoint);
        var mounts = MountInfo.Read().Where(m => m.Source == region.Device).ToList();
        if (mounts.FirstOrDefault(m => m.MountPoint == mountPoint) is { } existing)
        {
            return new PmemImageStore(region, mountPoint, existing.Dax, formatted: false, options, logger);
        }

        if (mounts.Count > 0)
        {
            throw new ImageStoreException($"{region.Device} is mounted at {mounts[0].MountPoint}; unmount it first (the store mounts it at {mountPoint})");
        }

        var (kind, description) = DeviceProbe.Probe(region.Device, options.Label);
        var formatted = false;
        switch (kind)
        {
            case DeviceContentKind.Foreign:
                throw new ImageStoreException(
                    $"refusing to format {region.Device}: it holds {description}, not an image store labelled '{options.Label}'. "
                    + "If its content is really disposable, wipe it yourself (e.g. wipefs -a) and try again");
            case DeviceContentKind.Empty:
                Log.Formatting(logger, region.Device, options.Label);
                var (code, output) = Tools.Run(options.MkfsPath,
                    ["-q", "-F", "-t", "ext4", "-L", options.Label, "-b", "4096", "-m", "0", "-E", "nodiscard", region.Device], TimeSpan.FromMinutes(5));
                if (code != 0)
                {
                    throw new ImageStoreException($"mkfs.ext4 on {region.Device} failed (exit {code}): {output.Trim()}");
                }

                formatted = true;
                break;
        }

        Directory.CreateDirectory(Path.GetDirectoryName(mountPoint)!);
        Directory.CreateDirectory(mountPoint);
        var flags = MsNoSuid | MsNoDev | MsNoExec;
        var dax = true;
        if (Libc.Mount(region.Device, mountPoint, "ext4", flags, "dax") != 0)
        {
            var errno = Marshal.GetLastPInvokeError();
            Log.DaxUnavailable(logger, region.Device, Marshal.GetPInvokeErrorMessage(errno));
            dax = false;
            if (Libc.Mount(region.Device, mountPoint, "ext4", flags, null) != 0)
            {
                throw new ImageStoreException($"cannot mount {region.Device} at {mountPoint}: {Libc.Error("mount", Marshal.GetLastPInvokeError()).Message}");
            }
        }

        // ext4 may accept "dax" yet turn it off for a device without DAX support; trust the kernel's view.
        var mounted = MountInfo.Read().LastOrDefault(m => m.MountPoint == mountPoint);
        if (dax && mounted is { Dax: false })
        {
            Log.DaxUnavailable(logger, region.Device, "the kernel mounted without it");
            dax = false;
        }

        Log.Mounted(logger, region.Device, mountPoint, dax);
        try
        {
            return new PmemImageStore(region, mountPoint, dax, formatted, options, logger);
        }
        catch
        {
            _ = Libc.Umount2(mountPoint, 0);
            throw;
        }
    }

    /// <summary>Flushes and unmounts the store; it cannot be used afterwards.</summary>
    /// <exception cref="ImageStoreException">The mount is busy (a process still uses the store).</exception>
    public void Unmount()
    {
        if (!IsMounted)
        {
            return;
        }

        Libc.Sync();
        if (Libc.Umount2(MountPoint, 0) != 0)
        {
            var errno = Marshal.GetLastPInvokeError();
            throw new ImageStoreException($"cannot unmount the image store at {MountPoint}: {Libc.Error("umount", errno).Message}"
                + (errno == Libc.EBusy ? "; a process still has files open there" : string.Empty));
        }

        IsMounted = false;
        Log.Unmounted(_logger, MountPoint);
    }

    /// <summary>Unmounts (see <see cref="Unmount"/>).</summary>
    public void Dispose() => Unmount();
}
