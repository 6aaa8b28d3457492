using Microsoft.Extensions.Logging;

namespace RebootlessUpdate.Criu;

/// <summary>Options of a <see cref="LazyPageServer"/>. Immutable; validated when the server starts.</summary>
public sealed record LazyPageServerOptions
{
    /// <summary>
    /// Called once when the server can no longer serve the daemon that connected: the source failed, the
    /// daemon broke the protocol or hung up without PS_IOV_CLOSE, or the server was disposed mid-session.
    /// The server awaits it <em>before</em> it closes the connection, and answers nothing meanwhile: once the
    /// daemon exits, the kernel hands zero pages to every fault it would have served, so this is where the
    /// caller ends the lazily restored tree. Not called when the daemon never connected. Default: none
    /// (give one whenever a restored tree depends on this server).
    /// </summary>
    public Func<LazyPageServerFailure, ValueTask>? OnFailure { get; init; }

    /// <summary>Where the server logs its session (connection, end, failures). Default: no logging.</summary>
    public ILogger? Logger { get; init; }

    /// <summary>The clock that times the session. Default <see cref="TimeProvider.System"/>.</summary>
    public TimeProvider TimeProvider { get; init; } = TimeProvider.System;

    internal void Validate()
    {
        if (TimeProvider is null)
        {
            throw new ArgumentException("TimeProvider must not be null.", nameof(TimeProvider));
        }
    }
}
