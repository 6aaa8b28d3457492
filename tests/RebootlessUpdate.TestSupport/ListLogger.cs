using Microsoft.Extensions.Logging;

namespace RebootlessUpdate.TestSupport;

/// <summary>A logger that keeps every entry (all levels) for assertions.</summary>
public sealed class ListLogger : ILogger
{
    /// <summary>Every entry logged, in order.</summary>
    public List<(LogLevel Level, int Id, string Message)> Entries { get; } = [];

    /// <inheritdoc />
    public IDisposable? BeginScope<TState>(TState state)
        where TState : notnull => null;

    /// <inheritdoc />
    public bool IsEnabled(LogLevel logLevel) => true;

    /// <inheritdoc />
    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        ArgumentNullException.ThrowIfNull(formatter);
        lock (Entries)
        {
            Entries.Add((logLevel, eventId.Id, formatter(state, exception)));
        }
    }
}
