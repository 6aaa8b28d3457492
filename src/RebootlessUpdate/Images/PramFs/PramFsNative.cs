using System.Reflection;
using System.Runtime.InteropServices;
using System.Text;

namespace RebootlessUpdate.Images.PramFs;

/// <summary>
/// libpramfs.so (native-pramfs/include/pramfs_api.h, API version 1) through P/Invoke: info and fsck
/// of a region in this process instead of spawning the <c>pramfs</c> tool. The library is looked up
/// next to the tool (the CMake build puts both in native-pramfs/build), in the tool's <c>../lib</c>,
/// then by the loader's usual search; it is loaded once per process.
/// </summary>
internal static unsafe partial class PramFsNative
{
    /// <summary>The name the imports use; the resolver maps it to the loaded library.</summary>
    private const string Library = "pramfs";

    /// <summary>PRAMFS_API_VERSION this binding was written against.</summary>
    internal const int ApiVersion = 1;

    private const int ReportBytes = 64 * 1024;

    private static readonly Lock Gate = new();
    private static nint _library;

    /// <summary>Where the loaded library came from (null until <see cref="TryLoad"/> succeeds).</summary>
    internal static string? LoadedFrom { get; private set; }

    /// <summary>Loads the library (once per process); false with the reason when it cannot be used.</summary>
    /// <param name="tool">The <c>pramfs</c> tool in use; its folder is searched first.</param>
    /// <param name="reason">Why it cannot be used: every place tried and what the loader said.</param>
    internal static bool TryLoad(string? tool, out string reason)
    {
        lock (Gate)
        {
            reason = string.Empty;
            if (_library != 0)
            {
                return true;
            }

            var tried = new List<string>();
            foreach (var candidate in Candidates(tool))
            {
                if (Path.IsPathRooted(candidate) && !File.Exists(candidate))
                {
                    tried.Add($"{candidate}: no such file");
                    continue;
                }

                nint handle;
                try
                {
                    handle = NativeLibrary.Load(candidate);
                }
                catch (Exception e) when (e is DllNotFoundException or BadImageFormatException)
                {
                    tried.Add($"{candidate}: {e.Message}");
                    continue;
                }

                if (!NativeLibrary.TryGetExport(handle, "pramfs_api_version", out var export))
                {
                    tried.Add($"{candidate}: has no pramfs_api_version (not libpramfs)");
                    NativeLibrary.Free(handle);
                    continue;
                }

                var version = ((delegate* unmanaged<int>)export)();
                if (version != ApiVersion)
                {
                    tried.Add($"{candidate}: API version {version}, this build needs {ApiVersion}");
                    NativeLibrary.Free(handle);
                    continue;
                }

                NativeLibrary.SetDllImportResolver(typeof(PramFsNative).Assembly, Resolve);
                _library = handle;
                LoadedFrom = candidate;
                return true;
            }

            reason = string.Join("; ", tried);
            return false;
        }
    }

    private static IEnumerable<string> Candidates(string? tool)
    {
        if (tool is not null && Path.GetDirectoryName(Path.GetFullPath(tool)) is { } dir)
        {
            yield return Path.Combine(dir, "libpramfs.so");
            yield return Path.GetFullPath(Path.Combine(dir, "..", "lib", "libpramfs.so.1"));
        }

        yield return "libpramfs.so.1";
    }

    private static nint Resolve(string name, Assembly assembly, DllImportSearchPath? path) => name == Library ? _library : 0;

    /// <summary>Reads the superblock and metadata of the newest intact state (read-only).</summary>
    /// <exception cref="ImageStoreException">The region cannot be opened, is in use, not a PramFS, or damaged (the library's message).</exception>
    internal static PramFsInfo ReadInfo(string regions)
    {
        var handle = OpenRegions(regions);
        try
        {
            var info = default(InfoNative);
            info.StructSize = (uint)sizeof(InfoNative);
            var rc = InfoOf(handle, &info);
            if (rc != 0)
            {
                throw new ImageStoreException($"cannot read the PramFS info of {regions}: {LastError()}");
            }

            return new PramFsInfo
            {
                FormatVersion = (int)info.FormatVersion,
                Uuid = new Guid(new ReadOnlySpan<byte>(info.Uuid, 16), bigEndian: true),
                Generation = (long)info.Generation,
                SizeBytes = (long)info.SizeBytes,
                BlockSize = (int)info.BlockSize,
                RegionCount = (int)info.RegionCount,
                DataBlocks = (long)info.DataBlocks,
                FreeBlocks = (long)info.FreeBlocks,
                FreeBytes = (long)info.FreeBytes,
                Inodes = (long)info.Inodes,
                Files = (long)info.Files,
                Directories = (long)info.Directories,
                Symlinks = (long)info.Symlinks,
                FileBytes = (long)info.FileBytes,
                MetadataAreaBytes = (long)info.MetadataAreaBytes,
                MetadataBytes = (long)info.MetadataBytes,
                CreatedUnixNanoseconds = info.CreatedNs,
                CommittedUnixNanoseconds = info.CommittedNs,
            };
        }
        finally
        {
            Close(handle);
        }
    }

    /// <summary>fsck: every checksum and the structure; with <paramref name="repair"/> drops what cannot be trusted.</summary>
    /// <returns>The status (0 clean, 1 repaired, 2 corrupt, 4 could not check) and the report <c>pramfs fsck</c> prints.</returns>
    /// <exception cref="ImageStoreException">The region cannot be opened (the library's message).</exception>
    internal static PramFsCheckResult Check(string regions, bool repair)
    {
        var handle = OpenRegions(regions);
        try
        {
            var result = default(FsckNative);
            result.StructSize = (uint)sizeof(FsckNative);
            var report = new byte[ReportBytes];
            int status;
            fixed (byte* r = report)
            {
                status = Fsck(handle, repair ? 1u : 0u, &result, r, (nuint)report.Length);
            }

            if (status < 0)
            {
                throw new ImageStoreException($"pramfs_fsck of {regions} failed: {LastError()}");
            }

            return new PramFsCheckResult(status, Encoding.UTF8.GetString(report.AsSpan(0, report.AsSpan().IndexOf((byte)0))))
            {
                FirstProblem = Utf8Z(new ReadOnlySpan<byte>(result.FirstProblem, 1024)),
                Problems = result.Problems,
            };
        }
        finally
        {
            Close(handle);
        }
    }

    private static nint OpenRegions(string regions)
    {
        var rc = Open(regions, out var handle);
        return rc == 0 ? handle : throw new ImageStoreException($"cannot open the PramFS region {regions}: {LastError()}");
    }

    private static string LastError()
    {
        var buffer = stackalloc byte[1024];
        _ = LastErrorOf(buffer, 1024);
        return Utf8Z(new ReadOnlySpan<byte>(buffer, 1024));
    }

    private static string Utf8Z(ReadOnlySpan<byte> bytes)
    {
        var end = bytes.IndexOf((byte)0);
        return Encoding.UTF8.GetString(end < 0 ? bytes : bytes[..end]);
    }

    [LibraryImport(Library, EntryPoint = "pramfs_open", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string regions, out nint handle);

    [LibraryImport(Library, EntryPoint = "pramfs_close")]
    private static partial void Close(nint handle);

    [LibraryImport(Library, EntryPoint = "pramfs_info")]
    private static partial int InfoOf(nint handle, InfoNative* info);

    [LibraryImport(Library, EntryPoint = "pramfs_fsck")]
    private static partial int Fsck(nint handle, uint mode, FsckNative* result, byte* report, nuint reportSize);

    [LibraryImport(Library, EntryPoint = "pramfs_last_error")]
    private static partial nuint LastErrorOf(byte* buffer, nuint size);

    /// <summary>struct pramfs_info (208 bytes).</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct InfoNative
    {
        public uint StructSize;
        public uint FormatVersion;
        public fixed byte Uuid[16];
        public ulong Generation;
        public ulong SizeBytes;
        public uint BlockSize;
        public uint RegionCount;
        public ulong DataBlocks, FreeBlocks, FreeBytes, Inodes, Files, Directories, Symlinks, FileBytes;
        public ulong MetadataAreaBytes, MetadataBytes;
        public long CreatedNs, CommittedNs;
        public fixed byte Reserved[64];
    }

    /// <summary>struct pramfs_fsck_result (1088 bytes).</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct FsckNative
    {
        public uint StructSize;
        public int Status;
        public int Problems;
        public int Notes;
        public ulong Generation, Inodes, FileBytes;
        public fixed byte Reserved[24];
        public fixed byte FirstProblem[1024];
    }
}
