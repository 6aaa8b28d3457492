using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Win32.SafeHandles;
using RebootlessUpdate.Images.Interop;

namespace RebootlessUpdate.Images;

/// <summary>
/// The store's exclusive lock: <c>flock(LOCK_EX | LOCK_NB)</c> on a lock file.
/// flock belongs to the open file description, so it excludes other processes
/// and other store instances of the same process alike, and the kernel drops it
/// when the holder dies. The holder writes its pid into the file so a refused
/// caller can be told who holds it.
/// </summary>
internal static class StoreLock
{
    internal static ImageStoreLock Acquire(string lockFile)
    {
        // No link followed, a FIFO neither blocks nor is locked: only a regular file of ours counts as the lock.
        SafeFileHandle handle;
        try
        {
            handle = StoreFiles.OpenRegular(lockFile, Libc.ORdWr | Libc.OCreat, Libc.Mode0600);
        }
        catch (NotARegularFileException e)
        {
            throw new UnsafeStorePathException(Path.GetDirectoryName(lockFile)!, lockFile, $"is a {e.Kind}, not the store's lock file; remove it (after checking who put it there) and try again");
        }

        try
        {
            if (Mono.Unix.Native.Syscall.fstat((int)handle.DangerousGetHandle(), out var st) != 0 || st.st_uid != Mono.Unix.Native.Syscall.geteuid())
            {
                throw new UnsafeStorePathException(Path.GetDirectoryName(lockFile)!, lockFile, $"belongs to uid {st.st_uid}, not to the user running rebootless; remove it and try again");
            }

            if (Libc.Flock(handle, Libc.LockEx | Libc.LockNb) != 0)
            {
                var errno = Marshal.GetLastPInvokeError();
                if (errno == Libc.EAgain)
                {
                    throw new ImageStoreLockedException(lockFile, ReadHolder(handle));
                }

                throw new ImageStoreException($"cannot lock the image store: {Libc.Error($"flock {lockFile}", errno).Message}");
            }

            // Fixed width, so a shorter pid fully overwrites a longer stale one.
            var text = Encoding.ASCII.GetBytes(Environment.ProcessId.ToString(CultureInfo.InvariantCulture).PadLeft(10) + "\n");
            RandomAccess.Write(handle, text, 0);
            return new ImageStoreLock(handle, lockFile);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    private static int? ReadHolder(SafeFileHandle handle)
    {
        var buffer = new byte[32];
        var n = RandomAccess.Read(handle, buffer, 0);
        return int.TryParse(Encoding.ASCII.GetString(buffer, 0, n).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var pid) && pid > 0
            ? pid
            : null;
    }
}
