using System.Collections.Concurrent;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;

namespace RebootlessUpdate.Criu;

/// <summary>
/// Serves pages straight from a dump's images folder: the pagemap of the asked process says where each page is, in
/// this folder's pages image or, for <see cref="CriuPageState.Parent"/> entries, up the chain of <c>parent</c> links to
/// the pre-dumps (as criu/pagemap.c <c>read_parent_page</c> does). Pagemaps are parsed once and pages images opened
/// once; reads are positional, so any number may run at once.
/// </summary>
public sealed class CriuImagesPageSource : ILazyPageSource, IDisposable
{
    /// <summary>The most parent links a lookup follows: a longer chain is refused as damaged.</summary>
    public const int MaxChainLength = 64;

    private const int PageSize = ILazyPageSource.PageSize;

    private readonly IPageChunkVerifier? _verifier;
    private readonly Lock _chainLock = new();
    private readonly List<Folder> _chain;
    private readonly ConcurrentDictionary<string, Lazy<SafeFileHandle>> _files = new(StringComparer.Ordinal);
    private string? _chainEnd;
    private bool _chainBroken;
    private volatile bool _disposed;

    /// <summary>Creates a source over <paramref name="imagesDirectory"/>; nothing is read until pages are asked for.</summary>
    /// <param name="imagesDirectory">The images folder of the final dump, whose <c>parent</c> link (if any) leads to its pre-dumps.</param>
    /// <param name="verifier">Checks each range of a pages image before its bytes are served; none by default.</param>
    public CriuImagesPageSource(string imagesDirectory, IPageChunkVerifier? verifier = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(imagesDirectory);
        ImagesDirectory = Path.GetFullPath(imagesDirectory);
        _verifier = verifier;
        _chain = [new Folder(ImagesDirectory)];
    }

    /// <summary>The images folder of the final dump, as a full path.</summary>
    public string ImagesDirectory { get; }

    /// <inheritdoc/>
    /// <remarks>
    /// The pages come from one pagemap entry after another as long as the process's pagemap in the final dump covers
    /// the next address; each run of them is checked by the verifier, then read.
    /// </remarks>
    /// <exception cref="ArgumentException"><paramref name="address"/> is not page-aligned or <paramref name="destination"/> is not a whole number of pages.</exception>
    /// <exception cref="ObjectDisposedException">The source is disposed.</exception>
    public async ValueTask<int> ReadPagesAsync(int pid, ulong address, Memory<byte> destination, CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (address % PageSize != 0)
        {
            throw new ArgumentException($"address {address:x} is not page-aligned", nameof(address));
        }

        if (destination.Length == 0 || destination.Length % PageSize != 0 || (ulong)destination.Length > ulong.MaxValue - address)
        {
            throw new ArgumentException($"{destination.Length} bytes at {address:x} is not a whole number of pages in the address space", nameof(destination));
        }

        var runs = Resolve(pid, address, destination.Length / PageSize);
        var done = 0;
        foreach (var run in runs)
        {
            var length = run.Pages * PageSize;
            await ReadRunAsync(pid, address + (ulong)done, run, destination.Slice(done, length), cancellationToken).ConfigureAwait(false);
            done += length;
        }

        return done / PageSize;
    }

    /// <summary>
    /// Where the <paramref name="pages"/> pages of <paramref name="pid"/> from <paramref name="address"/> are: the ranges
    /// of pages images (full path, offset, length) that hold them, down the parent chain, without reading them. For the
    /// pages CRIU's restore reads itself, whose chunks must be checked before the tree runs.
    /// </summary>
    /// <exception cref="LazyPageSourceException">A page is not in the images.</exception>
    internal List<(string File, long Offset, int Length)> Locate(int pid, ulong address, ulong pages)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        const int MaxPagesAtOnce = 1 << 18; // 1 GiB: a range's length stays an int
        var found = new List<(string File, long Offset, int Length)>();
        for (ulong done = 0; done < pages;)
        {
            var runs = Resolve(pid, address + (done * PageSize), (int)Math.Min(pages - done, MaxPagesAtOnce), whole: true);
            found.AddRange(runs.Select(r => (r.File, r.Offset, r.Pages * PageSize)));
            done += (ulong)runs.Sum(r => r.Pages);
        }

        return found;
    }

    /// <summary>Closes the pages images. Call it once no read is in flight.</summary>
    public void Dispose()
    {
        _disposed = true;
        foreach (var file in _files.Values.Where(f => f.IsValueCreated))
        {
            file.Value.Dispose();
        }
    }

    /// <summary>
    /// Where the pages from <paramref name="address"/> are: runs of contiguous bytes in pages images, merged where they
    /// follow each other in one file, covering one page at least and <paramref name="pages"/> at most.
    /// </summary>
    /// <remarks>With <paramref name="whole"/>, a page the final dump does not hold fails the lookup even past the first.</remarks>
    private List<Run> Resolve(int pid, ulong address, int pages, bool whole = false)
    {
        var runs = new List<Run>();
        var done = 0;
        while (done < pages)
        {
            var at = address + ((ulong)done * PageSize);
            if (ResolveOne(pid, at, pages - done, first: whole || done == 0) is not { } run)
            {
                break;
            }

            if (runs.Count > 0 && runs[^1].File == run.File && runs[^1].Offset + ((long)runs[^1].Pages * PageSize) == run.Offset)
            {
                runs[^1] = runs[^1] with { Pages = runs[^1].Pages + run.Pages };
            }
            else
            {
                runs.Add(run);
            }

            done += run.Pages;
        }

        return runs;
    }

    /// <summary>
    /// Follows the page at <paramref name="at"/> down the chain to the folder that holds its bytes; the run ends where
    /// any entry on the way ends. Past the first page, an address the final dump does not hold ends the answer (null).
    /// </summary>
    private Run? ResolveOne(int pid, ulong at, int pages, bool first)
    {
        var end = at + ((ulong)pages * PageSize);
        for (var depth = 0; ; depth++)
        {
            var folder = FolderAt(pid, at, depth);
            var pagemap = folder.Pagemap(pid, at);
            var index = pagemap?.IndexOf(at) ?? -1;
            if (index < 0)
            {
                return depth == 0 && !first ? null
                    : throw Absent(pid, at, pagemap is null
                        ? $"{Path.Combine(folder.Directory, CriuPagemap.FileName(pid))} does not exist"
                        : $"no entry of {pagemap.Path} covers it");
            }

            var entry = pagemap!.Entries[index];
            end = Math.Min(end, entry.End);
            // PE_PARENT first, as criu's read_pagemap_page does.
            if ((entry.Flags & CriuPageState.Parent) != 0)
            {
                continue;
            }

            if (entry.DataOffset is not { } offset)
            {
                return depth == 0 && !first ? null
                    : throw Absent(pid, at, $"its entry in {pagemap.Path} is {entry.Flags}: the pages were never written to an image");
            }

            var file = Path.Combine(folder.Directory, pagemap.PagesFileName);
            return new Run(file, offset + (long)(at - entry.Address), (int)((end - at) / PageSize));
        }
    }

    /// <summary>The folder at <paramref name="depth"/> of the chain (0: the final dump), resolving its parent links once.</summary>
    private Folder FolderAt(int pid, ulong at, int depth)
    {
        lock (_chainLock)
        {
            while (_chain.Count <= depth && _chainEnd is null)
            {
                _chainEnd = Extend();
            }

            return depth < _chain.Count ? _chain[depth]
                : throw (_chainBroken
                    ? new LazyPageSourceException($"pid {pid}, page {at:x}: {_chainEnd}")
                    : Absent(pid, at, $"its entry says the parent dump holds it, but {_chainEnd}"));
        }
    }

    /// <summary>Adds the parent of the last folder of the chain; returns why the chain ends when it does.</summary>
    private string? Extend()
    {
        var last = _chain[^1].Directory;
        var link = Path.Combine(last, "parent");
        // A missing or dangling link ends the chain: criu's try_open_parent carries on without a parent then.
        if (!Directory.Exists(link))
        {
            return $"{last} has no parent link (or it leads nowhere)";
        }

        var parent = Path.GetFullPath(Directory.ResolveLinkTarget(link, returnFinalTarget: true)?.FullName ?? link);
        if (_chain.Any(f => f.Directory == parent))
        {
            _chainBroken = true;
            return $"the parent chain loops: {link} leads back to {parent}";
        }

        if (_chain.Count > MaxChainLength)
        {
            _chainBroken = true;
            return $"the parent chain is longer than {MaxChainLength} links at {link}";
        }

        _chain.Add(new Folder(parent));
        return null;
    }

    private async ValueTask ReadRunAsync(int pid, ulong at, Run run, Memory<byte> destination, CancellationToken cancellationToken)
    {
        try
        {
            var handle = _files.GetOrAdd(run.File, static f => new Lazy<SafeFileHandle>(() => OpenPages(f))).Value;
            if (_verifier is not null)
            {
                await _verifier.VerifyAsync(run.File, run.Offset, destination.Length, cancellationToken).ConfigureAwait(false);
            }

            for (var got = 0; got < destination.Length;)
            {
                var n = await RandomAccess.ReadAsync(handle, destination[got..], run.Offset + got, cancellationToken).ConfigureAwait(false);
                if (n == 0)
                {
                    throw Absent(pid, at, $"{run.File} ends at {run.Offset + got}, short of the {destination.Length} bytes at {run.Offset} that its pagemap promises");
                }

                got += n;
            }
        }
        catch (Exception e) when (e is not (LazyPageSourceException or ObjectDisposedException) && !(e is OperationCanceledException && cancellationToken.IsCancellationRequested))
        {
            throw new LazyPageSourceException($"pid {pid}, page {at:x}: {run.File} at {run.Offset} ({destination.Length} bytes): {e.Message}", e);
        }
    }

    /// <summary>
    /// Opens a pages image without following a link and without blocking: a FIFO planted in its place would hang
    /// open(2) on the server's session for good (no cancellation reaches it), so only a regular file is read.
    /// </summary>
    private static SafeFileHandle OpenPages(string path)
    {
        var fd = Syscall.open(path, OpenFlags.O_RDONLY | OpenFlags.O_NOFOLLOW | OpenFlags.O_NONBLOCK | OpenFlags.O_CLOEXEC);
        if (fd < 0)
        {
            var errno = Stdlib.GetLastError();
            throw new IOException(errno == Errno.ELOOP
                ? $"{path} is a symbolic link, not a pages image"
                : $"{path} cannot be opened: {Stdlib.strerror(errno)}");
        }

        var handle = new SafeFileHandle(fd, ownsHandle: true);
        if (Syscall.fstat(fd, out var st) != 0 || (st.st_mode & FilePermissions.S_IFMT) != FilePermissions.S_IFREG)
        {
            handle.Dispose();
            throw new IOException($"{path} is not a regular file, not a pages image");
        }

        return handle;
    }

    private static LazyPageSourceException Absent(int pid, ulong at, string why) =>
        new($"pid {pid}, page {at:x} is not in the images: {why}");

    /// <summary>A run of pages' bytes in a pages image.</summary>
    private readonly record struct Run(string File, long Offset, int Pages);

    /// <summary>One images folder of the chain and its parsed pagemaps.</summary>
    private sealed class Folder(string directory)
    {
        private readonly ConcurrentDictionary<int, Lazy<CriuPagemap?>> _pagemaps = new();

        public string Directory { get; } = directory;

        /// <summary>The pagemap of <paramref name="pid"/>, parsed once; null when this folder has none.</summary>
        public CriuPagemap? Pagemap(int pid, ulong at)
        {
            var lazy = _pagemaps.GetOrAdd(pid, static (p, dir) => new Lazy<CriuPagemap?>(() => ReadOrNull(dir, p)), Directory);
            try
            {
                return lazy.Value;
            }
            catch (Exception e) when (e is InvalidDataException or IOException or UnauthorizedAccessException)
            {
                throw new LazyPageSourceException($"pid {pid}, page {at:x}: cannot read its pagemap in {Directory}: {e.Message}", e);
            }
        }

        // A folder may lack a pid's pagemap: the process did not exist at that pre-dump.
        private static CriuPagemap? ReadOrNull(string directory, int pid) =>
            File.Exists(Path.Combine(directory, CriuPagemap.FileName(pid))) ? CriuPagemap.Read(directory, pid) : null;
    }
}
