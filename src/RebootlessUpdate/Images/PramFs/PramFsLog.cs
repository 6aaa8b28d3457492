using Microsoft.Extensions.Logging;

namespace RebootlessUpdate.Images;

/// <summary>Log messages of the PramFS store (event ids 4050-4069).</summary>
internal static partial class PramFsLog
{
    [LoggerMessage(4050, LogLevel.Information, "Formatting PramFS region {Region}")]
    public static partial void Formatting(ILogger logger, string region);

    [LoggerMessage(4051, LogLevel.Information, "Checked PramFS region {Region}: exit {ExitCode}: {Output}")]
    public static partial void Checked(ILogger logger, string region, int exitCode, string output);

    [LoggerMessage(4052, LogLevel.Warning, "Repaired PramFS region {Region}: {Output}")]
    public static partial void Repaired(ILogger logger, string region, string output);

    [LoggerMessage(4053, LogLevel.Information, "PramFS daemon {Pid} serves {Region} at {MountPoint}")]
    public static partial void Mounted(ILogger logger, int pid, string region, string mountPoint);

    [LoggerMessage(4054, LogLevel.Information, "Unmounted PramFS at {MountPoint}; daemon exited")]
    public static partial void Unmounted(ILogger logger, string mountPoint);

    [LoggerMessage(4055, LogLevel.Warning, "libpramfs cannot be loaded, so fsck and info run the pramfs tool {Tool} instead (build native-pramfs to get libpramfs.so next to it): {Reason}")]
    public static partial void LibraryUnavailable(ILogger logger, string tool, string reason);

    [LoggerMessage(4056, LogLevel.Debug, "fsck and info of PramFS regions use libpramfs from {Path}")]
    public static partial void LibraryLoaded(ILogger logger, string path);
}
