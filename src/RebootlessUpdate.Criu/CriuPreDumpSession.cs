using RebootlessUpdate.Criu.Protocol;
using RebootlessUpdate.Criu.Transport;

namespace RebootlessUpdate.Criu;

/// <summary>
/// One CRIU worker serving an iterative dump: PRE_DUMP any number of times
/// while the tree runs (each into its own folder, linked to the previous one
/// with <see cref="CriuDumpOptions.ParentImages"/>), then the final DUMP. After
/// a PRE_DUMP CRIU accepts only another PRE_DUMP or the DUMP on this
/// connection. Disposing without the final dump kills the worker deliberately
/// (closing the socket mid-session has crashed workers).
/// </summary>
public sealed class CriuPreDumpSession : IAsyncDisposable
{
    private readonly CriuClient _client;
    private readonly CriuSession _session;
    private bool _finished;

    internal CriuPreDumpSession(CriuClient client, CriuSession session)
    {
        _client = client;
        _session = session;
    }

    /// <summary>Number of pre-dumps done so far.</summary>
    public int PreDumps { get; private set; }

    /// <summary>Copies the tree's memory while it keeps running (PRE_DUMP).</summary>
    public async Task<CriuDumpResult> PreDumpAsync(CriuDumpOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        ObjectDisposedException.ThrowIf(_finished, this);
        await Prepare(options, cancellationToken).ConfigureAwait(false);
        await CriuClient.SendAsync(_session, new criu_req { Type = criu_req_type.PreDump }, options, cancellationToken).ConfigureAwait(false);
        PreDumps++;
        return CriuDumpResult.Read(options);
    }

    /// <summary>The final dump (DUMP); ends the session.</summary>
    public async Task<CriuDumpResult> DumpAsync(CriuDumpOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        ObjectDisposedException.ThrowIf(_finished, this);
        await Prepare(options, cancellationToken).ConfigureAwait(false);
        _finished = true;
        await CriuClient.SendAsync(_session, new criu_req { Type = criu_req_type.Dump }, options, cancellationToken).ConfigureAwait(false);
        return CriuDumpResult.Read(options);
    }

    private async Task Prepare(CriuDumpOptions options, CancellationToken cancellationToken)
    {
        options.Validate();
        foreach (var (option, minimum) in options.Requirements())
        {
            var actual = await _client.GetVersionAsync(cancellationToken).ConfigureAwait(false);
            if (actual < minimum)
            {
                throw new CriuVersionException(option, minimum, actual);
            }
        }
    }

    /// <summary>Ends the session; without a final dump the worker is killed.</summary>
    public async ValueTask DisposeAsync()
    {
        if (!_finished)
        {
            _finished = true;
            _session.Connection.Abort();
        }

        await _session.DisposeAsync().ConfigureAwait(false);
    }
}

/// <summary>
/// When an iterative dump stops pre-dumping. The rule: stop after
/// <see cref="MaxPreDumps"/> pre-dumps; or when a pre-dump wrote fewer than
/// <see cref="FewPages"/> pages (the rest is cheap to copy while frozen); or
/// when the pages written stopped shrinking — a pre-dump wrote more than
/// (1 + <see cref="GrowthTolerance"/>) times the previous one (the tree dirties
/// memory faster than we copy it, so more rounds do not help).
/// </summary>
public sealed record CriuIterativeDumpOptions
{
    /// <summary>Maximum number of pre-dumps before the final dump. Default 8.</summary>
    public int MaxPreDumps { get; init; } = 8;

    /// <summary>Stop once a pre-dump wrote fewer pages than this. Default 64.</summary>
    public ulong FewPages { get; init; } = 64;

    /// <summary>Stop when a pre-dump wrote more than this fraction above the previous one. Default 0.10.</summary>
    public double GrowthTolerance { get; init; } = 0.10;

    /// <summary>Minimum number of pre-dumps, whatever the pages say. Default 1.</summary>
    public int MinPreDumps { get; init; } = 1;

    internal void Validate()
    {
        if (MinPreDumps < 1 || MaxPreDumps < MinPreDumps)
        {
            throw new ArgumentOutOfRangeException(nameof(MaxPreDumps), $"need 1 <= MinPreDumps ({MinPreDumps}) <= MaxPreDumps ({MaxPreDumps}).");
        }

        if (GrowthTolerance < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(GrowthTolerance), GrowthTolerance, "must not be negative.");
        }
    }

    /// <summary>Why to stop after these pre-dumps, or null to go on.</summary>
    internal string? StopReason(IReadOnlyList<CriuDumpResult> preDumps)
    {
        var n = preDumps.Count;
        var written = preDumps[^1].Statistics?.PagesWritten;
        if (n >= MaxPreDumps)
        {
            return $"reached {MaxPreDumps} pre-dumps";
        }

        if (n < MinPreDumps)
        {
            return null;
        }

        if (written is null)
        {
            return "CRIU wrote no statistics to judge convergence by";
        }

        if (written < FewPages)
        {
            return $"pre-dump {n} wrote {written} pages (< {FewPages})";
        }

        if (n >= 2 && preDumps[^2].Statistics?.PagesWritten is { } previous && written > previous * (1 + GrowthTolerance))
        {
            return $"pre-dump {n} wrote {written} pages, more than {previous} before (not converging)";
        }

        return null;
    }
}

/// <summary>The outcome of <see cref="CriuClient.IterativeDumpAsync"/>.</summary>
/// <param name="PreDumps">Each pre-dump, in order.</param>
/// <param name="Final">The final dump.</param>
/// <param name="FinalImagesDirectory">Where the final images are (restore from here; it links to its parents).</param>
/// <param name="StopReason">Why pre-dumping stopped.</param>
public sealed record CriuIterativeDumpResult(IReadOnlyList<CriuDumpResult> PreDumps, CriuDumpResult Final, string FinalImagesDirectory, string StopReason);
