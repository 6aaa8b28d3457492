using Mono.Unix.Native;

namespace RebootlessUpdate.Images;

/// <summary>
/// The path rules of a set: every recorded path is relative to the images
/// folder, <c>/</c>-separated and normalised, and nothing may lead out of the
/// set — not <c>..</c>, not an absolute path, not a symbolic link (CRIU images
/// contain process memory; a path that escapes could make a restore read or a
/// verification vouch for a file outside the set).
/// </summary>
internal static class SetPaths
{
    private const int MaxPathLength = 4096;

    /// <summary>Null when <paramref name="relative"/> is a valid set path, else why not.</summary>
    internal static string? Check(string relative)
    {
        if (string.IsNullOrEmpty(relative))
        {
            return "is empty";
        }

        if (relative.Length > MaxPathLength)
        {
            return $"is longer than {MaxPathLength} characters";
        }

        if (relative.Contains('\0', StringComparison.Ordinal))
        {
            return "contains a NUL character";
        }

        if (relative[0] == '/')
        {
            return "is absolute";
        }

        foreach (var part in relative.Split('/'))
        {
            switch (part)
            {
                case "":
                    return "is not normalised (empty component: '//' or a trailing '/')";
                case ".":
                    return "is not normalised (a '.' component)";
                case "..":
                    return "escapes the set ('..')";
            }
        }

        return null;
    }

    /// <summary>
    /// The full path of <paramref name="relative"/> under <paramref name="root"/>
    /// after checking that no folder on the way is a symbolic link (which could
    /// point out of the set). Returns null with <paramref name="problem"/> set
    /// when the path is unsafe; a missing component is not a problem (the caller
    /// sees the file is missing).
    /// </summary>
    internal static string? Resolve(string root, string relative, out string? problem)
    {
        problem = Check(relative);
        if (problem is not null)
        {
            return null;
        }

        var parts = relative.Split('/');
        var current = root;
        for (var i = 0; i < parts.Length - 1; i++)
        {
            current = Path.Combine(current, parts[i]);
            if (Syscall.lstat(current, out var st) != 0)
            {
                break; // missing: reported by the caller as a missing file
            }

            var type = st.st_mode & FilePermissions.S_IFMT;
            if (type == FilePermissions.S_IFLNK)
            {
                problem = $"passes through the symbolic link '{string.Join('/', parts[..(i + 1)])}'";
                return null;
            }

            if (type != FilePermissions.S_IFDIR)
            {
                break;
            }
        }

        return Path.Combine(root, Path.Combine(parts));
    }

    /// <summary>
    /// Null when the symbolic link at <paramref name="relative"/> pointing to
    /// <paramref name="target"/> is the one link CRIU writes into an images folder: the
    /// <c>parent</c> link of an iterative dump (<c>parent_img</c>), here <c>FOLDER/parent</c>
    /// to <c>../OTHER</c>, a sibling folder directly in the images folder. Else why not.
    /// Any other link could lead a restore to bytes no manifest entry vouches for.
    /// </summary>
    internal static string? CheckParentLink(string relative, string target)
    {
        var parts = relative.Split('/');
        if (parts.Length != 2 || parts[1] != ParentLinkName)
        {
            return $"is a symbolic link (to '{target}'); the only link a set may hold is CRIU's '{ParentLinkName}' link of a target folder (FOLDER/{ParentLinkName} to ../PRE-DUMP-FOLDER)";
        }

        var folder = target.StartsWith("../", StringComparison.Ordinal) ? target[3..] : null;
        return folder is null || folder.Length == 0 || folder.Contains('/', StringComparison.Ordinal) || folder is "." or ".." || folder == parts[0]
            ? $"is a '{ParentLinkName}' link to '{target}', which is not a sibling folder (../NAME)"
            : null;
    }

    /// <summary>The folder (directly in the images folder) that a parent link accepted by <see cref="CheckParentLink"/> names.</summary>
    internal static string ParentLinkFolder(string target) => target[3..];

    /// <summary>CRIU's name for the link to the previous images of an iterative dump (<c>CR_PARENT_LINK</c>).</summary>
    internal const string ParentLinkName = "parent";

    /// <summary>The <c>/</c>-separated path of <paramref name="full"/> relative to <paramref name="root"/>.</summary>
    internal static string Relative(string root, string full) => Path.GetRelativePath(root, full).Replace(Path.DirectorySeparatorChar, '/');
}
