using System.Diagnostics;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using RebootlessUpdate.Images.Interop;

namespace RebootlessUpdate.Images.Luo;

/// <summary>
/// The LUO store's own tmpfs: mounted (0700, nosuid, nodev, noexec, source <see cref="LuoImageStore.MountSource"/>) unless
/// it is there, and trusted only while it is root's alone; and the lock under which one process at a time opens the
/// store in it. Two processes opening the store at once would each find no tmpfs and mount one (the second hiding the
/// first and what it wrote), or both receive the session, or both make the store's marker. So the mount is checked and
/// made under a flock on the mount point folder as it is when opened (the folder under the mount, or the tmpfs's root
/// once it is mounted: a process that opens it after the mount finds it mounted), and the store is received and opened
/// under a lock file in the tmpfs, which every process sees once it is mounted.
/// </summary>
internal static class LuoStoreMount
{
    /// <summary>How long another process's mount or open is waited for before the store is reported in use.</summary>
    internal static readonly TimeSpan LockWait = TimeSpan.FromSeconds(5);

    /// <summary>The open lock's file, in the tmpfs (never handed over: it is outside the store's folder).</summary>
    internal const string OpenLockFile = ".open.lock";

    private const ulong MsNoSuid = 2;
    private const ulong MsNoDev = 4;
    private const ulong MsNoExec = 8;

    /// <exception cref="ImageStoreLockedException">Another process held the mount point longer than <see cref="LockWait"/>.</exception>
    /// <exception cref="ImageStoreException">The mount point is a symbolic link, holds another file system or a tmpfs that is
    /// not the store's own and root's alone, or the tmpfs cannot be mounted.</exception>
    internal static void Ensure(string mountPoint)
    {
        Directory.CreateDirectory(mountPoint, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        using var folder = OpenFolder(mountPoint);
        Waiting(() =>
        {
            if (Libc.Flock(folder, Libc.LockEx | Libc.LockNb) == 0)
            {
                return true;
            }

            var errno = Marshal.GetLastPInvokeError();
            return errno == Libc.EAgain
                ? throw new ImageStoreLockedException(mountPoint, (int?)null)
                : throw new ImageStoreException($"cannot lock the LUO store's mount point: {Libc.Error($"flock {mountPoint}", errno).Message}");
        });
        MountUnlessThere(mountPoint);
    }

    /// <summary>The open lock of the store mounted at <paramref name="mountPoint"/>, held while it is received and opened.</summary>
    /// <exception cref="ImageStoreLockedException">Another process held it longer than <see cref="LockWait"/> (a receive of a large store).</exception>
    internal static ImageStoreLock LockOpening(string mountPoint) => Waiting(() => StoreLock.Acquire(Path.Combine(mountPoint, OpenLockFile)));

    /// <summary>Tries <paramref name="take"/> until it does not throw <see cref="ImageStoreLockedException"/>, for <see cref="LockWait"/> at most.</summary>
    private static T Waiting<T>(Func<T> take)
    {
        var deadline = Stopwatch.GetTimestamp() + (long)(LockWait.TotalSeconds * Stopwatch.Frequency);
        while (true)
        {
            try
            {
                return take();
            }
            catch (ImageStoreLockedException) when (Stopwatch.GetTimestamp() < deadline)
            {
                Thread.Sleep(50);
            }
        }
    }

    private static SafeFileHandle OpenFolder(string mountPoint)
    {
        try
        {
            // No link followed: a link put in place of the mount point would have the tmpfs mounted wherever it points.
            return Libc.Open(mountPoint, Libc.ORdOnly | Libc.ODirectory | Libc.ONoFollow);
        }
        catch (IOException e) when (new FileInfo(mountPoint).LinkTarget is not null)
        {
            throw new ImageStoreException($"{mountPoint} is a symbolic link: a LUO store mounts its tmpfs on a folder, never where a link points; "
                + "remove the link (after checking who put it there) or give another --store-mount", e);
        }
        catch (IOException e)
        {
            throw new ImageStoreException($"cannot open the LUO store's mount point: {e.Message}", e);
        }
    }

    private static void MountUnlessThere(string mountPoint)
    {
        var here = MountInfo.Read().LastOrDefault(m => m.MountPoint == mountPoint);
        if (here is { FileSystem: "tmpfs", Source: LuoImageStore.MountSource })
        {
            // Its own mount, and still root's alone: what lies in it was written by this store.
            if (Mono.Unix.Native.Syscall.stat(mountPoint, out var st) != 0 || st.st_uid != 0
                || (st.st_mode & (Mono.Unix.Native.FilePermissions)0x3f) != 0)
            {
                throw new ImageStoreException($"the LUO store's tmpfs at {mountPoint} is not root's alone (0700): it is not trusted; unmount it (umount {mountPoint})");
            }

            return;
        }

        if (here is not null)
        {
            throw new ImageStoreException($"{mountPoint} is a {here.FileSystem} mount ({here.Source}), not the store's own tmpfs: a LUO store mounts "
                + "its own there (LUO carries only tmpfs files, and a shared one could hold anybody's files); give another --store-mount or unmount it");
        }

        if (Libc.Mount(LuoImageStore.MountSource, mountPoint, "tmpfs", MsNoSuid | MsNoDev | MsNoExec, "mode=0700") != 0)
        {
            throw new ImageStoreException($"cannot mount a tmpfs at {mountPoint}: {Libc.Error("mount", Marshal.GetLastPInvokeError()).Message}");
        }
    }
}
