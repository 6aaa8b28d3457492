using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;
using RebootlessUpdate.Images.Interop;
using RebootlessUpdate.Images.PramFs;

namespace RebootlessUpdate.Images.Luo;

/// <summary>
/// Carries a folder on tmpfs across a kexec in one LUO session without copying its files: each file is opened,
/// unlinked (a tmpfs file without a name is, to LUO, a memfd) and preserved under its own token; token 0 holds the
/// index (<see cref="LuoFolderIndex"/>, sealed). The session lives while <see cref="LuoSentFolder"/> is held: keep it
/// until the kexec, or <see cref="LuoSentFolder.GiveBack"/> to put the files back when the jump does not happen.
/// After the jump, <see cref="Receive"/> writes the files under a new folder and finishes the session.
/// </summary>
internal static class LuoFolderHandover
{
    /// <summary>The token of the index.</summary>
    internal const ulong IndexToken = 0;

    /// <summary>TMPFS_MAGIC: LUO preserves shmem files only, so the folder must be on tmpfs.</summary>
    internal const long TmpfsMagic = 0x01021994;

    /// <summary>The largest index read back (a forged one could claim any length).</summary>
    private const long MaxIndexBytes = 64 << 20;

    /// <summary>
    /// Preserves every file under <paramref name="folder"/> in a new session <paramref name="sessionName"/>, but those
    /// <paramref name="leave"/> says stay (given the path under the folder, and whether it is a special file): they
    /// keep their place and do not cross.
    /// </summary>
    /// <exception cref="LuoException">The kernel refused (the folder's files are back in place when this throws).</exception>
    /// <exception cref="IOException">
    /// The folder is not on tmpfs, holds a special file, a file with a second name or another file system, or changed
    /// while it was sent (the files taken are back in place).
    /// </exception>
    internal static LuoSentFolder Send(LuoDevice device, string sessionName, string folder, Func<string, bool, bool>? leave = null)
    {
        var folders = HeldFolders.Open(folder);
        LuoSentFolder? sent = null;
        try
        {
            if (PramFsInterop.FileSystemType(folders.Root) != TmpfsMagic)
            {
                throw new IOException($"{folder} is not on tmpfs: LUO carries only files of tmpfs (shmem) across kexec");
            }

            var entries = Walk(folders, leave);
            sent = new LuoSentFolder(device.CreateSession(sessionName), folder, folders);
            ulong token = IndexToken;
            var index = new List<LuoFolderEntry>();
            foreach (var (kind, path, mode, target) in entries)
            {
                if (kind != LuoEntryKind.File)
                {
                    index.Add(new LuoFolderEntry(kind, path, 0, 0, mode, target));
                    continue;
                }

                var parent = folders.FolderOf(path);
                var name = Path.GetFileName(path);
                var file = Libc.OpenAt(parent, name, Libc.ORdOnly | Libc.ONoFollow | Libc.ONonBlock | Libc.ONoCtty);
                var st = HeldFolders.Stat(file);
                if ((st.st_mode & FilePermissions.S_IFMT) != FilePermissions.S_IFREG || st.st_nlink != 1 || st.st_dev != folders.Device)
                {
                    file.Dispose();
                    throw new IOException($"{folder}/{path} is not a file with one name: LUO carries only a file that unlinking leaves nameless");
                }

                var entry = new LuoFolderEntry(LuoEntryKind.File, path, ++token, st.st_size, mode);
                sent.Hold(entry, file);
                Libc.UnlinkAt(parent, name);
                if (HeldFolders.Stat(file).st_nlink != 0)
                {
                    throw new IOException($"{folder}/{path} was renamed or linked while it was sent");
                }

                sent.Session.Preserve((int)file.DangerousGetHandle(), entry.Token);
                index.Add(entry);
            }

            // A file that appeared meanwhile would not cross: refuse rather than lose it.
            if (Walk(folders, leave).FirstOrDefault(e => e.Kind == LuoEntryKind.File) is { Path: not null } late)
            {
                throw new IOException($"{folder}/{late.Path} appeared while the folder was sent");
            }

            var indexFile = Memfd.Create("rebootless-luo-index");
            sent.HoldIndex(indexFile);
            RandomAccess.Write(indexFile, LuoFolderIndex.Format(index), 0);
            Memfd.SealReadOnly(indexFile);
            sent.Session.Preserve((int)indexFile.DangerousGetHandle(), IndexToken);
            sent.Bytes = index.Sum(e => e.Length);
            return sent;
        }
        catch (Exception e)
        {
            if (sent is null)
            {
                folders.Dispose();
                throw;
            }

            try
            {
                sent.GiveBack();
            }
            catch (IOException g)
            {
                throw new IOException($"{e.Message}; and putting the files back failed: {g.Message}", e);
            }

            throw;
        }
    }

    /// <summary>
    /// Retrieves session <paramref name="sessionName"/>, writes every file it carries under <paramref name="folder"/>
    /// (made anew, 0700 until everything is in; it must not exist) and finishes the session. An entry that cannot be
    /// written, or a file whose length is not the index's, is left out and named in <see cref="LuoReceivedFolder.Problems"/>;
    /// what the files hold is for the store's manifest to judge.
    /// </summary>
    /// <exception cref="LuoException">There is no such session, or the kernel refused.</exception>
    /// <exception cref="InvalidDataException">The index is not one (nothing is written then).</exception>
    /// <exception cref="IOException"><paramref name="folder"/> exists, or cannot be made.</exception>
    internal static LuoReceivedFolder Receive(LuoDevice device, string sessionName, string folder)
    {
        if (Path.Exists(folder))
        {
            throw new IOException($"{folder} exists already: a carried folder is written only into a new one");
        }

        using var session = device.RetrieveSession(sessionName);
        var received = WriteOut(session, folder);
        session.Finish();
        return received;
    }

    /// <summary>
    /// Writes every file the retrieved <paramref name="session"/> carries under <paramref name="folder"/> (made anew),
    /// as <see cref="Receive"/> does, and leaves the session unfinished: a file can be retrieved again until it is.
    /// </summary>
    internal static LuoReceivedFolder WriteOut(LuoSession session, string folder)
    {
        // Every file first: the kernel drops what a retrieved session still holds once its descriptor closes.
        var held = new Dictionary<ulong, SafeFileHandle>();
        try
        {
            IReadOnlyList<LuoFolderEntry> entries;
            using (var indexFile = new SafeFileHandle(session.Retrieve(IndexToken), ownsHandle: true))
            {
                var length = RandomAccess.GetLength(indexFile);
                if (length > MaxIndexBytes)
                {
                    throw new InvalidDataException($"the LUO folder index is {length} bytes, more than any index this writes");
                }

                var text = new byte[length];
                RandomAccess.Read(indexFile, text, 0);
                entries = LuoFolderIndex.Parse(text);
            }

            foreach (var e in entries.Where(e => e.Kind == LuoEntryKind.File))
            {
                held[e.Token] = new SafeFileHandle(session.Retrieve(e.Token), ownsHandle: true);
            }

            using var folders = HeldFolders.Create(folder);
            var problems = new List<string>();
            long bytes = 0;
            foreach (var e in entries)
            {
                try
                {
                    bytes += Write(folders, e, held);
                }
                catch (Exception x) when (x is IOException or UnauthorizedAccessException or LengthMismatchException)
                {
                    problems.Add($"{e.Path}: {x.Message}; left out");
                }
            }

            // Folders get their own modes last, once nothing more is written into them.
            foreach (var e in entries.Where(e => e.Kind == LuoEntryKind.Folder).Reverse())
            {
                try
                {
                    folders.SetMode(e.Path, e.Mode);
                }
                catch (Exception x) when (x is IOException or KeyNotFoundException)
                {
                    problems.Add($"{e.Path}: its mode was not set ({x.Message})");
                }
            }

            return new LuoReceivedFolder(entries.Count(e => e.Kind == LuoEntryKind.File), bytes, problems);
        }
        finally
        {
            foreach (var h in held.Values)
            {
                h.Dispose();
            }
        }
    }

    private sealed class LengthMismatchException(string message) : Exception(message);

    /// <summary>Writes one entry under the new folder; returns the bytes written.</summary>
    private static long Write(HeldFolders folders, LuoFolderEntry e, Dictionary<ulong, SafeFileHandle> held)
    {
        switch (e.Kind)
        {
            case LuoEntryKind.Folder:
                folders.CreateFolder(e.Path);
                return 0;
            case LuoEntryKind.Link:
                File.CreateSymbolicLink(folders.PathOf(e.Path), e.LinkTarget!);
                return 0;
            default:
                using (var source = held[e.Token])
                {
                    var length = RandomAccess.GetLength(source);
                    if (length != e.Length)
                    {
                        throw new LengthMismatchException($"{length} bytes came across, the index says {e.Length}");
                    }

                    WriteNew(folders.PathOf(e.Path), e.Mode, source, length);
                    return length;
                }
        }
    }

    /// <summary>What lies under the held root, folders before their contents; every folder met is opened and held.</summary>
    private static List<(LuoEntryKind Kind, string Path, int Mode, string? Target)> Walk(HeldFolders folders, Func<string, bool, bool>? leave)
    {
        var found = new List<(LuoEntryKind, string, int, string?)>();
        void Visit(string relative, string dir)
        {
            foreach (var name in Directory.EnumerateFileSystemEntries(dir).Select(Path.GetFileName).Order(StringComparer.Ordinal))
            {
                var path = relative.Length == 0 ? name! : $"{relative}/{name}";
                var full = folders.PathOf(path);
                if (Syscall.lstat(full, out var st) != 0)
                {
                    throw new IOException($"cannot stat {path}: {Stdlib.GetLastError()}");
                }

                var mode = (int)(st.st_mode & (FilePermissions)0x1ff);
                var type = st.st_mode & FilePermissions.S_IFMT;
                if (type != FilePermissions.S_IFDIR && leave?.Invoke(path, type is not (FilePermissions.S_IFREG or FilePermissions.S_IFLNK)) == true)
                {
                    continue;
                }

                switch (type)
                {
                    case FilePermissions.S_IFDIR:
                        found.Add((LuoEntryKind.Folder, path, mode, null));
                        folders.OpenFolder(path);
                        Visit(path, folders.HeldPath(path));
                        break;
                    case FilePermissions.S_IFREG:
                        found.Add((LuoEntryKind.File, path, mode, null));
                        break;
                    case FilePermissions.S_IFLNK:
                        found.Add((LuoEntryKind.Link, path, mode, new FileInfo(full).LinkTarget));
                        break;
                    default:
                        throw new IOException($"{path} is a special file (a socket, FIFO or device): LUO cannot carry it");
                }
            }
        }

        Visit(string.Empty, folders.Root);
        return found;
    }

    /// <summary>A new file at <paramref name="path"/> (never through a link, never over one there) with <paramref name="mode"/> and the bytes of <paramref name="source"/>.</summary>
    internal static void WriteNew(string path, int mode, SafeFileHandle source, long length)
    {
        using var target = Libc.Open(path, Libc.OWrOnly | Libc.OCreat | Libc.OExcl | Libc.ONoFollow, Libc.Mode0600);
        if (Syscall.fchmod((int)target.DangerousGetHandle(), (FilePermissions)mode) != 0)
        {
            throw new IOException($"cannot set the mode of {path}: {Stdlib.GetLastError()}");
        }

        Copy(source, target, length, path);
    }

    /// <summary>Copies <paramref name="length"/> bytes in the kernel (sendfile), from offset 0 of both.</summary>
    internal static void Copy(SafeFileHandle source, SafeFileHandle target, long length, string what)
    {
        long offset = 0;
        while (offset < length)
        {
            var n = Syscall.sendfile((int)target.DangerousGetHandle(), (int)source.DangerousGetHandle(), ref offset, (ulong)Math.Min(length - offset, 1L << 30));
            if (n < 0 && Stdlib.GetLastError() == Errno.EINTR)
            {
                continue;
            }

            if (n <= 0)
            {
                throw new IOException($"copying into {what} failed at byte {offset}: {(n < 0 ? Stdlib.GetLastError().ToString() : "the source ended early")}");
            }
        }
    }
}

/// <summary>What <see cref="LuoFolderHandover.Receive"/> wrote.</summary>
/// <param name="Files">Files the index named.</param>
/// <param name="Bytes">Bytes written.</param>
/// <param name="Problems">Files left out, and why.</param>
internal sealed record LuoReceivedFolder(int Files, long Bytes, IReadOnlyList<string> Problems);
