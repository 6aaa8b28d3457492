using System.Globalization;
using Microsoft.Extensions.Logging.Abstractions;
using RebootlessUpdate.Images.Interop;

namespace RebootlessUpdate.Images.Luo;

/// <summary>
/// An image store that needs no memory reserved at boot: its sets live on a private tmpfs, and right before the jump
/// the whole store is handed to the kernel's Live Update Orchestrator in one session named after the set (each file
/// unlinked and preserved as it is: no copy). On the new kernel, opening the store with
/// <see cref="LuoImageStoreOptions.IncomingSetId"/> receives that session into the tmpfs again and finishes it; from
/// there it is a folder store whose sets are verified against their manifests like any other.
/// </summary>
/// <remarks>
/// The session lives only while the process that made it holds it: the jump must be made by that process
/// (reboot(LINUX_REBOOT_CMD_KEXEC)), not by <c>systemctl kexec</c>, which ends it first. A resume killed while it
/// receives does not lose the store: the session is held by a process of its own from the moment it is retrieved
/// (<see cref="LuoSessionHolder"/>), and the next resume takes it over and receives it whole.
/// </remarks>
public sealed class LuoImageStore : EngineBackedImageStore, IKexecHandoverStore
{
    /// <summary>Session names: this prefix and the set id.</summary>
    public const string SessionPrefix = "rebootless-";

    /// <summary>The source name of the store's own tmpfs mount (how it is told from any other tmpfs).</summary>
    internal const string MountSource = "rebootless-luo";

    /// <summary>Memory the capacity check leaves to the system besides the store.</summary>
    private const long SystemReserveBytes = 256L << 20;

    private readonly LuoImageStoreOptions _options;

    private LuoImageStore(LuoImageStoreOptions options, string mountPoint)
    {
        _options = options;
        MountPoint = mountPoint;
        Engine = new SetStoreEngine(this, StoreFolder(mountPoint), options.TimeProvider, options.MachineIdPath, options.Logger ?? NullLogger.Instance,
            manifestKeyPath: options.ManifestKeyPath)
        {
            CapacityLimit = c => new StoreCapacity(c.TotalBytes, Math.Min(c.FreeBytes, MemoryFree())),
            CapacityNote = CapacityRule,
        };
    }

    /// <summary>The private tmpfs the store lives on.</summary>
    public string MountPoint { get; }

    /// <summary>The session received when this store was opened; null when none was.</summary>
    public LuoReceipt? Received { get; private set; }

    /// <summary>
    /// Why the session of <see cref="LuoImageStoreOptions.IncomingSetId"/> was not received (there is none on this
    /// kernel: a cold boot, or a kernel without LUO); null when it was, or when none was asked for or needed.
    /// </summary>
    public string? NotReceived { get; private set; }

    /// <summary>The session that carries set <paramref name="setId"/> across the jump.</summary>
    public static string SessionName(string setId) => SessionPrefix + setId;

    /// <summary>The store's folder on the tmpfs mounted at <paramref name="mountPoint"/>.</summary>
    public static string StoreFolder(string mountPoint) => Path.Combine(Path.GetFullPath(mountPoint), "store");

    /// <summary>Where a receive writes before the folder becomes the store.</summary>
    internal static string IncomingFolder(string mountPoint) => Path.Combine(Path.GetFullPath(mountPoint), "incoming");

    /// <summary>
    /// Mounts the private tmpfs (0700) unless it is there, receives the session of
    /// <see cref="LuoImageStoreOptions.IncomingSetId"/> when the store has not been received in this boot, and opens it.
    /// </summary>
    /// <exception cref="ImageStoreLockedException">Another process is mounting the store's tmpfs, opening the store or receiving into it.</exception>
    /// <exception cref="ImageStoreException">
    /// The tmpfs cannot be mounted, the mount point is a symbolic link or holds another file system, an earlier receive was
    /// cut short, or the kernel refused the session.
    /// </exception>
    public static LuoImageStore Open(LuoImageStoreOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentException.ThrowIfNullOrWhiteSpace(options.MountPoint);
        ArgumentNullException.ThrowIfNull(options.TimeProvider);
        if (options.IncomingSetId is { } id && !SetStoreEngine.SetIdPattern().IsMatch(id))
        {
            throw new ArgumentException($"'{id}' is not a checkpoint set id", nameof(options));
        }

        var mountPoint = Path.GetFullPath(options.MountPoint);
        LuoStoreMount.Ensure(mountPoint);
        using var opening = LuoStoreMount.LockOpening(mountPoint);
        var (received, notReceived) = LuoStoreReceiver.Run(options, mountPoint);
        return new LuoImageStore(options, mountPoint)
        {
            Received = received,
            NotReceived = notReceived,
        };
    }

    /// <inheritdoc />
    public bool CanHandOver(out string reason)
    {
        var probe = LuoProbe.Check(_options.DevicePath);
        reason = probe.Usable ? string.Empty : probe.Detail;
        return probe.Usable;
    }

    /// <inheritdoc />
    public IKexecHandover HandOver(string setId)
    {
        ArgumentNullException.ThrowIfNull(setId);
        LuoDevice? device = null;
        try
        {
            device = LuoDevice.Open(_options.DevicePath);
            // The lock stays (its holder keeps it until the jump); sockets and FIFOs left by criu mean nothing on the next kernel.
            var sent = LuoFolderHandover.Send(device, SessionName(setId), RootDirectory, static (path, special) => special || path == ".lock");
            return new LuoHandover(device, sent);
        }
        catch (Exception e) when (e is LuoException or IOException or UnauthorizedAccessException)
        {
            device?.Dispose();
            throw new ImageStoreException($"handing the store {RootDirectory} to LUO session {SessionName(setId)}: {e.Message}", e);
        }
    }

    /// <summary>How the free space of a LUO store is counted, in words.</summary>
    internal const string CapacityRule = "a LUO store is held in memory: at most what the system has available less 256 MiB, "
        + "and its tmpfs takes at most half of the memory; after the jump it is held twice while it is received";

    /// <summary>
    /// The bytes a store on the tmpfs at <paramref name="mountPoint"/> may still take: its free space (half the
    /// memory when it is not mounted yet, tmpfs's default size) and no more than the memory available less a reserve.
    /// </summary>
    internal static long FreeBytes(string mountPoint)
    {
        var mounted = MountInfo.Read().Any(m => m.MountPoint == Path.GetFullPath(mountPoint) && m.FileSystem == "tmpfs");
        var tmpfs = mounted ? new DriveInfo(mountPoint).AvailableFreeSpace : Meminfo("MemTotal") / 2;
        return Math.Min(tmpfs, MemoryFree());
    }

    private static long MemoryFree() => Math.Max(0, Meminfo("MemAvailable") - SystemReserveBytes);

    /// <summary>A line of /proc/meminfo, in bytes.</summary>
    private static long Meminfo(string name)
    {
        foreach (var line in File.ReadLines("/proc/meminfo"))
        {
            if (line.StartsWith(name + ":", StringComparison.Ordinal)
                && long.TryParse(line[(name.Length + 1)..].Replace("kB", "", StringComparison.Ordinal).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var kib))
            {
                return kib * 1024;
            }
        }

        throw new ImageStoreException($"/proc/meminfo has no {name} line: the memory a LUO store may take is unknown");
    }
}

/// <summary>What a store received from its LUO session held.</summary>
/// <param name="Session">The session's name.</param>
/// <param name="Files">Files written into the store.</param>
/// <param name="Bytes">Their bytes.</param>
/// <param name="Elapsed">How long retrieving and writing them took.</param>
/// <param name="Problems">Files left out, and why (the set's verification then names what is missing).</param>
public sealed record LuoReceipt(string Session, int Files, long Bytes, TimeSpan Elapsed, IReadOnlyList<string> Problems)
{
    /// <summary>True when an earlier resume had retrieved the session and was stopped: this one took it over from its holder.</summary>
    public bool TakenOver { get; init; }

    /// <summary>What went wrong without costing the store (e.g. no holder process could be started); null when nothing did.</summary>
    public string? Warning { get; init; }
}

/// <summary>A store handed to LUO: the device and the session held until the jump.</summary>
internal sealed class LuoHandover(LuoDevice device, LuoSentFolder sent) : IKexecHandover
{
    public string Carrier => $"LUO session {sent.SessionName}";

    public int Files => sent.Files;

    public long Bytes => sent.Bytes;

    public void GiveBack()
    {
        try
        {
            sent.GiveBack();
        }
        catch (IOException e)
        {
            throw new ImageStoreException(e.Message, e);
        }
        finally
        {
            device.Dispose();
        }
    }

    public void Dispose() => GiveBack();
}
