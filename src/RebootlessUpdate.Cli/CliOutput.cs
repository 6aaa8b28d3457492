using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization.Metadata;

namespace RebootlessUpdate.Cli;

/// <summary>What went wrong, for the user: the exit code, what failed and why, and what to do.</summary>
/// <param name="ExitCode">One of <see cref="ExitCodes"/>.</param>
/// <param name="Message">What failed and why.</param>
/// <param name="Hint">What to do about it, when there is something.</param>
internal sealed record CliError(int ExitCode, string Message, string? Hint = null);

/// <summary>Ends a command with <see cref="Error"/>; the command's action turns it into the output and the exit code.</summary>
internal sealed class CliFailure(CliError error) : Exception(error.Message)
{
    public CliError Error { get; } = error;

    public static CliFailure Of(int exitCode, string message, string? hint = null) => new(new CliError(exitCode, message, hint));
}

/// <summary>The tool's output: results on stdout (text or JSON), errors as one line on stderr or a JSON object on stdout.</summary>
internal static class CliOutput
{
    /// <summary>
    /// Writes <paramref name="error"/> as one line on stderr and, with <paramref name="json"/>, as an object
    /// <c>{error, exitCode, message, hint}</c> on stdout. Returns its exit code.
    /// </summary>
    public static int Fail(bool json, CliError error)
    {
        if (json)
        {
            WriteJson(ErrorObject(error));
        }

        Console.Error.WriteLine(OneLine(error));
        return error.ExitCode;
    }

    /// <summary>The JSON form of <paramref name="error"/>: <c>{error, exitCode, message, hint}</c>, <c>error</c> the exit code's name.</summary>
    public static JsonObject ErrorObject(CliError error) => new()
    {
        ["error"] = ExitCodes.Name(error.ExitCode),
        ["exitCode"] = error.ExitCode,
        ["message"] = error.Message,
        ["hint"] = error.Hint,
    };

    /// <summary>The error as the one stderr line: <c>rebootless: MESSAGE (HINT)</c>, line breaks folded.</summary>
    public static string OneLine(CliError error) =>
        "rebootless: " + Fold(error.Message) + (error.Hint is null ? "" : " (" + Fold(error.Hint) + ")");

    /// <summary>Writes <paramref name="value"/> as indented JSON on stdout.</summary>
    public static void WriteJson<T>(T value, JsonTypeInfo<T> info) => WriteJson(JsonSerializer.SerializeToNode(value, info)!);

    /// <summary>Writes <paramref name="node"/> as indented JSON on stdout.</summary>
    public static void WriteJson(JsonNode node) => Console.WriteLine(node.ToJsonString(Indented));

    /// <summary>A byte count for people: <c>512 B</c>, <c>3.2 KiB</c>, <c>62.0 GiB</c>.</summary>
    public static string Size(long bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
        double value = bytes;
        var unit = 0;
        while (Math.Abs(value) >= 1024 && unit < units.Length - 1)
        {
            value /= 1024;
            unit++;
        }

        return unit == 0
            ? bytes.ToString(CultureInfo.InvariantCulture) + " B"
            : value.ToString("0.0", CultureInfo.InvariantCulture) + " " + units[unit];
    }

    /// <summary>A duration for people: <c>850 ms</c>, <c>12.3 s</c>, <c>4 min 05 s</c>.</summary>
    public static string Duration(TimeSpan t) => t.TotalSeconds switch
    {
        < 1 => t.TotalMilliseconds.ToString("0", CultureInfo.InvariantCulture) + " ms",
        < 60 => t.TotalSeconds.ToString("0.0", CultureInfo.InvariantCulture) + " s",
        _ => $"{(int)t.TotalMinutes} min {t.Seconds:00} s",
    };

    private static string Fold(string text) => string.Join("; ", text.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));

    // Readable text: "+" and "'" as they are (it is JSON for scripts and people, never embedded in HTML).
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
}
