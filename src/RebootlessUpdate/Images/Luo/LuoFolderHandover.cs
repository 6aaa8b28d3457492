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

    /// <summary>Preserves every file under <paramref name="folder"/> in a new session <paramref name="sessionName"/>.</summary>
    /// <exception cref="LuoException">The kernel refused (the folder's files are back in place when this throws).</exception>
    /// <exception cref="IOException">The folder is not on tmpfs, holds a special file or a file with a second name.</exception>
    internal static LuoSentFolder Send(LuoDevice device, string sessionName, string folder)
    {
        if (PramFsInterop.FileSystemType(folder) != TmpfsMagic)
        {
            throw new IOException($"{folder} is not on tmpfs: LUO carries only files of tmpfs (shmem) across kexec");
        }

        var entries = Walk(folder);
        var session = device.CreateSession(sessionName);
        var sent = new LuoSentFolder(session, folder);
        try
        {
            ulong token = IndexToken;
            var index = new List<LuoFolderEntry>();
            foreach (var (kind, path, mode, target) in entries)
            {
                if (kind != LuoEntryKind.File)
                {
                    index.Add(new LuoFolderEntry(kind, path, 0, 0, mode, target));
                    continue;
                }

                var full = Path.Combine(folder, path);
                var file = Libc.Open(full, Libc.ORdOnly | Libc.ONoFollow);
                if (Syscall.fstat((int)file.DangerousGetHandle(), out var st) != 0 || (st.st_mode & FilePermissions.S_IFMT) != FilePermissions.S_IFREG || st.st_nlink != 1)
                {
                    file.Dispose();
                    throw new IOException($"{full} is not a file with one name: LUO carries only a file that unlinking leaves nameless");
                }

                var entry = new LuoFolderEntry(LuoEntryKind.File, path, ++token, st.st_size, mode);
                sent.Hold(entry, file);
                File.Delete(full);
                session.Preserve((int)file.DangerousGetHandle(), entry.Token);
                index.Add(entry);
            }

            var indexFile = Memfd.Create("rebootless-luo-index");
            var text = LuoFolderIndex.Format(index);
            RandomAccess.Write(indexFile, text, 0);
            Memfd.SealReadOnly(indexFile);
            sent.HoldIndex(indexFile);
            session.Preserve((int)indexFile.DangerousGetHandle(), IndexToken);
            sent.Bytes = index.Sum(e => e.Length);
            return sent;
        }
        catch
        {
            sent.GiveBack();
            throw;
        }
    }

    /// <summary>
    /// Retrieves session <paramref name="sessionName"/>, writes every file it carries under <paramref name="folder"/>
    /// (created, 0700; it must not exist) and finishes the session. A file whose length is not the index's is left
    /// out and named in <see cref="LuoReceivedFolder.Problems"/>; what it held is for the store's manifest to judge.
    /// </summary>
    /// <exception cref="LuoException">There is no such session, or the kernel refused.</exception>
    /// <exception cref="InvalidDataException">The index is not one (nothing is written then).</exception>
    /// <exception cref="IOException"><paramref name="folder"/> exists, or a file could not be written.</exception>
    internal static LuoReceivedFolder Receive(LuoDevice device, string sessionName, string folder)
    {
        if (Path.Exists(folder))
        {
            throw new IOException($"{folder} exists already: a carried folder is written only into a new one");
        }

        using var session = device.RetrieveSession(sessionName);

        // Every file first: the kernel drops what a retrieved session still holds once its descriptor closes.
        var held = new Dictionary<ulong, SafeFileHandle>();
        try
        {
            using var indexFile = new SafeFileHandle(session.Retrieve(IndexToken), ownsHandle: true);
            var text = new byte[RandomAccess.GetLength(indexFile)];
            RandomAccess.Read(indexFile, text, 0);
            var entries = LuoFolderIndex.Parse(text);
            foreach (var e in entries.Where(e => e.Kind == LuoEntryKind.File))
            {
                held[e.Token] = new SafeFileHandle(session.Retrieve(e.Token), ownsHandle: true);
            }

            Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(folder))!);
            Directory.CreateDirectory(folder, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            var problems = new List<string>();
            long bytes = 0;
            foreach (var e in entries)
            {
                var full = Path.Combine(folder, e.Path);
                switch (e.Kind)
                {
                    case LuoEntryKind.Folder:
                        Directory.CreateDirectory(full);
                        File.SetUnixFileMode(full, (UnixFileMode)e.Mode);
                        break;
                    case LuoEntryKind.Link:
                        File.CreateSymbolicLink(full, e.LinkTarget!);
                        break;
                    default:
                        var source = held[e.Token];
                        var length = RandomAccess.GetLength(source);
                        if (length != e.Length)
                        {
                            problems.Add($"{e.Path}: {length} bytes came across, the index says {e.Length}; left out");
                            break;
                        }

                        WriteNew(full, e.Mode, source, length);

                        bytes += length;
                        break;
                }
            }

            session.Finish();
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

    /// <summary>What lies under <paramref name="folder"/>, folders before their contents.</summary>
    private static List<(LuoEntryKind Kind, string Path, int Mode, string? Target)> Walk(string folder)
    {
        var found = new List<(LuoEntryKind, string, int, string?)>();
        void Visit(string dir)
        {
            foreach (var full in Directory.EnumerateFileSystemEntries(dir).Order(StringComparer.Ordinal))
            {
                var path = Path.GetRelativePath(folder, full).Replace('\\', '/');
                if (Syscall.lstat(full, out var st) != 0)
                {
                    throw new IOException($"cannot stat {full}: {Stdlib.GetLastError()}");
                }

                var mode = (int)(st.st_mode & (FilePermissions)0x1ff);
                switch (st.st_mode & FilePermissions.S_IFMT)
                {
                    case FilePermissions.S_IFDIR:
                        found.Add((LuoEntryKind.Folder, path, mode, null));
                        Visit(full);
                        break;
                    case FilePermissions.S_IFREG:
                        found.Add((LuoEntryKind.File, path, mode, null));
                        break;
                    case FilePermissions.S_IFLNK:
                        found.Add((LuoEntryKind.Link, path, mode, new FileInfo(full).LinkTarget));
                        break;
                    default:
                        throw new IOException($"{full} is a special file (a socket, FIFO or device): LUO cannot carry it");
                }
            }
        }

        Visit(folder);
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
