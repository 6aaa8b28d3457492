using System.Buffers;
using System.IO.Hashing;
using Microsoft.Win32.SafeHandles;

namespace RebootlessUpdate.Images;

/// <summary>A file's XxHash128, its length as read, and the XxHash128 of each chunk when asked for.</summary>
/// <param name="Hash">The whole file's hash, 32 lowercase hex digits.</param>
/// <param name="Length">How many bytes were read.</param>
/// <param name="Chunks">Each <see cref="FileHasher.ChunkSize"/> bytes' hash in order (the last chunk may be shorter); null unless asked for.</param>
internal sealed record FileDigest(string Hash, long Length, IReadOnlyList<string>? Chunks);

/// <summary>
/// Streams a file through XxHash128 with one large buffer (sequential reads, no per-block allocation),
/// and hashes each chunk of it on the way when asked: page images get chunk hashes so that a page
/// served on demand can be checked without reading the whole image first.
/// </summary>
internal static class FileHasher
{
    /// <summary>The read buffer, and the chunk that chunk hashes cover: 1 MiB.</summary>
    internal const int ChunkSize = 1 << 20;

    /// <summary>Hashes the whole file, and each chunk too when <paramref name="chunks"/>.</summary>
    internal static FileDigest Hash(SafeFileHandle handle, bool chunks, CancellationToken cancellationToken)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(ChunkSize);
        try
        {
            var whole = new XxHash128();
            var chunkHashes = chunks ? new List<string>() : null;
            long offset = 0;
            int filled;
            while ((filled = ReadChunk(handle, buffer.AsSpan(0, ChunkSize), offset)) > 0)
            {
                var chunk = buffer.AsSpan(0, filled);
                whole.Append(chunk);
                chunkHashes?.Add(ManifestFormat.Hex(XxHash128.Hash(chunk)));
                offset += filled;
                cancellationToken.ThrowIfCancellationRequested();
                if (filled < ChunkSize)
                {
                    break;
                }
            }

            return new FileDigest(ManifestFormat.Hex(whole.GetCurrentHash()), offset, chunkHashes);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Hashes the regular file at <paramref name="path"/> (no final link followed, a FIFO refused without blocking).</summary>
    internal static FileDigest Hash(string path, bool chunks, CancellationToken cancellationToken)
    {
        using var handle = StoreFiles.OpenRegular(path);
        return Hash(handle, chunks, cancellationToken);
    }

    /// <summary>The hash of <paramref name="data"/>, as the manifest writes it.</summary>
    internal static string HashOf(ReadOnlySpan<byte> data) => ManifestFormat.Hex(XxHash128.Hash(data));

    /// <summary>Fills <paramref name="chunk"/> from <paramref name="offset"/> unless the file ends first; returns how much it read.</summary>
    internal static int ReadChunk(SafeFileHandle handle, Span<byte> chunk, long offset)
    {
        var filled = 0;
        int n;
        while (filled < chunk.Length && (n = RandomAccess.Read(handle, chunk[filled..], offset + filled)) > 0)
        {
            filled += n;
        }

        return filled;
    }
}
