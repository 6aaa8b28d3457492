using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using Google.Protobuf.Reflection;

namespace RebootlessUpdate.UnitTests.Protocol;

/// <summary>
/// A schema reduced to what is on the wire: per message, its fields (number,
/// name, label, type, default); per enum, its values. Built either from .proto
/// text (the upstream file) or from a compiled descriptor (ours, or pycriu's).
/// </summary>
internal sealed partial class ProtoSchema
{
    public SortedDictionary<string, SortedDictionary<int, string>> Messages { get; } = new(StringComparer.Ordinal);

    public SortedDictionary<string, SortedDictionary<int, string>> Enums { get; } = new(StringComparer.Ordinal);

    /// <summary>Parses proto2 text (messages, enums, fields; no nested types, as CRIU's files have none).</summary>
    public static ProtoSchema FromText(string text)
    {
        var schema = new ProtoSchema();
        text = BlockComment().Replace(text, " ");
        text = LineComment().Replace(text, string.Empty);
        foreach (Match block in Block().Matches(text))
        {
            var kind = block.Groups["kind"].Value;
            var name = block.Groups["name"].Value;
            var body = block.Groups["body"].Value;
            var entries = new SortedDictionary<int, string>();
            if (kind == "message")
            {
                foreach (Match f in Field().Matches(body))
                {
                    var def = f.Groups["default"].Success ? NormaliseDefault(f.Groups["default"].Value) : null;
                    entries.Add(int.Parse(f.Groups["num"].Value, CultureInfo.InvariantCulture),
                        Describe(f.Groups["label"].Value, f.Groups["type"].Value, f.Groups["name"].Value, def));
                }

                schema.Messages.Add(name, entries);
            }
            else
            {
                foreach (Match v in EnumValue().Matches(body))
                {
                    entries.Add(int.Parse(v.Groups["num"].Value, CultureInfo.InvariantCulture), v.Groups["name"].Value);
                }

                schema.Enums.Add(name, entries);
            }
        }

        return schema;
    }

    /// <summary>Reads a compiled file descriptor.</summary>
    public static ProtoSchema FromDescriptor(FileDescriptorProto file)
    {
        var schema = new ProtoSchema();
        foreach (var m in file.MessageType)
        {
            var entries = new SortedDictionary<int, string>();
            foreach (var f in m.Field)
            {
                var type = f.HasTypeName ? f.TypeName.TrimStart('.') : ScalarName(f.Type);
                var label = f.Label switch
                {
                    FieldDescriptorProto.Types.Label.Required => "required",
                    FieldDescriptorProto.Types.Label.Repeated => "repeated",
                    _ => "optional",
                };
                entries.Add(f.Number, Describe(label, type, f.Name, f.HasDefaultValue ? NormaliseDefault(f.DefaultValue) : null));
            }

            schema.Messages.Add(m.Name, entries);
        }

        foreach (var e in file.EnumType)
        {
            schema.Enums.Add(e.Name, new SortedDictionary<int, string>(e.Value.ToDictionary(v => v.Number, v => v.Name)));
        }

        return schema;
    }

    /// <summary>Every difference between this schema (ours) and <paramref name="upstream"/>, one line each.</summary>
    public IReadOnlyList<string> Differences(ProtoSchema upstream)
    {
        var diffs = new List<string>();
        Compare("message", Messages, upstream.Messages, diffs);
        Compare("enum", Enums, upstream.Enums, diffs);
        return diffs;
    }

    private static void Compare(string kind, SortedDictionary<string, SortedDictionary<int, string>> ours,
        SortedDictionary<string, SortedDictionary<int, string>> theirs, List<string> diffs)
    {
        foreach (var name in ours.Keys.Union(theirs.Keys).Order(StringComparer.Ordinal))
        {
            if (!ours.TryGetValue(name, out var a))
            {
                diffs.Add($"{kind} {name}: upstream has it, ours does not");
                continue;
            }

            if (!theirs.TryGetValue(name, out var b))
            {
                diffs.Add($"{kind} {name}: ours has it, upstream does not");
                continue;
            }

            foreach (var num in a.Keys.Union(b.Keys).Order())
            {
                a.TryGetValue(num, out var x);
                b.TryGetValue(num, out var y);
                if (x != y)
                {
                    diffs.Add($"{kind} {name} #{num}: ours '{x ?? "(none)"}', upstream '{y ?? "(none)"}'");
                }
            }
        }
    }

    private static string Describe(string label, string type, string name, string? def) =>
        def is null ? $"{label} {type} {name}" : $"{label} {type} {name} [default = {def}]";

    private static string NormaliseDefault(string value) =>
        value.StartsWith("0x", StringComparison.OrdinalIgnoreCase)
            ? ulong.Parse(value.AsSpan(2), NumberStyles.HexNumber, CultureInfo.InvariantCulture).ToString(CultureInfo.InvariantCulture)
            : value;

    private static string ScalarName(FieldDescriptorProto.Types.Type type) =>
        type.ToString().ToLowerInvariant() switch
        {
            "int32" => "int32", "int64" => "int64", "uint32" => "uint32", "uint64" => "uint64",
            "sint32" => "sint32", "sint64" => "sint64", "fixed32" => "fixed32", "fixed64" => "fixed64",
            "sfixed32" => "sfixed32", "sfixed64" => "sfixed64", "bool" => "bool", "string" => "string",
            "bytes" => "bytes", "float" => "float", "double" => "double",
            var other => throw new NotSupportedException($"field type {other}"),
        };

    /// <summary>
    /// Extracts the serialized FileDescriptorProto from a protoc-generated Python
    /// module (<c>AddSerializedFile(b'...')</c>), as pycriu ships them.
    /// </summary>
    public static FileDescriptorProto FromPythonModule(string source)
    {
        var m = PythonSerializedFile().Match(source);
        if (!m.Success)
        {
            throw new FormatException("no AddSerializedFile(b'...') in the Python module");
        }

        return FileDescriptorProto.Parser.ParseFrom(DecodePythonBytes(m.Groups["lit"].Value));
    }

    private static byte[] DecodePythonBytes(string literal)
    {
        var bytes = new List<byte>(literal.Length);
        for (var i = 0; i < literal.Length; i++)
        {
            var c = literal[i];
            if (c != '\\')
            {
                bytes.Add((byte)c);
                continue;
            }

            var e = literal[++i];
            switch (e)
            {
                case 'x':
                    bytes.Add(byte.Parse(literal.AsSpan(i + 1, 2), NumberStyles.HexNumber, CultureInfo.InvariantCulture));
                    i += 2;
                    break;
                case 'n': bytes.Add((byte)'\n'); break;
                case 'r': bytes.Add((byte)'\r'); break;
                case 't': bytes.Add((byte)'\t'); break;
                case '\\': bytes.Add((byte)'\\'); break;
                case '\'': bytes.Add((byte)'\''); break;
                case '"': bytes.Add((byte)'"'); break;
                default:
                    if (e is >= '0' and <= '7')
                    {
                        var len = 1;
                        while (len < 3 && i + len < literal.Length && literal[i + len] is >= '0' and <= '7')
                        {
                            len++;
                        }

                        bytes.Add(Convert.ToByte(literal.Substring(i, len), 8));
                        i += len - 1;
                        break;
                    }

                    throw new FormatException($"unknown escape \\{e} in a Python bytes literal");
            }
        }

        return [.. bytes];
    }

    /// <summary>A readable dump, for failure messages.</summary>
    public override string ToString()
    {
        var sb = new StringBuilder();
        foreach (var (name, fields) in Messages)
        {
            sb.Append(CultureInfo.InvariantCulture, $"message {name}: {string.Join("; ", fields.Select(f => $"{f.Key}={f.Value}"))}\n");
        }

        return sb.ToString();
    }

    [GeneratedRegex(@"/\*.*?\*/", RegexOptions.Singleline)]
    private static partial Regex BlockComment();

    [GeneratedRegex(@"//[^\n]*")]
    private static partial Regex LineComment();

    [GeneratedRegex(@"\b(?<kind>message|enum)\s+(?<name>\w+)\s*\{(?<body>[^{}]*)\}")]
    private static partial Regex Block();

    [GeneratedRegex(@"\b(?<label>required|optional|repeated)\s+(?<type>[\w.]+)\s+(?<name>\w+)\s*=\s*(?<num>\d+)\s*(\[\s*default\s*=\s*(?<default>[^\]\s]+)\s*\])?\s*;")]
    private static partial Regex Field();

    [GeneratedRegex(@"\b(?<name>\w+)\s*=\s*(?<num>-?\d+)\s*;")]
    private static partial Regex EnumValue();

    [GeneratedRegex(@"AddSerializedFile\(b'(?<lit>(?:[^'\\]|\\.)*)'\)", RegexOptions.Singleline)]
    private static partial Regex PythonSerializedFile();
}
