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
    /// Null when the symbolic link at <paramref name="relative"/> with
    /// <paramref name="target"/> stays inside the set, else why not.
    /// </summary>
    internal static string? CheckSymlinkTarget(string relative, string target)
    {
        if (target.Length == 0 || target[0] == '/')
        {
            return $"is a symbolic link to the absolute path '{target}', outside the set";
        }

        var stack = new List<string>(relative.Split('/')[..^1]);
        foreach (var part in target.Split('/'))
        {
            if (part is "" or ".")
            {
                continue;
            }

            if (part == "..")
            {
                if (stack.Count == 0)
                {
                    return $"is a symbolic link to '{target}', which points out of the set";
                }

                stack.RemoveAt(stack.Count - 1);
            }
            else
            {
                stack.Add(part);
            }
        }

        return stack.Count == 0 ? $"is a symbolic link to '{target}', the set's own folder" : null;
    }

    /// <summary>The <c>/</c>-separated path of <paramref name="full"/> relative to <paramref name="root"/>.</summary>
    internal static string Relative(string root, string full) => Path.GetRelativePath(root, full).Replace(Path.DirectorySeparatorChar, '/');
}
