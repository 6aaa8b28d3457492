namespace RebootlessUpdate.Criu;

/// <summary>
/// Checks a range of a pages image before <see cref="CriuImagesPageSource"/> serves bytes from it, e.g. against the
/// hashes of the chunks that hold it.
/// </summary>
/// <remarks>
/// The source reads the range right after the check returns, from the same file: the check vouches for the bytes only
/// as long as nothing can write the pages image meanwhile (a sealed set).
/// </remarks>
public interface IPageChunkVerifier
{
    /// <summary>Returns when the bytes at <paramref name="offset"/>, <paramref name="length"/> of <paramref name="file"/> may be served; throws when not.</summary>
    /// <param name="file">The full path of the pages image.</param>
    /// <param name="offset">Where the range starts in it.</param>
    /// <param name="length">How many bytes the range holds, a whole number of pages.</param>
    /// <param name="cancellationToken">Ends the check.</param>
    /// <returns>A task that completes when the range is good.</returns>
    ValueTask VerifyAsync(string file, long offset, int length, CancellationToken cancellationToken);
}
