using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace RebootlessUpdate.Pipeline;

/// <summary>
/// Durations in reports and journals as a number of seconds (<c>0.012</c>), which a script compares without
/// parsing. Reads the <c>"00:00:00.012"</c> strings that journals written before 0.2 hold.
/// </summary>
internal sealed class SecondsJsonConverter : JsonConverter<TimeSpan>
{
    public override TimeSpan Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) => reader.TokenType switch
    {
        JsonTokenType.Number => TimeSpan.FromSeconds(reader.GetDouble()),
        JsonTokenType.String when TimeSpan.TryParse(reader.GetString(), CultureInfo.InvariantCulture, out var t) => t,
        _ => throw new JsonException($"a duration is a number of seconds, not {reader.TokenType}"),
    };

    // Microseconds are the finest the tool measures; more digits would only be noise.
    public override void Write(Utf8JsonWriter writer, TimeSpan value, JsonSerializerOptions options) =>
        writer.WriteNumberValue(Math.Round(value.TotalSeconds, 6));
}
