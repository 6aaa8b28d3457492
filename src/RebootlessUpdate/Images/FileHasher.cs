using System.Buffers;
using System.IO.Hashing;
using Microsoft.Win32.SafeHandles;

namespace RebootlessUpdate.Images;

/// <summary>Streams a file through XxHash128 with one large buffer (sequential reads, no per-block allocation).</summary>
internal static class FileHasher
{
    internal const int BufferSize = 1 << 20;

    /// <summary>Hashes the whole file; returns the hex digest and how many bytes were read.</summary>
    internal static (string Hash, long Length) Hash(SafeFileHandle handle, CancellationToken cancellationToken)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(BufferSize);
        try
        {
            var hasher = new XxHash128();
            long offset = 0;
            int n;
            while ((n = RandomAccess.Read(handle, buffer.AsSpan(0, BufferSize), offset)) > 0)
            {
                hasher.Append(buffer.AsSpan(0, n));
                offset += n;
                cancellationToken.ThrowIfCancellationRequested();
            }

            return (ManifestFormat.Hex(hasher.GetCurrentHash()), offset);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Hashes the regular file at <paramref name="path"/> (no final link followed, a FIFO refused without blocking).</summary>
    internal static (string Hash, long Length) Hash(string path, CancellationToken cancellationToken)
    {
        using var handle = StoreFiles.OpenRegular(path);
        return Hash(handle, cancellationToken);
    }
}
