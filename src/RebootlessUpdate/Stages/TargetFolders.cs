using System.Globalization;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.Stages;

/// <summary>Where a target's images and work files go, and how big its images are.</summary>
internal static class TargetFolders
{
    /// <summary>The target's folder name in a set: its index and its id, made safe for a file name.</summary>
    internal static string FolderName(int index, UpdateTarget target)
    {
        var chars = target.Id.Select(c => char.IsAsciiLetterOrDigit(c) ? c : '-').ToArray();
        var name = new string(chars).Trim('-');
        return index.ToString("00", CultureInfo.InvariantCulture) + "-" + (name.Length > 60 ? name[..60] : name);
    }

    /// <summary>The target's private work folder (CRIU's logs, the lazy-pages socket and pid file), under the run's log folder.</summary>
    internal static string WorkDirectory(UpdateContext context, TargetRun t)
    {
        var dir = Path.Combine(UpdateJournal.LogDirectoryOf(context.RequireStore().RootDirectory, context.SetId!), t.Folder!);
        Directory.CreateDirectory(dir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        return dir;
    }

    /// <summary>Bytes of the files under <paramref name="dir"/>.</summary>
    internal static long FolderBytes(string dir)
    {
        try
        {
            return new DirectoryInfo(dir).EnumerateFiles("*", SearchOption.AllDirectories).Sum(f => f.Length);
        }
        catch (IOException)
        {
            return 0;
        }
    }
}
