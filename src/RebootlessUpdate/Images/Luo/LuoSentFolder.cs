using Microsoft.Win32.SafeHandles;

namespace RebootlessUpdate.Images.Luo;

/// <summary>
/// A folder's files preserved in a LUO session and held open (the kernel carries them only while the session's
/// descriptor is open at the kexec). Disposing it without a jump gives the files back, so nothing is lost.
/// </summary>
internal sealed class LuoSentFolder : IDisposable
{
    private readonly LuoSession _session;
    private readonly List<(LuoFolderEntry Entry, SafeFileHandle File)> _held = [];
    private SafeFileHandle? _index;
    private bool _done;

    internal LuoSentFolder(LuoSession session, string folder)
    {
        _session = session;
        Folder = folder;
    }

    /// <summary>The folder the files came from.</summary>
    public string Folder { get; }

    /// <summary>The session's name.</summary>
    public string SessionName => _session.Name;

    /// <summary>Files preserved (the index not counted).</summary>
    public int Files => _held.Count;

    /// <summary>Their bytes.</summary>
    public long Bytes { get; internal set; }

    internal void Hold(LuoFolderEntry entry, SafeFileHandle file) => _held.Add((entry, file));

    internal void HoldIndex(SafeFileHandle index) => _index = index;

    /// <summary>
    /// Puts every held file back under its name (written anew from the held descriptor: a name once unlinked cannot be
    /// given back to the same file) and ends the session. For a jump that did not happen.
    /// </summary>
    /// <exception cref="IOException">A file could not be written back; the others were.</exception>
    public void GiveBack()
    {
        if (_done)
        {
            return;
        }

        _done = true;
        var failures = new List<string>();
        foreach (var (entry, file) in _held)
        {
            var full = Path.Combine(Folder, entry.Path);
            try
            {
                if (!File.Exists(full))
                {
                    LuoFolderHandover.WriteNew(full, entry.Mode, file, RandomAccess.GetLength(file));
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                failures.Add($"{full}: {e.Message}");
            }
        }

        Close();
        if (failures.Count > 0)
        {
            throw new IOException("files taken for the LUO session could not all be put back: " + string.Join("; ", failures));
        }
    }

    private void Close()
    {
        _session.Dispose();
        foreach (var (_, file) in _held)
        {
            file.Dispose();
        }

        _index?.Dispose();
    }

    public void Dispose() => GiveBack();
}
