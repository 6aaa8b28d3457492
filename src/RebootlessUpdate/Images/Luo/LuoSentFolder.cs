using Microsoft.Win32.SafeHandles;

namespace RebootlessUpdate.Images.Luo;

/// <summary>
/// A folder's files preserved in a LUO session and held open (the kernel carries them only while the session's
/// descriptor is open at the kexec). Disposing it without a jump gives the files back, so nothing is lost while this
/// process lives; a process killed before the jump loses them (the kernel drops a closed session's files).
/// </summary>
internal sealed class LuoSentFolder : IDisposable
{
    private readonly HeldFolders _folders;
    private readonly List<(LuoFolderEntry Entry, SafeFileHandle File)> _held = [];
    private SafeFileHandle? _index;
    private bool _done;

    internal LuoSentFolder(LuoSession session, string folder, HeldFolders folders)
    {
        Session = session;
        Folder = folder;
        _folders = folders;
    }

    /// <summary>The folder the files came from.</summary>
    public string Folder { get; }

    /// <summary>The session's name.</summary>
    public string SessionName => Session.Name;

    /// <summary>Files preserved (the index not counted).</summary>
    public int Files => _held.Count;

    /// <summary>Their bytes.</summary>
    public long Bytes { get; internal set; }

    internal LuoSession Session { get; }

    internal void Hold(LuoFolderEntry entry, SafeFileHandle file) => _held.Add((entry, file));

    internal void HoldIndex(SafeFileHandle index) => _index = index;

    /// <summary>
    /// Puts every held file back under its name, through the folder held since it was sent (written anew from the
    /// held descriptor: a name once unlinked cannot be given back to the same file), and ends the session. For a jump
    /// that did not happen. A name taken meanwhile is not overwritten: the file goes to NAME.luo-returned instead.
    /// </summary>
    /// <exception cref="IOException">A file could not be put back under its own name; the others were.</exception>
    public void GiveBack()
    {
        if (_done)
        {
            return;
        }

        _done = true;
        var failures = new List<string>();
        try
        {
            foreach (var (entry, file) in _held)
            {
                var path = _folders.PathOf(entry.Path);
                try
                {
                    try
                    {
                        LuoFolderHandover.WriteNew(path, entry.Mode, file, RandomAccess.GetLength(file));
                    }
                    catch (IOException e) when (e.HResult == Interop.Libc.EExist)
                    {
                        LuoFolderHandover.WriteNew(path + ".luo-returned", entry.Mode, file, RandomAccess.GetLength(file));
                        failures.Add($"{Folder}/{entry.Path}: the name was taken meanwhile; the file is at {entry.Path}.luo-returned");
                    }

                    // Its copy is in place: the original goes at once, so that giving back needs the store's size plus
                    // one file, not twice the store (unlinked files still count against the tmpfs until closed).
                    file.Dispose();
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    failures.Add($"{Folder}/{entry.Path}: {e.Message}");
                }
            }
        }
        finally
        {
            Session.Dispose();
            foreach (var (_, file) in _held)
            {
                file.Dispose();
            }

            _index?.Dispose();
            _folders.Dispose();
        }

        if (failures.Count > 0)
        {
            throw new IOException("files taken for the LUO session could not all be put back: " + string.Join("; ", failures));
        }
    }

    public void Dispose() => GiveBack();
}
