using System.Buffers;
using System.Collections.Concurrent;
using Microsoft.Win32.SafeHandles;
using RebootlessUpdate.Criu;

namespace RebootlessUpdate.Images;

/// <summary>
/// Checks the page images of a sealed set chunk by chunk against the manifest's chunk hashes, each chunk the first
/// time any page of it is asked for, so that a page served on demand never reaches a running target unverified.
/// A chunk found damaged stays damaged (every later ask fails the same way). Thread-safe; disposing closes the files.
/// </summary>
internal sealed class PageChunkVerifier : IPageChunkVerifier, IDisposable
{
    private readonly string _images;
    private readonly Dictionary<string, ManifestEntry> _entries;
    private readonly ConcurrentDictionary<(string Path, long Chunk), Lazy<string?>> _chunks = new();
    private readonly ConcurrentDictionary<string, SafeFileHandle> _handles = new(StringComparer.Ordinal);
    private int _disposed;

    /// <param name="imagesDirectory">The set's images folder, which the manifest's paths are relative to.</param>
    /// <param name="manifest">The set's manifest, already read and checked.</param>
    internal PageChunkVerifier(string imagesDirectory, CheckpointManifest manifest)
    {
        _images = Path.GetFullPath(imagesDirectory);
        _entries = manifest.Files.Where(f => f.ChunkXxh128 is not null).ToDictionary(f => f.Path, StringComparer.Ordinal);
    }

    /// <summary>How many chunks have been hashed so far.</summary>
    internal int ChunksVerified => _chunks.Count;

    /// <summary>Whether the manifest has chunk hashes for any page image (sets sealed before them have none).</summary>
    internal bool HasChunkHashes => _entries.Count > 0;

    /// <summary>
    /// Checks every chunk of the page image at <paramref name="path"/> that <paramref name="offset"/> and
    /// <paramref name="length"/> touch, unless already checked.
    /// </summary>
    /// <exception cref="PageChunkDamagedException">A chunk's bytes differ from the recorded hash, the file is cut short, or it is not a page image the manifest hashed.</exception>
    internal void Verify(string path, long offset, int length, CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(_disposed != 0, this);
        var relative = Path.GetRelativePath(_images, Path.GetFullPath(path)).Replace('\\', '/');
        if (!_entries.TryGetValue(relative, out var entry))
        {
            throw new PageChunkDamagedException(path, offset, "it is not a page image that the set's manifest hashed in chunks");
        }

        var size = entry.ChunkSize!.Value;
        if (offset < 0 || length <= 0 || offset + length > entry.Size)
        {
            throw new PageChunkDamagedException(path, offset, $"{length} bytes there lie outside the {entry.Size} bytes the manifest records");
        }

        for (var chunk = offset / size; chunk <= (offset + length - 1) / size; chunk++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var index = chunk;
            var problem = _chunks.GetOrAdd((relative, chunk), _ => new Lazy<string?>(() => Check(path, relative, entry, index))).Value;
            if (problem is not null)
            {
                throw new PageChunkDamagedException(path, chunk * size, problem);
            }
        }
    }

    /// <inheritdoc/>
    public ValueTask VerifyAsync(string file, long offset, int length, CancellationToken cancellationToken)
    {
        Verify(file, offset, length, cancellationToken);
        return ValueTask.CompletedTask;
    }

    /// <summary>Hashes one chunk; returns what is wrong with it, or null.</summary>
    private string? Check(string path, string relative, ManifestEntry entry, long chunk)
    {
        var size = entry.ChunkSize!.Value;
        var expected = (int)Math.Min(size, entry.Size - (chunk * size));
        var buffer = ArrayPool<byte>.Shared.Rent(expected);
        try
        {
            var handle = _handles.GetOrAdd(relative, _ => StoreFiles.OpenRegular(path));
            var read = FileHasher.ReadChunk(handle, buffer.AsSpan(0, expected), chunk * size);
            if (read < expected)
            {
                return $"the file ends {read} bytes into this {expected}-byte chunk (cut short)";
            }

            var hash = FileHasher.HashOf(buffer.AsSpan(0, expected));
            var recorded = entry.ChunkXxh128![(int)chunk];
            return hash == recorded ? null : $"the chunk's hash is {hash}, the manifest records {recorded}: the bytes were altered";
        }
        catch (IOException e)
        {
            return $"it cannot be read: {e.Message}";
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        foreach (var handle in _handles.Values)
        {
            handle.Dispose();
        }
    }
}

/// <summary>A chunk of a page image failed its check: its pages are not served, and the target that needs them must not run on.</summary>
public sealed class PageChunkDamagedException : ImageStoreException
{
    /// <summary>Creates the exception for the chunk of <paramref name="file"/> at <paramref name="offset"/>.</summary>
    public PageChunkDamagedException(string file, long offset, string reason)
        : base($"{file} at offset {offset}: {reason}; its pages were not served")
    {
        File = file;
        Offset = offset;
        Reason = reason;
    }

    /// <summary>Creates the exception.</summary>
    public PageChunkDamagedException()
    {
        File = Reason = string.Empty;
    }

    /// <summary>Creates the exception.</summary>
    public PageChunkDamagedException(string message)
        : base(message)
    {
        File = Reason = string.Empty;
    }

    /// <summary>Creates the exception.</summary>
    public PageChunkDamagedException(string message, Exception innerException)
        : base(message, innerException)
    {
        File = Reason = string.Empty;
    }

    /// <summary>The page image.</summary>
    public string File { get; }

    /// <summary>Where the damaged chunk starts in it.</summary>
    public long Offset { get; }

    /// <summary>What is wrong.</summary>
    public string Reason { get; }
}
