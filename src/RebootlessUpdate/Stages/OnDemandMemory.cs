using RebootlessUpdate.Criu;
using RebootlessUpdate.Images;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.Stages;

/// <summary>
/// One target's memory served on demand from the set (<see cref="RestoreStageOptions.ServePagesFromStore"/>): our
/// page server, reading the target's images through the manifest's chunk hashes, for the target's
/// <c>criu lazy-pages</c> daemon. Whatever stops the server from serving ends the target's tree first: a lazily
/// restored process whose daemon lets go would get zero pages where its memory was.
/// </summary>
internal sealed class OnDemandMemory : IAsyncDisposable
{
    /// <summary>How long the restored tree is held at post-restore for the daemon to reach the server.</summary>
    internal static readonly TimeSpan ConnectWait = TimeSpan.FromSeconds(30);

    /// <summary>The most bytes of one pagemap entry checked in one call at post-restore (a whole number of chunks).</summary>
    private const int VerifyPiece = 1 << 30;

    private readonly PageChunkVerifier _verifier;
    private readonly CriuImagesPageSource _source;
    private readonly LazyPageServer _server;
    private readonly string _imagesDirectory;
    private readonly Lock _gate = new();
    private readonly TimeProvider _time;
    private long _restoredAt;
    private int _disposed;
    private ProcessIdentity? _root;
    private LazyPageServerException? _failure;

    private OnDemandMemory(string imagesDirectory, PageChunkVerifier verifier, UpdateContext context)
    {
        _imagesDirectory = imagesDirectory;
        _time = context.TimeProvider;
        _verifier = verifier;
        _source = new CriuImagesPageSource(imagesDirectory, verifier);
        _server = LazyPageServer.Start(_source, new LazyPageServerOptions { OnFailure = OnFailureAsync, Logger = context.Logger, TimeProvider = context.TimeProvider });
    }

    /// <summary>Where the target's daemon finds the server.</summary>
    internal CriuPageServerEndpoint Endpoint => _server.Endpoint;

    /// <summary>Completes when the daemon closed the session (every page is back), faults when serving failed.</summary>
    internal Task<LazyPageServerResult> Completion => _server.Completion;

    /// <summary>Pages served so far.</summary>
    internal long PagesServed => _server.PagesServed;

    /// <summary>
    /// Starts serving the target whose images are in <paramref name="imagesDirectory"/>, or returns null (and the
    /// reason) when its page images have no chunk hashes to check pages by: the set was sealed before them.
    /// </summary>
    internal static (OnDemandMemory? Memory, string? WhyNot) TryStart(UpdateContext context, string imagesDirectory)
    {
        if (context.Restorable is not { } set)
        {
            return (null, "the set was not verified for this run");
        }

        var verifier = new PageChunkVerifier(set.ImagesDirectory, set.Manifest);
        var folder = Path.GetRelativePath(Path.GetFullPath(set.ImagesDirectory), Path.GetFullPath(imagesDirectory)).Replace('\\', '/');
        var unchunked = set.Manifest.Files.Where(f => f.Path.StartsWith(folder + "/", StringComparison.Ordinal) && ChunkedFiles.Wanted(f.Path) && f.ChunkXxh128 is null).ToList();
        if (unchunked.Count > 0 || !verifier.HasChunkHashes)
        {
            verifier.Dispose();
            return (null, $"its page images have no chunk hashes (sealed by an older release): {string.Join(", ", unchunked.Select(f => f.Path))}");
        }

        return (new OnDemandMemory(imagesDirectory, verifier, context), null);
    }

    /// <summary>
    /// The restore view CRIU restores from, whose parent pages are lazy (see <see cref="CriuRestoreView"/>); null when
    /// CRIU restores from the dump's own folder.
    /// </summary>
    internal CriuRestoreView? View { get; set; }

    /// <summary>
    /// At post-restore, before the tree runs: checks the chunks of every page CRIU restored itself (the pages it did
    /// not leave to the daemon), those it read from a pre-dump parent included, and waits for the daemon to reach the
    /// server. Returns false when the dump has pages in a pre-dump parent and CRIU restored from the dump's own folder
    /// (no <see cref="View"/>): it read every parent page itself, and those are covered only by the whole check, to wait for.
    /// </summary>
    /// <exception cref="LazyPageServerException">Serving failed already.</exception>
    /// <exception cref="PageChunkDamagedException">A chunk CRIU restored from is damaged.</exception>
    /// <exception cref="LazyPageSourceException">Pages CRIU restored from the parent chain are not in it.</exception>
    /// <exception cref="TimeoutException">The daemon never connected.</exception>
    internal async Task<bool> HoldAsync(IEnumerable<int> pids, CancellationToken cancellationToken)
    {
        ThrowIfFailed();
        var parentPages = false;
        // The pagemaps CRIU restored by: the view's say which parent pages it left to the daemon.
        var restoredFrom = View?.Directory ?? _imagesDirectory;
        foreach (var pid in pids)
        {
            CriuPagemap map;
            try
            {
                map = CriuPagemap.Read(restoredFrom, pid);
            }
            catch (FileNotFoundException)
            {
                continue; // no memory of its own (a zombie, or a thread group CRIU did not dump pages for)
            }

            // The dump's own pages image: the view's is a link to it, and the manifest names the original.
            var pages = Path.Combine(_imagesDirectory, map.PagesFileName);
            foreach (var e in map.Entries.Where(e => !e.Flags.HasFlag(CriuPageState.Lazy)))
            {
                if (e.Flags.HasFlag(CriuPageState.Parent))
                {
                    if (View is null)
                    {
                        parentPages = true;
                        continue;
                    }

                    // Outside lazy-capable VMAs: CRIU reads these from the pre-dumps, wherever the chain put them.
                    foreach (var (file, offset, length) in _source.Locate(pid, e.Address, e.PageCount))
                    {
                        _verifier.Verify(file, offset, length, cancellationToken);
                    }
                }
                else if (e.DataOffset is { } offset)
                {
                    // In pieces: one region CRIU restores itself (hugetlb, say) may be larger than an int counts.
                    var length = checked((long)e.PageCount * ILazyPageSource.PageSize);
                    for (var done = 0L; done < length; done += VerifyPiece)
                    {
                        _verifier.Verify(pages, offset + done, (int)Math.Min(VerifyPiece, length - done), cancellationToken);
                    }
                }
            }
        }

        await _server.WaitForConnectionAsync(cancellationToken).WaitAsync(ConnectWait, cancellationToken).ConfigureAwait(false);
        ThrowIfFailed();
        return !parentPages;
    }

    /// <summary>The restored tree's root, known at post-restore: the one a failure ends (at once, if serving failed already).</summary>
    internal void RootRestored(ProcessIdentity root)
    {
        bool failed;
        lock (_gate)
        {
            _root = root;
            _restoredAt = _time.GetTimestamp();
            failed = _failure is not null;
        }

        if (failed)
        {
            TreeKill.Kill(root);
        }
    }

    /// <summary>
    /// Waits until the target holds all of its memory, for as long as its daemon keeps asking for pages; returns the
    /// pages served and how long it took from the restore's answer. When serving failed, or the daemon asked for
    /// nothing for <paramref name="stallLimit"/> (the server is then stopped, which ends the tree first), throws what happened.
    /// </summary>
    /// <exception cref="LazyPageServerException">Serving failed: the tree was ended before it got a bad or missing page.</exception>
    /// <exception cref="TimeoutException">The stream stood still for <paramref name="stallLimit"/>: the tree was ended.</exception>
    internal async Task<(long Pages, TimeSpan After)> WaitAllBackAsync(TimeSpan stallLimit, CancellationToken cancellationToken)
    {
        var poll = stallLimit < TimeSpan.FromSeconds(1) ? stallLimit : TimeSpan.FromSeconds(1);
        var requests = _server.Requests;
        var stillSince = _time.GetTimestamp();
        while (true)
        {
            try
            {
                var result = await _server.Completion.WaitAsync(poll, _time, cancellationToken).ConfigureAwait(false);
                return (result.PagesServed, _time.GetElapsedTime(Volatile.Read(ref _restoredAt)));
            }
            catch (TimeoutException)
            {
                if (_server.Requests != requests)
                {
                    (requests, stillSince) = (_server.Requests, _time.GetTimestamp());
                }
                else if (_time.GetElapsedTime(stillSince) >= stallLimit)
                {
                    await DisposeAsync().ConfigureAwait(false);
                    throw new TimeoutException($"its daemon asked for no page for {stallLimit.TotalSeconds:0} s while pages were still missing "
                        + $"({_server.PagesServed} served); it was ended rather than left to hang or run on zero pages");
                }
            }
        }
    }

    private void ThrowIfFailed()
    {
        lock (_gate)
        {
            if (_failure is { } failure)
            {
                throw failure;
            }
        }
    }

    /// <summary>Before the server lets the daemon go: the tree is stopped and killed, so no process of it runs on zero pages.</summary>
    private ValueTask OnFailureAsync(LazyPageServerFailure failure)
    {
        ProcessIdentity? root;
        lock (_gate)
        {
            _failure = failure.Exception;
            root = _root;
        }

        if (root is { } r)
        {
            TreeKill.Kill(r);
        }

        return ValueTask.CompletedTask;
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        await _server.DisposeAsync().ConfigureAwait(false);
        _source.Dispose();
        _verifier.Dispose();
    }
}
