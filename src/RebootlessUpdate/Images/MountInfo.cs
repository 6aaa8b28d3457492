using System.Text.RegularExpressions;

namespace RebootlessUpdate.Images;

/// <summary>
/// One line of <c>/proc/PID/mountinfo</c>: <c>ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE
/// SUPEROPTIONS</c> (proc(5)). The one parser of it: the pmem store's mounts, a container's external mounts and a
/// unit's cgroup folder are all read through it.
/// </summary>
internal sealed partial record MountInfo(string Device, string Root, string MountPoint, string FileSystem, string Source, string SuperOptions)
{
    /// <summary>Mounted with DAX (the pmem store needs it).</summary>
    public bool Dax => SuperOptions.Split(',').Any(o => o is "dax" or "dax=always");

    /// <summary>The mounts <paramref name="file"/> lists, in its order (later mounts over earlier ones).</summary>
    internal static List<MountInfo> Read(string file = "/proc/self/mountinfo") => Parse(File.ReadLines(file));

    /// <summary>The mounts of mountinfo <paramref name="lines"/>; a line that is not one is skipped.</summary>
    internal static List<MountInfo> Parse(IEnumerable<string> lines)
    {
        var list = new List<MountInfo>();
        foreach (var line in lines)
        {
            // The optional fields end at a lone "-"; the fields never hold a space (mountinfo escapes it).
            var fields = line.Split(' ');
            var dash = fields.Length > 6 ? Array.IndexOf(fields, "-", 6) : -1;
            if (dash < 0 || dash + 3 >= fields.Length)
            {
                continue;
            }

            list.Add(new MountInfo(fields[2], Unescape(fields[3]), Unescape(fields[4]), fields[dash + 1], Unescape(fields[dash + 2]), fields[dash + 3]));
        }

        return list;
    }

    /// <summary>mountinfo escapes space, tab, newline and backslash as <c>\ooo</c> octal.</summary>
    private static string Unescape(string s) => s.Contains('\\', StringComparison.Ordinal)
        ? Octal().Replace(s, m => ((char)Convert.ToInt32(m.Groups[1].Value, 8)).ToString())
        : s;

    [GeneratedRegex(@"\\([0-7]{3})")]
    private static partial Regex Octal();
}
