using Microsoft.Extensions.Logging;

namespace RebootlessUpdate.Images;

/// <summary>Log messages of the image stores (event ids 4000-4099).</summary>
internal static partial class Log
{
    [LoggerMessage(4000, LogLevel.Debug, "Created checkpoint set {SetId} in {Root}")]
    public static partial void SetCreated(ILogger logger, string setId, string root);

    [LoggerMessage(4001, LogLevel.Information, "Sealed checkpoint set {SetId}: {Files} files, {Bytes} bytes")]
    public static partial void SetSealed(ILogger logger, string setId, int files, long bytes);

    [LoggerMessage(4003, LogLevel.Debug, "Hashed {Files} files ({Bytes} bytes) of set {SetId} under {Folder} ahead of sealing")]
    public static partial void SetPrehashed(ILogger logger, string setId, string folder, int files, long bytes);

    [LoggerMessage(4002, LogLevel.Information, "Verified checkpoint set {SetId} ({Mode}): {Issues} problems")]
    public static partial void SetVerified(ILogger logger, string setId, VerificationMode mode, int issues);

    [LoggerMessage(4003, LogLevel.Information, "Deleted checkpoint set {SetId}")]
    public static partial void SetDeleted(ILogger logger, string setId);

    [LoggerMessage(4010, LogLevel.Information, "Formatting {Device} as ext4 labelled {Label} for the image store")]
    public static partial void Formatting(ILogger logger, string device, string label);

    [LoggerMessage(4011, LogLevel.Warning, "Mounting {Device} with DAX failed ({Reason}); mounted without DAX (page cache in between, still persistent)")]
    public static partial void DaxUnavailable(ILogger logger, string device, string reason);

    [LoggerMessage(4012, LogLevel.Information, "Mounted image store {Device} at {MountPoint} (dax: {Dax})")]
    public static partial void Mounted(ILogger logger, string device, string mountPoint, bool dax);

    [LoggerMessage(4013, LogLevel.Information, "Unmounted image store {MountPoint}")]
    public static partial void Unmounted(ILogger logger, string mountPoint);
}
