namespace RebootlessUpdate.Criu;

/// <summary>
/// Where a <c>LazyPageServer</c> finds the pages that a <c>criu lazy-pages</c> daemon asks for:
/// the memory of the processes of one dumped tree, named by their pids as the images name them.
/// </summary>
public interface ILazyPageSource
{
    /// <summary>The size of a page: what every address and length here is a multiple of.</summary>
    const int PageSize = 4096;

    /// <summary>
    /// Copies the pages of process <paramref name="pid"/> (its pid in the images, e.g. <c>N</c> of
    /// <c>pagemap-N.img</c>) that start at <paramref name="address"/> into <paramref name="destination"/>,
    /// whose length is a whole number of pages, one at least.
    /// </summary>
    /// <returns>How many pages it wrote, from 1 to all that fit: fewer when the next page lies elsewhere.</returns>
    /// <exception cref="LazyPageSourceException">
    /// The pages are not in the set, or they are but failed verification: the process asking must not run on.
    /// </exception>
    ValueTask<int> ReadPagesAsync(int pid, ulong address, Memory<byte> destination, CancellationToken cancellationToken);
}

/// <summary>Pages a lazily restored process needs cannot be served: absent from the set, or damaged.</summary>
public class LazyPageSourceException : Exception
{
    /// <summary>Creates the exception.</summary>
    public LazyPageSourceException()
    {
    }

    /// <summary>Creates the exception with a message that names the pages and why.</summary>
    public LazyPageSourceException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with a message and its cause.</summary>
    public LazyPageSourceException(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}
