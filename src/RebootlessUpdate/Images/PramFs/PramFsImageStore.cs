using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using RebootlessUpdate.Images.PramFs;

namespace RebootlessUpdate.Images;

/// <summary>
/// An image store on PramFS (native-pramfs): a crash-consistent, checksummed
/// file system in a memory region that survives kexec (a legacy-pmem
/// <c>/dev/pmemN</c>) or in a file. <see cref="Open"/> formats a region only
/// when it is all zero, checks an existing one with fsck before anything is
/// mounted or restored, starts the FUSE daemon and waits until the mount is
/// live; the sets inside follow MANIFEST.md like every folder store. fsck and
/// <see cref="ReadInfo"/> call libpramfs in this process (P/Invoke); only when
/// it cannot be loaded do they run the <c>pramfs</c> tool (logged as a warning).
/// </summary>
public sealed class PramFsImageStore : EngineBackedImageStore, IDisposable
{
    private readonly PramFsDaemon _daemon;
    private readonly ILogger _logger;
    private readonly TimeSpan _timeout;

    private PramFsImageStore(PramFsDaemon daemon, PramFsImageStoreOptions options, string region, bool formatted, PramFsCheckResult? check, ILogger logger)
    {
        _daemon = daemon;
        _logger = logger;
        _timeout = options.DaemonTimeout;
        Region = region;
        Formatted = formatted;
        Check = check;
        Engine = new SetStoreEngine(this, daemon.MountPoint, options.TimeProvider, options.MachineIdPath, logger, manifestKeyPath: options.ManifestKeyPath);
    }

    /// <summary>The region (or comma-separated regions) holding the file system.</summary>
    public string Region { get; }

    /// <summary>Where the store is mounted.</summary>
    public string MountPoint => _daemon.MountPoint;

    /// <summary>True when <see cref="Open"/> formatted the region (it was all zero).</summary>
    public bool Formatted { get; }

    /// <summary>The check run before mounting an existing file system (null when it was just formatted).</summary>
    public PramFsCheckResult? Check { get; }

    /// <summary>Process id of the FUSE daemon.</summary>
    public int DaemonPid => _daemon.Pid;

    /// <summary>True until <see cref="Unmount"/>.</summary>
    public bool IsMounted { get; private set; } = true;

    /// <summary>
    /// Formats the region when it is all zero (or checks it when it already holds
    /// PramFS), mounts it with the <c>pramfs</c> daemon and opens the store in it.
    /// </summary>
    /// <exception cref="ImageStoreException">The region holds something else, the tool is missing, the mount point is taken, or the daemon failed (its stderr is in the message).</exception>
    /// <exception cref="PramFsCheckFailedException">The existing file system is damaged and <see cref="PramFsImageStoreOptions.RepairOnOpen"/> is off.</exception>
    public static PramFsImageStore Open(PramFsImageStoreOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentException.ThrowIfNullOrWhiteSpace(options.Region);
        ArgumentException.ThrowIfNullOrWhiteSpace(options.MountPoint);
        ArgumentException.ThrowIfNullOrWhiteSpace(options.MachineIdPath);
        ArgumentNullException.ThrowIfNull(options.TimeProvider);
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(options.DaemonTimeout, TimeSpan.Zero);
        var logger = options.Logger ?? NullLogger.Instance;
        var tool = PramFsTool.Locate(options.PramFsPath);
        var regions = FullPaths(options.Region);
        var mountPoint = Path.GetFullPath(options.MountPoint);

        if (PramFs.PramFsInterop.FileSystemType(mountPoint) == PramFsInterop.FuseSuperMagic)
        {
            throw new ImageStoreException($"{mountPoint} is already a FUSE mount; unmount it (fusermount3 -u {mountPoint}) before opening the PramFS store there");
        }

        var formatted = false;
        PramFsCheckResult? check = null;
        var timeout = TimeSpan.FromMinutes(10);
        switch (PramFsTool.Probe(regions))
        {
            case RegionContent.Foreign:
                throw new ImageStoreException(
                    $"refusing to format {regions}: its first 64 KiB hold data that is not a PramFS. "
                    + "If its content is really disposable, zero it yourself (e.g. wipefs -a, or dd from /dev/zero) and try again");
            case RegionContent.Empty:
                PramFsLog.Formatting(logger, regions);
                var (mkfsCode, mkfsOutput) = PramFsTool.Run(tool, ["mkfs", regions], timeout);
                if (mkfsCode != 0)
                {
                    throw new ImageStoreException($"pramfs mkfs {regions} failed (exit {mkfsCode}): {mkfsOutput.Trim()}");
                }

                formatted = true;
                break;
            default:
                var library = options.CheckInProcess && UseLibrary(tool, logger);
                check = RunCheck(tool, library, regions, repair: false, timeout);
                PramFsLog.Checked(logger, regions, check.ExitCode, check.Output.Trim());
                if (check.ExitCode == PramFsTool.FsckCorrupt && options.RepairOnOpen)
                {
                    check = RunCheck(tool, library, regions, repair: true, timeout);
                    PramFsLog.Repaired(logger, regions, check.Output.Trim());
                }

                if (check.ExitCode is PramFsTool.FsckCorrupt)
                {
                    throw new PramFsCheckFailedException(regions, check);
                }

                if (check.ExitCode is not (PramFsTool.FsckClean or PramFsTool.FsckRepaired))
                {
                    throw new ImageStoreException($"cannot check the PramFS region {regions} (fsck exit {check.ExitCode}): {check.Output.Trim()}");
                }

                break;
        }

        Directory.CreateDirectory(mountPoint, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        var daemon = PramFsDaemon.Start(tool, regions, mountPoint, options.DaemonTimeout, options.TimeProvider);
        PramFsLog.Mounted(logger, daemon.Pid, regions, mountPoint);
        try
        {
            return new PramFsImageStore(daemon, options, regions, formatted, check, logger);
        }
        catch
        {
            daemon.Stop(options.DaemonTimeout);
            throw;
        }
    }

    /// <summary>
    /// Checks (or with <paramref name="repair"/> repairs) an unmounted PramFS region: every checksum.
    /// Runs through libpramfs in this process when it loads (a region that faults when read then takes
    /// this process down), else the <c>pramfs fsck</c> tool (with a warning).
    /// </summary>
    /// <param name="region">The region (or comma-separated regions).</param>
    /// <param name="repair">Drop what fails its checksums and commit (only on an unmounted region).</param>
    /// <param name="pramFsPath">The <c>pramfs</c> tool (its folder also holds the library); default: found on PATH or in the build.</param>
    /// <param name="logger">Where the library-or-tool choice is logged.</param>
    public static PramFsCheckResult CheckRegion(string region, bool repair = false, string? pramFsPath = null, ILogger? logger = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(region);
        var tool = PramFsTool.Locate(pramFsPath);
        return RunCheck(tool, UseLibrary(tool, logger ?? NullLogger.Instance), FullPaths(region), repair, TimeSpan.FromMinutes(10));
    }

    /// <summary>
    /// Reads what a region's superblock and metadata say (format version, uuid, generation, sizes, free
    /// space, counts), with libpramfs, or with <c>pramfs info</c> when the library cannot be loaded.
    /// Read-only; metadata checksums are verified, data checksums are not (that is fsck's job).
    /// The region must not be mounted (the daemon holds it exclusively).
    /// </summary>
    /// <param name="region">A region, or several comma-separated (as for <see cref="PramFsImageStoreOptions.Region"/>).</param>
    /// <param name="pramFsPath">The <c>pramfs</c> tool (see <see cref="PramFsImageStoreOptions.PramFsPath"/>); libpramfs.so is looked up next to it.</param>
    /// <param name="logger">Logs which of library and tool was used.</param>
    /// <exception cref="ImageStoreException">The region cannot be read, is mounted, is not a PramFS, or is damaged (run fsck).</exception>
    public static PramFsInfo ReadInfo(string region, string? pramFsPath = null, ILogger? logger = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(region);
        logger ??= NullLogger.Instance;
        var tool = PramFsTool.Locate(pramFsPath);
        var regions = FullPaths(region);
        if (UseLibrary(tool, logger))
        {
            return PramFsNative.ReadInfo(regions);
        }

        var (code, output) = PramFsTool.Run(tool, ["info", regions], TimeSpan.FromMinutes(2));
        if (code != 0)
        {
            throw new ImageStoreException($"cannot read the PramFS info of {regions} (pramfs info exit {code}): {output.Trim()}");
        }

        try
        {
            return PramFsInfo.Parse(output);
        }
        catch (FormatException e)
        {
            throw new ImageStoreException($"{tool} info {regions} printed something this version cannot read ({e.Message}); is the tool from the same build?", e);
        }
    }

    private static string FullPaths(string regions) => string.Join(',', regions.Split(',').Select(Path.GetFullPath));

    /// <summary>True when libpramfs is loaded (logged); false after a warning naming why and that the tool runs instead.</summary>
    private static bool UseLibrary(string tool, ILogger logger)
    {
        if (PramFsNative.TryLoad(tool, out var reason))
        {
            PramFsLog.LibraryLoaded(logger, PramFsNative.LoadedFrom!);
            return true;
        }

        PramFsLog.LibraryUnavailable(logger, tool, reason);
        return false;
    }

    private static PramFsCheckResult RunCheck(string tool, bool library, string regions, bool repair, TimeSpan timeout)
    {
        if (library)
        {
            return PramFsNative.Check(regions, repair);
        }

        var (code, output) = PramFsTool.Run(tool, repair ? ["fsck", "-r", regions] : ["fsck", regions], timeout);
        return new PramFsCheckResult(code, output);
    }

    /// <summary>
    /// Unmounts: the daemon commits the last state and exits. The store cannot be used afterwards.
    /// </summary>
    /// <exception cref="ImageStoreException">The mount is busy, or the daemon failed (its stderr is in the message).</exception>
    public void Unmount()
    {
        if (!IsMounted)
        {
            return;
        }

        _daemon.Stop(_timeout);
        IsMounted = false;
        PramFsLog.Unmounted(_logger, MountPoint);
    }

    /// <summary>Unmounts (see <see cref="Unmount"/>).</summary>
    public void Dispose() => Unmount();
}
