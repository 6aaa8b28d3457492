using System.Globalization;
using System.Text;

namespace RebootlessUpdate.Images.Luo;

/// <summary>What one index line names: a folder, a file (carried under its token) or a symbolic link.</summary>
internal enum LuoEntryKind
{
    Folder,
    File,
    Link,
}

/// <summary>One entry of a folder carried across kexec: its path under the folder, and for a file its token, length and mode.</summary>
/// <param name="Kind">Folder, file or link.</param>
/// <param name="Path">Relative to the folder, '/'-separated, normalised.</param>
/// <param name="Token">The LUO token a file is preserved under (0 for folders and links).</param>
/// <param name="Length">A file's length in bytes (0 otherwise).</param>
/// <param name="Mode">Permission bits (0 to 0777).</param>
/// <param name="LinkTarget">A link's target, as the link held it; null otherwise.</param>
internal sealed record LuoFolderEntry(LuoEntryKind Kind, string Path, ulong Token, long Length, int Mode, string? LinkTarget = null);

/// <summary>
/// The index a carried folder's session holds under token 0: one line per entry, tab-separated, with paths and link
/// targets percent-encoded. Parsing trusts nothing in it: every path must be a plain relative one inside the folder,
/// named once, and every file token used once.
/// </summary>
internal static class LuoFolderIndex
{
    private const string Header = "rebootless-luo-folder 1";

    /// <summary>The index text of <paramref name="entries"/>.</summary>
    internal static byte[] Format(IEnumerable<LuoFolderEntry> entries)
    {
        var sb = new StringBuilder(Header).Append('\n');
        foreach (var e in entries)
        {
            sb.Append(e.Kind switch { LuoEntryKind.Folder => 'd', LuoEntryKind.File => 'f', _ => 'l' }).Append('\t')
                .Append(e.Token.ToString(CultureInfo.InvariantCulture)).Append('\t')
                .Append(e.Length.ToString(CultureInfo.InvariantCulture)).Append('\t')
                .Append(Convert.ToString(e.Mode, 8)).Append('\t')
                .Append(Uri.EscapeDataString(e.Path)).Append('\t')
                .Append(e.LinkTarget is null ? "-" : Uri.EscapeDataString(e.LinkTarget)).Append('\n');
        }

        return Encoding.UTF8.GetBytes(sb.ToString());
    }

    /// <summary>The entries of an index, checked.</summary>
    /// <exception cref="InvalidDataException">It is not an index, or names a path outside the folder, twice, or a token twice.</exception>
    internal static IReadOnlyList<LuoFolderEntry> Parse(ReadOnlySpan<byte> text)
    {
        var lines = Encoding.UTF8.GetString(text).Split('\n');
        if (lines.Length == 0 || lines[0] != Header)
        {
            throw new InvalidDataException($"not a LUO folder index (its first line is not '{Header}')");
        }

        var entries = new List<LuoFolderEntry>();
        var paths = new HashSet<string>(StringComparer.Ordinal);
        var tokens = new HashSet<ulong>();
        var folders = new HashSet<string>(StringComparer.Ordinal);
        for (var i = 1; i < lines.Length; i++)
        {
            if (lines[i].Length == 0 && i == lines.Length - 1)
            {
                break;
            }

            var f = lines[i].Split('\t');
            if (f.Length != 6 || f[0].Length != 1
                || !ulong.TryParse(f[1], NumberStyles.None, CultureInfo.InvariantCulture, out var token)
                || !long.TryParse(f[2], NumberStyles.None, CultureInfo.InvariantCulture, out var length))
            {
                throw new InvalidDataException($"LUO folder index line {i + 1} is malformed");
            }

            int mode;
            try
            {
                mode = f[3].Length is > 0 and <= 4 ? Convert.ToInt32(f[3], 8) : -1;
            }
            catch (Exception e) when (e is FormatException or ArgumentException or OverflowException)
            {
                throw new InvalidDataException($"LUO folder index line {i + 1} has no octal mode");
            }

            var kind = f[0][0] switch
            {
                'd' => LuoEntryKind.Folder,
                'f' => LuoEntryKind.File,
                'l' => LuoEntryKind.Link,
                _ => throw new InvalidDataException($"LUO folder index line {i + 1} names an unknown kind '{f[0]}'"),
            };
            var path = Uri.UnescapeDataString(f[4]);
            if (!IsPlainRelative(path) || mode is < 0 or > 0x1ff)
            {
                throw new InvalidDataException($"LUO folder index line {i + 1} names a path outside the folder or a bad mode: '{path}'");
            }

            // A folder comes before what it holds, so the receiver can make them in order.
            var parent = Path.GetDirectoryName(path);
            if (!string.IsNullOrEmpty(parent) && !folders.Contains(parent))
            {
                throw new InvalidDataException($"LUO folder index names '{path}' before its folder '{parent}'");
            }

            if (!paths.Add(path))
            {
                throw new InvalidDataException($"LUO folder index names '{path}' twice");
            }

            if (kind == LuoEntryKind.File && (token == LuoFolderHandover.IndexToken || !tokens.Add(token)))
            {
                throw new InvalidDataException($"LUO folder index uses token {token} twice (or the index's own)");
            }

            var target = f[5] == "-" ? null : Uri.UnescapeDataString(f[5]);
            if ((kind == LuoEntryKind.Link) != (target is not null))
            {
                throw new InvalidDataException($"LUO folder index line {i + 1}: only a link has a target");
            }

            if (target is not null && (target.Length == 0 || target.StartsWith('/') || target.Contains('\0', StringComparison.Ordinal)))
            {
                throw new InvalidDataException($"LUO folder index line {i + 1}: a link may only point somewhere relative, not to '{target}'");
            }

            if (kind == LuoEntryKind.Folder)
            {
                folders.Add(path);
            }

            entries.Add(new LuoFolderEntry(kind, path, kind == LuoEntryKind.File ? token : 0, kind == LuoEntryKind.File ? length : 0, mode, target));
        }

        return entries;
    }

    /// <summary>True for "a", "a/b": no empty, "." or ".." component, not absolute, no zero byte.</summary>
    internal static bool IsPlainRelative(string path) =>
        path.Length > 0 && !path.Contains('\0', StringComparison.Ordinal)
        && path.Split('/').All(c => c.Length > 0 && c != "." && c != "..");
}
