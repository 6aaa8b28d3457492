using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;
using RebootlessUpdate.Images.Interop;

namespace RebootlessUpdate.Images.Luo;

/// <summary>
/// The folders of a tree, each opened once and never through a link, and every path under them reached through its
/// folder's descriptor (<c>/proc/self/fd/N/NAME</c>): a folder renamed or swapped for a symbolic link after it was
/// opened cannot redirect an unlink, a create or a mode change outside the tree. Folders on another file system
/// than the root's (a mount inside the tree) are refused.
/// </summary>
internal sealed class HeldFolders : IDisposable
{
    private readonly Dictionary<string, SafeFileHandle> _folders = new(StringComparer.Ordinal);
    private readonly ulong _device;

    private HeldFolders(SafeFileHandle root)
    {
        _folders[string.Empty] = root;
        _device = Stat(root).st_dev;
    }

    /// <summary>Opens <paramref name="folder"/> (which must not be a link itself) as the root of the tree.</summary>
    /// <exception cref="IOException">It cannot be opened as a folder.</exception>
    internal static HeldFolders Open(string folder) =>
        new(Libc.Open(folder, Libc.ORdOnly | Libc.ODirectory | Libc.ONoFollow));

    /// <summary>Makes <paramref name="folder"/> (0700; it must not exist; its parents are made as needed) and holds it as the root.</summary>
    /// <exception cref="IOException">It exists already, or cannot be made.</exception>
    internal static HeldFolders Create(string folder)
    {
        var full = Path.GetFullPath(folder);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        using var parent = Libc.Open(Path.GetDirectoryName(full)!, Libc.ORdOnly | Libc.ODirectory);
        if (!Libc.MkdirAt(parent, Path.GetFileName(full), 0x1c0))
        {
            throw new IOException($"{full} exists already: a carried folder is written only into a new one");
        }

        return new(Libc.OpenAt(parent, Path.GetFileName(full), Libc.ORdOnly | Libc.ODirectory | Libc.ONoFollow));
    }

    /// <summary>The root folder as a path that reaches exactly the opened folder.</summary>
    internal string Root => HeldPath(string.Empty);

    /// <summary>The path of <paramref name="relative"/> through its held folder.</summary>
    internal string PathOf(string relative) => $"{HeldPath(Parent(relative))}/{Path.GetFileName(relative)}";

    /// <summary>The held descriptor of the folder <paramref name="relative"/> lies in.</summary>
    internal SafeFileHandle FolderOf(string relative) => _folders[Parent(relative)];

    /// <summary>Opens the existing folder <paramref name="relative"/> without following a link, on the root's file system.</summary>
    /// <exception cref="IOException">It is a link, not a folder, or on another file system.</exception>
    internal void OpenFolder(string relative)
    {
        if (_folders.ContainsKey(relative))
        {
            return;
        }

        var handle = Libc.OpenAt(FolderOf(relative), Path.GetFileName(relative), Libc.ORdOnly | Libc.ODirectory | Libc.ONoFollow);
        if (Stat(handle).st_dev != _device)
        {
            handle.Dispose();
            throw new IOException($"{relative} is another file system mounted inside the folder");
        }

        _folders[relative] = handle;
    }

    /// <summary>Makes the folder <paramref name="relative"/> (0700; it must be new) and holds it.</summary>
    /// <exception cref="IOException">Something has that name already.</exception>
    internal void CreateFolder(string relative)
    {
        if (!Libc.MkdirAt(FolderOf(relative), Path.GetFileName(relative), 0x1c0))
        {
            throw new IOException($"{relative} exists already");
        }

        OpenFolder(relative);
    }

    /// <summary>Sets the mode of the held folder <paramref name="relative"/>.</summary>
    internal void SetMode(string relative, int mode)
    {
        if (Syscall.fchmod((int)_folders[relative].DangerousGetHandle(), (FilePermissions)mode) != 0)
        {
            throw new IOException($"cannot set the mode of {relative}: {Stdlib.GetLastError()}");
        }
    }

    /// <summary>The file system device of the tree.</summary>
    internal ulong Device => _device;

    /// <summary>fstat of a descriptor.</summary>
    internal static Stat Stat(SafeFileHandle handle) =>
        Syscall.fstat((int)handle.DangerousGetHandle(), out var st) == 0 ? st : throw new IOException($"fstat failed: {Stdlib.GetLastError()}");

    /// <summary>A path that reaches exactly the held folder <paramref name="relative"/>, whatever its name leads to now.</summary>
    internal string HeldPath(string relative) => $"/proc/self/fd/{(int)_folders[relative].DangerousGetHandle()}";

    private static string Parent(string relative) => Path.GetDirectoryName(relative) ?? string.Empty;

    public void Dispose()
    {
        foreach (var h in _folders.Values)
        {
            h.Dispose();
        }

        _folders.Clear();
    }
}
