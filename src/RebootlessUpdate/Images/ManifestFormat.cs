using System.IO.Hashing;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace RebootlessUpdate.Images;

/// <summary>
/// Reads and writes the manifest file. The file is an envelope
/// <c>{"format", "version", "bodyXxh128", "body"}</c>; the hash covers the exact
/// UTF-8 bytes of <c>body</c> as written, so any damage to the body (a flipped
/// size, a cut-off file) is caught even where it would still parse.
/// </summary>
internal static class ManifestFormat
{
    internal const string FormatName = "rebootless-checkpoint-manifest";
    internal const int CurrentVersion = 1;
    internal const string FileName = "manifest.json";

    internal static byte[] Write(CheckpointManifest manifest)
    {
        var body = JsonSerializer.SerializeToUtf8Bytes(manifest, ManifestJsonContext.Default.CheckpointManifest);
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteString("format", FormatName);
            w.WriteNumber("version", CurrentVersion);
            w.WriteString("bodyXxh128", Hex(XxHash128.Hash(body)));
            w.WritePropertyName("body");
            w.WriteRawValue(body, skipInputValidation: true);
            w.WriteEndObject();
        }

        buffer.WriteByte((byte)'\n');
        return buffer.ToArray();
    }

    /// <summary>Parses and checks a manifest; throws <see cref="ManifestCorruptException"/> naming what is wrong.</summary>
    internal static CheckpointManifest Read(ReadOnlySpan<byte> bytes, string file)
    {
        if (bytes.IsEmpty)
        {
            throw new ManifestCorruptException(file, "the file is empty");
        }

        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(bytes.ToArray());
        }
        catch (JsonException e)
        {
            throw new ManifestCorruptException(file, $"it is not valid JSON (truncated or damaged at byte {e.BytePositionInLine}, line {e.LineNumber + 1}): {e.Message}");
        }

        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object
                || !root.TryGetProperty("format", out var format) || format.ValueKind != JsonValueKind.String
                || format.GetString() != FormatName)
            {
                throw new ManifestCorruptException(file, $"it is not a {FormatName} (no matching \"format\" property)");
            }

            if (!root.TryGetProperty("version", out var version) || !version.TryGetInt32(out var v))
            {
                throw new ManifestCorruptException(file, "it has no integer \"version\"");
            }

            if (v != CurrentVersion)
            {
                throw new ManifestCorruptException(file, $"its format version {v} is not supported (this library reads version {CurrentVersion}); use a matching rebootless release");
            }

            if (!root.TryGetProperty("bodyXxh128", out var expected) || expected.ValueKind != JsonValueKind.String
                || !root.TryGetProperty("body", out var body) || body.ValueKind != JsonValueKind.Object)
            {
                throw new ManifestCorruptException(file, "it lacks \"bodyXxh128\" or \"body\"");
            }

            var actual = Hex(XxHash128.Hash(JsonMarshal.GetRawUtf8Value(body)));
            if (!string.Equals(actual, expected.GetString(), StringComparison.Ordinal))
            {
                throw new ManifestCorruptException(file, $"its body hash is {actual} but the manifest records {expected.GetString()}: the manifest was altered or damaged");
            }

            CheckpointManifest? manifest;
            try
            {
                manifest = body.Deserialize(ManifestJsonContext.Default.CheckpointManifest);
            }
            catch (JsonException e)
            {
                throw new ManifestCorruptException(file, $"its body does not match the format: {e.Message}");
            }

            return Validate(manifest, file);
        }
    }

    private static CheckpointManifest Validate(CheckpointManifest? m, string file)
    {
        if (m is null || m.Files is null || m.Targets is null || string.IsNullOrEmpty(m.SetId) || m.HostMachineId is null)
        {
            throw new ManifestCorruptException(file, "required fields are missing or null");
        }

        long total = 0;
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var f in m.Files)
        {
            if (f is null || f.Path is null)
            {
                throw new ManifestCorruptException(file, "a file entry has no path");
            }

            if (SetPaths.Check(f.Path) is { } why)
            {
                throw new UnsafeSetPathException(f.Path, $"(recorded in {file}) {why}");
            }

            if (!seen.Add(f.Path))
            {
                throw new ManifestCorruptException(file, $"'{f.Path}' is listed twice");
            }

            var isLink = f.SymlinkTarget is not null;
            if (f.Size < 0 || (!isLink && !IsHash(f.Xxh128)))
            {
                throw new ManifestCorruptException(file, $"the entry of '{f.Path}' has an invalid size or hash");
            }

            if (ChunkedFiles.Check(f) is { } badChunks)
            {
                throw new ManifestCorruptException(file, $"the entry of '{f.Path}' {badChunks}");
            }

            total += f.Size;
        }

        if (total != m.TotalBytes)
        {
            throw new ManifestCorruptException(file, $"its files add up to {total} bytes but it records {m.TotalBytes}");
        }

        return m;
    }

    internal static string Hex(ReadOnlySpan<byte> hash) => Convert.ToHexStringLower(hash);

    /// <summary>An XxHash128 as the manifest writes it: 32 lowercase hex digits.</summary>
    internal static bool IsHash(string? hash) => hash is { Length: 32 } && hash.All(char.IsAsciiHexDigitLower);
}

/// <summary>The manifest file cannot be used: not JSON, cut off, altered, or of an unknown version.</summary>
public sealed class ManifestCorruptException : ImageStoreException
{
    /// <summary>Creates the exception for <paramref name="file"/>.</summary>
    public ManifestCorruptException(string file, string reason)
        : base($"the checkpoint manifest {file} is unusable: {reason}; the set cannot be trusted and must not be restored")
    {
        File = file;
        Reason = reason;
    }

    /// <summary>Creates the exception.</summary>
    public ManifestCorruptException()
    {
        File = Reason = string.Empty;
    }

    /// <summary>Creates the exception.</summary>
    public ManifestCorruptException(string message)
        : base(message)
    {
        File = Reason = string.Empty;
    }

    /// <summary>Creates the exception.</summary>
    public ManifestCorruptException(string message, Exception innerException)
        : base(message, innerException)
    {
        File = Reason = string.Empty;
    }

    /// <summary>The manifest file.</summary>
    public string File { get; }

    /// <summary>What is wrong with it.</summary>
    public string Reason { get; }
}

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase, WriteIndented = true,
    DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull, RespectRequiredConstructorParameters = true,
    UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow)]
[JsonSerializable(typeof(CheckpointManifest))]
internal sealed partial class ManifestJsonContext : JsonSerializerContext;
