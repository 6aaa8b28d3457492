using System.Globalization;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;
using RebootlessUpdate.Images.Interop;

namespace RebootlessUpdate.Images;

/// <summary>
/// How the store looks at what lies in it without trusting it: no symbolic link is
/// followed, nothing is read before its type is checked, and a named pipe or device
/// never blocks a read (an attacker's FIFO in place of a manifest must not hang
/// <c>images ls</c> or a rehearsal holding the lock). Also the ownership rules for the
/// store path and the folders inside the store.
/// </summary>
internal static class StoreFiles
{
    private const FilePermissions WritableByOthers = FilePermissions.S_IWGRP | FilePermissions.S_IWOTH;

    /// <summary>Symbolic links followed at most while checking a store path (the kernel's own limit).</summary>
    private const int MaxLinks = 40;

    /// <summary>
    /// Writes <paramref name="content"/> to <paramref name="path"/> whole or not at all, inside its folder opened once
    /// (see <see cref="WriteAtomicallyIn"/>).
    /// </summary>
    internal static void WriteAtomically(string path, ReadOnlySpan<byte> content, bool overwrite = true, bool syncDirectory = true, int mode = Libc.Mode0600)
    {
        var folder = Path.GetDirectoryName(Path.GetFullPath(path))!;
        using var dir = Libc.Open(folder, Libc.ORdOnly | Libc.ODirectory);
        WriteAtomicallyIn(dir, folder, Path.GetFileName(path), content, overwrite, syncDirectory, mode);
    }

    /// <summary>
    /// Writes <paramref name="content"/> to <paramref name="name"/> in the open folder <paramref name="dir"/> (at
    /// <paramref name="folder"/>, for messages) whole or not at all: into a new file beside it (<c>NAME.tmp</c>; a stale
    /// one, or a link or FIFO planted there, is removed, never followed), fsynced, then renamed over the name (given
    /// the name only if it is free, unless <paramref name="overwrite"/>: see <see cref="Libc.RenameAtNoReplace"/>); with <paramref name="syncDirectory"/> the
    /// folder is fsynced too, so that the rename survives a kexec (which does not flush the page cache). Every step
    /// names the file relative to the open folder (openat, renameat, renameat2): a link swapped in for the folder after it
    /// was opened cannot carry the write elsewhere. A failure leaves no partial file behind: it must not keep the
    /// space a retry needs.
    /// </summary>
    internal static void WriteAtomicallyIn(SafeFileHandle dir, string folder, string name, ReadOnlySpan<byte> content, bool overwrite = true,
        bool syncDirectory = true, int mode = Libc.Mode0600)
    {
        var temp = name + ".tmp";
        Libc.UnlinkAt(dir, temp);
        try
        {
            using (var file = Libc.OpenAt(dir, temp, Libc.OWrOnly | Libc.OCreat | Libc.OExcl | Libc.ONoFollow, mode))
            {
                RandomAccess.Write(file, content, 0);
                Libc.FsyncOrThrow(file, Path.Combine(folder, temp));
            }

            if (overwrite)
            {
                Libc.RenameAt(dir, temp, name);
            }
            else
            {
                Libc.RenameAtNoReplace(dir, temp, name);
            }
        }
        catch (Exception e)
        {
            try
            {
                Libc.UnlinkAt(dir, temp);
            }
            catch (IOException)
            {
                // The first failure is the one to report.
            }

            // The calls name the file within the folder; the message names the folder too (the errno stays the HResult).
            if (e is IOException io && !io.Message.Contains(folder, StringComparison.Ordinal))
            {
                throw new IOException($"writing {Path.Combine(folder, name)}: {io.Message}", io) { HResult = io.HResult };
            }

            throw;
        }

        if (syncDirectory)
        {
            Libc.FsyncOrThrow(dir, folder);
        }
    }

    /// <summary>
    /// Opens a file of ours that has no other name (<see cref="OpenRegular"/> with <c>ownOnly</c>, and one link):
    /// what the tool writes in place or cuts short, so that a hard link planted at its path never carries the
    /// change to someone else's file.
    /// </summary>
    /// <exception cref="IOException">It is not such a file (<see cref="NotARegularFileException"/>, <see cref="UntrustedFileException"/>), or open failed.</exception>
    internal static SafeFileHandle OpenOwnSingle(string path, int flags)
    {
        var handle = OpenRegular(path, flags, ownOnly: true);
        if (FStat(handle, out var st) != 0 || st.st_nlink != 1)
        {
            handle.Dispose();
            throw new UntrustedFileException(path, $"has {st.st_nlink} names: another may be someone else's file");
        }

        return handle;
    }

    /// <summary>Creates <paramref name="path"/> with <paramref name="content"/>, fsynced; refuses anything already there and never follows a link.</summary>
    internal static void WriteNew(string path, ReadOnlySpan<byte> content, int mode = Libc.Mode0600)
    {
        using var handle = Libc.Open(path, Libc.OWrOnly | Libc.OCreat | Libc.OExcl | Libc.ONoFollow, mode);
        RandomAccess.Write(handle, content, 0);
        Libc.FsyncOrThrow(handle, path);
    }

    /// <summary>
    /// Opens <paramref name="path"/> with O_NOFOLLOW|O_NONBLOCK|O_NOCTTY (so a FIFO or tty
    /// neither blocks nor becomes ours), fstats the handle and refuses anything but a
    /// regular file; with <paramref name="ownOnly"/> also one that is not ours (or root's, with <paramref name="rootMayOwn"/>; see
    /// <see cref="CheckOwn"/>). Every check is made on the opened handle, so what is
    /// checked is what is read, whatever is swapped in at the path meanwhile.
    /// </summary>
    /// <exception cref="NotARegularFileException">The path is a link, FIFO, socket, device or folder.</exception>
    /// <exception cref="UntrustedFileException">With <paramref name="ownOnly"/>: another user's file, or one its group or others may write.</exception>
    /// <exception cref="IOException">open failed otherwise (the message names the path and errno).</exception>
    internal static SafeFileHandle OpenRegular(string path, int flags = Libc.ORdOnly, int mode = 0, bool ownOnly = false, bool rootMayOwn = false)
    {
        SafeFileHandle handle;
        try
        {
            handle = Libc.Open(path, flags | Libc.ONoFollow | Libc.ONonBlock | Libc.ONoCtty, mode);
        }
        catch (IOException e) when (e.HResult == Libc.ELoop)
        {
            throw new NotARegularFileException(path, FilePermissions.S_IFLNK);
        }

        try
        {
            var fstat = FStat(handle, out var st);
            var type = fstat == 0 ? st.st_mode & FilePermissions.S_IFMT : 0;
            if (type != FilePermissions.S_IFREG)
            {
                throw new NotARegularFileException(path, type);
            }

            if (ownOnly && CheckOwn(st, rootMayOwn) is { } why)
            {
                throw new UntrustedFileException(path, why);
            }

            return handle;
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Reads a whole regular file opened with <see cref="OpenRegular"/> (with <paramref name="ownOnly"/>
    /// only one of ours); refuses one larger than <paramref name="maxBytes"/> unread, and one that
    /// shrinks while it is read.
    /// </summary>
    /// <exception cref="NotARegularFileException">The path is a link, FIFO, socket, device or folder.</exception>
    /// <exception cref="UntrustedFileException">With <paramref name="ownOnly"/>: another user's file, or one its group or others may write.</exception>
    /// <exception cref="IOException">It cannot be opened or read, is too large or shrank (the message names the path).</exception>
    internal static byte[] ReadRegular(string path, long maxBytes, bool ownOnly = false, bool rootMayOwn = false)
    {
        using var handle = OpenRegular(path, ownOnly: ownOnly, rootMayOwn: rootMayOwn);
        var length = RandomAccess.GetLength(handle);
        if (length > maxBytes)
        {
            throw new IOException($"{path} holds {length} bytes, more than the {maxBytes} such a file can hold");
        }

        var buffer = new byte[length];
        var read = 0;
        while (read < buffer.Length)
        {
            var n = RandomAccess.Read(handle, buffer.AsSpan(read), read);
            if (n == 0)
            {
                throw new IOException($"{path} shrank while it was read ({read} of {buffer.Length} bytes)");
            }

            read += n;
        }

        return buffer;
    }

    /// <summary>
    /// Null when <paramref name="st"/> (of a file or folder) is ours: owned by the user running
    /// rebootless and not writable by its group or others. Otherwise why not, as a phrase
    /// ("belongs to uid 65534, ...").
    /// </summary>
    internal static string? CheckOwn(in Stat st, bool rootMayOwn = false) =>
        (rootMayOwn && st.st_uid == 0 ? null : CheckOwner(st))
        ?? ((st.st_mode & WritableByOthers) != 0 ? $"is writable by {WhoMayWrite(st.st_mode)} (mode {Octal(st.st_mode)})" : null);

    /// <summary>Null when <paramref name="st"/> belongs to the user running rebootless; otherwise why not, as a phrase.</summary>
    internal static string? CheckOwner(in Stat st)
    {
        var euid = Syscall.geteuid();
        return st.st_uid != euid ? $"belongs to uid {st.st_uid}, not to uid {euid} that runs rebootless" : null;
    }

    private static int FStat(SafeFileHandle handle, out Stat st)
    {
        var added = false;
        try
        {
            handle.DangerousAddRef(ref added);
            return Syscall.fstat((int)handle.DangerousGetHandle(), out st);
        }
        finally
        {
            if (added)
            {
                handle.DangerousRelease();
            }
        }
    }

    /// <summary>The type of <paramref name="path"/> itself (not following a link), or null when it does not exist.</summary>
    /// <exception cref="IOException">lstat failed for another reason than a missing path.</exception>
    internal static FilePermissions? TypeOf(string path)
    {
        if (Syscall.lstat(path, out var st) == 0)
        {
            return st.st_mode & FilePermissions.S_IFMT;
        }

        var errno = Stdlib.GetLastError();
        return errno is Errno.ENOENT or Errno.ENOTDIR
            ? null
            : throw new IOException($"lstat {path} failed: {Stdlib.strerror(errno)}");
    }

    /// <summary>
    /// Null when <paramref name="path"/> is a folder of ours: a real folder (not a symbolic
    /// link), owned by the user running rebootless, not writable by its group or others
    /// (unless <paramref name="anyMode"/>, for a folder about to be chmod'ed).
    /// Otherwise why not, as a phrase ("is a symbolic link to ...").
    /// </summary>
    internal static string? CheckOwnFolder(string path, bool anyMode = false)
    {
        if (Syscall.lstat(path, out var st) != 0)
        {
            return Stdlib.GetLastError() == Errno.ENOENT ? "does not exist" : $"cannot be examined: {Stdlib.strerror(Stdlib.GetLastError())}";
        }

        var type = st.st_mode & FilePermissions.S_IFMT;
        if (type == FilePermissions.S_IFLNK)
        {
            return $"is a symbolic link (to '{ReadLink(path)}'), not a folder";
        }

        if (type != FilePermissions.S_IFDIR)
        {
            return $"is a {Describe(type)}, not a folder";
        }

        // A folder about to be chmod'ed is judged by its owner alone.
        return CheckOwn(anyMode ? st with { st_mode = st.st_mode & ~WritableByOthers } : st);
    }

    /// <summary>
    /// Checks every folder on the way to the store root <paramref name="root"/> (an absolute
    /// path) with lstat, following only links that belong to root or to us: each folder must
    /// belong to root or to us and must not be writable by its group or others, unless it has
    /// the sticky bit (like /tmp) and what follows in it is ours. Otherwise someone else could
    /// swap the folders below it and have rebootless chmod and fill a place of their choosing.
    /// Components that do not exist yet are fine: rebootless creates them.
    /// </summary>
    /// <exception cref="UnsafeStorePathException">A folder or link on the way is not trustworthy; the message names it and why.</exception>
    internal static void CheckStorePath(string root)
    {
        var euid = Syscall.geteuid();
        bool Trusted(uint uid) => uid == 0 || uid == euid;
        var pending = new LinkedList<string>(root.Split('/', StringSplitOptions.RemoveEmptyEntries));
        var current = "/";
        var links = 0;
        var parentShared = CheckAncestor(root, current, pending.Count == 0, euid);
        while (pending.First is { } first)
        {
            var part = first.Value;
            pending.RemoveFirst();
            if (part == ".")
            {
                continue;
            }

            if (part == "..")
            {
                current = Path.GetDirectoryName(current) ?? "/";
                parentShared = false; // climbing back up: the folder left was already checked as an ancestor
                continue;
            }

            var path = Path.Combine(current, part);
            if (Syscall.lstat(path, out var st) != 0)
            {
                if (Stdlib.GetLastError() == Errno.ENOENT)
                {
                    return; // rebootless creates the rest, as the caller, inside a folder checked above
                }

                throw new UnsafeStorePathException(root, path, $"cannot be examined ({Stdlib.strerror(Stdlib.GetLastError())})");
            }

            if (parentShared && !Trusted(st.st_uid))
            {
                throw new UnsafeStorePathException(root, path,
                    $"belongs to uid {st.st_uid} and lies in {current}, a folder everyone may write to");
            }

            var type = st.st_mode & FilePermissions.S_IFMT;
            if (type == FilePermissions.S_IFLNK)
            {
                if (!Trusted(st.st_uid))
                {
                    throw new UnsafeStorePathException(root, path, $"is a symbolic link that belongs to uid {st.st_uid}: its owner decides where the store really is");
                }

                if (++links > MaxLinks)
                {
                    throw new UnsafeStorePathException(root, path, $"leads through more than {MaxLinks} symbolic links");
                }

                var target = ReadLink(path);
                foreach (var p in target.Split('/', StringSplitOptions.RemoveEmptyEntries).Reverse())
                {
                    pending.AddFirst(p);
                }

                if (target.StartsWith('/'))
                {
                    current = "/";
                    parentShared = CheckAncestor(root, current, isStoreItself: false, euid);
                }

                continue;
            }

            if (type != FilePermissions.S_IFDIR)
            {
                throw new UnsafeStorePathException(root, path, $"is a {Describe(type)}, not a folder");
            }

            current = path;
            parentShared = CheckAncestor(root, current, pending.Count == 0, euid);
        }
    }

    /// <summary>Checks one folder on the way to the store; returns true when it is shared (sticky and writable by others).</summary>
    private static bool CheckAncestor(string root, string folder, bool isStoreItself, uint euid)
    {
        if (Syscall.lstat(folder, out var st) != 0)
        {
            throw new UnsafeStorePathException(root, folder, $"cannot be examined ({Stdlib.strerror(Stdlib.GetLastError())})");
        }

        if (isStoreItself)
        {
            return false; // the store folder itself: its owner and mode are the store's own checks
        }

        if (UntrustedFolder(st, euid) is { } why)
        {
            throw new UnsafeStorePathException(root, folder, why);
        }

        return (st.st_mode & WritableByOthers) != 0;
    }

    /// <summary>
    /// Why a folder someone relies on (the way to the store, the folder of a config file) cannot be trusted, as a phrase:
    /// it belongs to neither root nor <paramref name="euid"/>, or others may write to it without the sticky bit. Null when it can.
    /// </summary>
    internal static string? UntrustedFolder(in Stat st, uint euid) =>
        st.st_uid != 0 && st.st_uid != euid
            ? $"belongs to uid {st.st_uid}, neither root nor uid {euid} that runs rebootless"
            : (st.st_mode & WritableByOthers) != 0 && (st.st_mode & FilePermissions.S_ISVTX) == 0
                ? $"is writable by {WhoMayWrite(st.st_mode)} (mode {Octal(st.st_mode)}) without the sticky bit, so anyone may replace what lies below it"
                : null;

    /// <summary>The target of the symbolic link <paramref name="path"/>.</summary>
    internal static string ReadLink(string path) =>
        new FileInfo(path).LinkTarget ?? throw new IOException($"{path} is not a symbolic link");

    /// <summary>A file type in words ("named pipe").</summary>
    internal static string Describe(FilePermissions type) => type switch
    {
        FilePermissions.S_IFDIR => "folder",
        FilePermissions.S_IFLNK => "symbolic link",
        FilePermissions.S_IFREG => "file",
        FilePermissions.S_IFIFO => "named pipe",
        FilePermissions.S_IFSOCK => "socket",
        FilePermissions.S_IFCHR => "character device",
        FilePermissions.S_IFBLK => "block device",
        _ => "special file",
    };

    private static string WhoMayWrite(FilePermissions mode) =>
        (mode & WritableByOthers) == WritableByOthers ? "its group and others" : (mode & FilePermissions.S_IWGRP) != 0 ? "its group" : "others";

    private static string Octal(FilePermissions mode) => Convert.ToString((int)(mode & FilePermissions.ALLPERMS), 8).PadLeft(4, '0');
}

/// <summary>Something in the store that must be a regular file is not (a link, FIFO, socket, device or folder).</summary>
internal sealed class NotARegularFileException : IOException
{
    internal NotARegularFileException(string path, FilePermissions type)
        : base($"{path} is a {StoreFiles.Describe(type)}, not a regular file")
    {
        Kind = StoreFiles.Describe(type);
    }

    /// <summary>What it is instead ("named pipe").</summary>
    internal string Kind { get; }
}

/// <summary>A file in the store that must be ours is not: another user's, or one its group or others may write.</summary>
internal sealed class UntrustedFileException : IOException
{
    internal UntrustedFileException(string path, string why)
        : base($"{path} {why}")
    {
    }
}
