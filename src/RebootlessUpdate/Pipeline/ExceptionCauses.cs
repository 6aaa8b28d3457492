namespace RebootlessUpdate.Pipeline;

/// <summary>What a failure was caused by, however the stages wrapped it (Commit wraps a target's failure, a stage aggregates several).</summary>
internal static class ExceptionCauses
{
    /// <summary>True when <paramref name="e"/> or any exception it wraps (inner, or one of an aggregate's) is a <typeparamref name="T"/>.</summary>
    public static bool Contains<T>(Exception? e) where T : Exception => Contains<T>(e, _ => true);

    /// <summary>True when <paramref name="e"/> or any exception it wraps is a <typeparamref name="T"/> that <paramref name="matches"/>.</summary>
    public static bool Contains<T>(Exception? e, Func<T, bool> matches) where T : Exception => e switch
    {
        null => false,
        T t when matches(t) => true,
        AggregateException all => all.InnerExceptions.Any(x => Contains(x, matches)),
        _ => Contains(e.InnerException, matches),
    };

    /// <summary>True when the failure was a file system out of space (ENOSPC), named as such or not.</summary>
    public static bool IsOutOfSpace(Exception? e) =>
        Contains<Images.StoreFullException>(e) || Contains<IOException>(e, x => x.HResult == Images.Interop.Libc.ENoSpc);
}
