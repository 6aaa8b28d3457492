namespace RebootlessUpdate.Pipeline;

/// <summary>What a failure was caused by, however the stages wrapped it (Commit wraps a target's failure, a stage aggregates several).</summary>
internal static class ExceptionCauses
{
    /// <summary>True when <paramref name="e"/> or any exception it wraps (inner, or one of an aggregate's) is a <typeparamref name="T"/>.</summary>
    public static bool Contains<T>(Exception? e) where T : Exception => e switch
    {
        null => false,
        T => true,
        AggregateException all => all.InnerExceptions.Any(Contains<T>),
        _ => Contains<T>(e.InnerException),
    };
}
