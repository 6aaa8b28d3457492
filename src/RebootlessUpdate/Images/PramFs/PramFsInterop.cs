using System.Runtime.InteropServices;

namespace RebootlessUpdate.Images.PramFs;

/// <summary><c>statfs</c>, for the file-system type of a mount point (Mono.Unix's statvfs has no f_type).</summary>
internal static partial class PramFsInterop
{
    /// <summary>FUSE_SUPER_MAGIC: f_type of every FUSE mount.</summary>
    internal const long FuseSuperMagic = 0x65735546;

    [LibraryImport("libc", EntryPoint = "statfs", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int StatFs(string path, out StatFsBuffer buffer);

    /// <summary>The file-system type of <paramref name="path"/>, or null when statfs fails (e.g. ENOTCONN of a dead FUSE daemon).</summary>
    internal static long? FileSystemType(string path) => StatFs(path, out var b) == 0 ? b.Type : null;

    /// <summary>struct statfs on x86_64 (120 bytes); f_type comes first.</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct StatFsBuffer
    {
        public long Type;
        public long BlockSize;
        public ulong Blocks, BlocksFree, BlocksAvailable, Files, FilesFree;
        public long FsId;
        public long NameLength, FragmentSize, Flags;
        public long Spare0, Spare1, Spare2, Spare3;
    }
}
