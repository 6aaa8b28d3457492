using System.Globalization;

namespace RebootlessUpdate.Criu;

/// <summary>A <see cref="LazyPageServer"/> session that ended with PS_IOV_CLOSE: the daemon was done.</summary>
public sealed class LazyPageServerResult
{
    internal LazyPageServerResult(long requests, long pagesServed, TimeSpan connected)
    {
        Requests = requests;
        PagesServed = pagesServed;
        Connected = connected;
    }

    /// <summary>The PS_IOV_GET requests answered.</summary>
    public long Requests { get; }

    /// <summary>The pages sent.</summary>
    public long PagesServed { get; }

    /// <summary>The page bytes sent (headers not counted).</summary>
    public long BytesServed => PagesServed * ILazyPageSource.PageSize;

    /// <summary>From the daemon's connection to its PS_IOV_CLOSE: how long until every page was back.</summary>
    public TimeSpan Connected { get; }

    /// <inheritdoc/>
    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"{Requests} requests, {PagesServed} pages in {Connected.TotalSeconds:0.###} s");
}
