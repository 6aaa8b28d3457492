using System.Diagnostics;
using RebootlessUpdate.Images.Interop;

namespace RebootlessUpdate.Images.Luo;

/// <summary>
/// On the kernel after the jump: brings a LUO store's session into its tmpfs. The session is retrieved, handed at once to
/// a holder process (<see cref="LuoSessionHolder"/>), written into <c>incoming/</c>, renamed to <c>store/</c> only when
/// whole, and finished; then the holder ends. A receive stopped anywhere on the way (SIGKILL, a crash) is carried on by
/// the next one, which takes the session from the holder: nothing the kernel carried is lost while the holder lives.
/// </summary>
internal static class LuoStoreReceiver
{
    /// <summary>The crash-test point when every file is in <c>incoming/</c> and the session is still unfinished.</summary>
    internal const string ReceivedPoint = "luo-received";

    /// <summary>Test hook (the tool's crash injection): called with <see cref="ReceivedPoint"/>.</summary>
    internal static Action<string>? TestPoint { get; set; }

    /// <summary>
    /// Receives the session of <see cref="LuoImageStoreOptions.IncomingSetId"/> into the tmpfs at
    /// <paramref name="mountPoint"/>, or carries on with one an earlier receive left to its holder. The caller holds the
    /// store's open lock (<see cref="LuoStoreMount.LockOpening"/>): one receive at a time. Returns what came, or why
    /// nothing did (no such session: a cold boot, or a kernel without LUO); both null when nothing was to come.
    /// </summary>
    /// <exception cref="ImageStoreException">The kernel refused, the store cannot be written, or an
    /// earlier receive was stopped after its holder was gone too (what it had not written is lost).</exception>
    internal static (LuoReceipt? Received, string? NotReceived) Run(LuoImageStoreOptions options, string mountPoint)
    {
        var store = LuoImageStore.StoreFolder(mountPoint);
        var incoming = LuoImageStore.IncomingFolder(mountPoint);
        var record = Path.Combine(mountPoint, "holder");
        LuoSessionHolder? holder;
        try
        {
            holder = LuoSessionHolder.Read(record);
        }
        catch (InvalidDataException e)
        {
            throw new ImageStoreException($"{record}: {e.Message}; remove it once no resume runs", e);
        }

        if (holder is { IsAlive: true })
        {
            if (options.IncomingSetId is { } asked && holder.Session != LuoImageStore.SessionName(asked))
            {
                throw new ImageStoreException($"a holder (pid {holder.Holder.Pid}) keeps LUO session {holder.Session}, not {LuoImageStore.SessionName(asked)} "
                    + $"which this resume was asked for; resume that set first (--set), or end the holder (kill {holder.Holder.Pid}) to give it up");
            }

            return (TakeOver(holder, store, incoming), null);
        }

        if (holder is not null)
        {
            File.Delete(record);
        }

        if (Path.Exists(incoming))
        {
            throw new ImageStoreException(
                $"{incoming} holds what a resume had received of a LUO session when it was stopped, and the process that held the session "
                + "is gone too: the rest is lost (the kernel frees a retrieved session's files when its last holder ends), so it is not taken "
                + $"for the store. Keep what you need from it, then remove it (rm -r {incoming}) and restart the workloads named in its journal by hand");
        }

        if (Path.Exists(store) || options.IncomingSetId is not { } setId)
        {
            return (null, null);
        }

        var name = LuoImageStore.SessionName(setId);
        var started = Stopwatch.GetTimestamp();
        LuoDevice? device = null;
        LuoSession session;
        try
        {
            device = LuoDevice.Open(options.DevicePath);
            session = device.RetrieveSession(name);
        }
        catch (LuoException e) when (e.Errno is Libc.ENoEnt)
        {
            // No such session (or no device): nothing was carried; the store is empty and says why.
            device?.Dispose();
            return (null, e.Message);
        }
        catch (LuoException e)
        {
            device?.Dispose();
            throw new ImageStoreException($"receiving the store from LUO session {name}: {e.Message}", e);
        }

        using (device)
        using (session)
        {
            // First, before anything can stop this process: from here the session outlives it. A holder that cannot be
            // started is no reason to give the store up: it is received all the same, only not safe from a kill meanwhile.
            LuoSessionHolder? held = null;
            string? unprotected = null;
            try
            {
                held = LuoSessionHolder.Start(session, record);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or System.ComponentModel.Win32Exception)
            {
                unprotected = $"no process could be started to hold LUO session {name} ({e.Message}): had this resume been stopped while it received, the store would have been lost";
            }

            var receipt = Receive(session, incoming, store, started, name) with { Warning = unprotected };
            Finished(session, held);
            return (receipt, null);
        }
    }

    /// <summary>Carries on with the session an earlier receive left to <paramref name="holder"/>.</summary>
    private static LuoReceipt? TakeOver(LuoSessionHolder holder, string store, string incoming)
    {
        var started = Stopwatch.GetTimestamp();
        var expected = "anon_inode:[luo_session] " + holder.Session;
        int fd;
        try
        {
            fd = holder.TakeDescriptor(link => link == expected);
        }
        catch (IOException e)
        {
            throw new ImageStoreException($"an earlier resume left LUO session {holder.Session} to a holder (pid {holder.Holder.Pid}), but it cannot be taken over: "
                + $"{e.Message}. Its memory stays held until that process ends (kill {holder.Holder.Pid} gives it up)", e);
        }

        using var session = new LuoSession(KernelLuoSyscalls.Instance, fd, holder.Session);
        LuoReceipt? receipt = null;
        if (!Path.Exists(store))
        {
            // Stopped before the rename: what it wrote may be partial; written again from the session, whole.
            if (Path.Exists(incoming))
            {
                Directory.Delete(incoming, recursive: true);
            }

            receipt = Receive(session, incoming, store, started, holder.Session) with { TakenOver = true };
        }

        // Stopped after the rename: the store is whole; only the session is left to end.
        Finished(session, holder);
        return receipt;
    }

    /// <summary>
    /// Writes the session out and renames it into place, only when every file came across: otherwise the session and its
    /// holder stay, so that the next resume tries again from the kernel's copy.
    /// </summary>
    private static LuoReceipt Receive(LuoSession session, string incoming, string store, long started, string name)
    {
        LuoReceivedFolder r;
        try
        {
            r = LuoFolderHandover.WriteOut(session, incoming);
        }
        catch (LuoException e)
        {
            throw new ImageStoreException($"receiving the store from LUO session {name}: {e.Message}", e);
        }
        catch (Exception e) when (e is IOException or InvalidDataException or UnauthorizedAccessException)
        {
            throw new ImageStoreException($"receiving the store from LUO session {name} into {incoming}: {e.Message}", e);
        }

        if (r.Problems.Count > 0)
        {
            throw new ImageStoreException($"LUO session {name} did not come across whole into {incoming}: {string.Join("; ", r.Problems)}. "
                + "The session is kept (by its holder process): free what is short (memory, tmpfs space) and run the resume again");
        }

        TestPoint?.Invoke(ReceivedPoint);
        // Whole or not at all: a folder named "store" is one a receive finished (the tmpfs is root's alone, 0700).
        Directory.Move(incoming, store);
        return new LuoReceipt(name, r.Files, r.Bytes, Stopwatch.GetElapsedTime(started), r.Problems);
    }

    /// <summary>The store is whole: the session ends (finished here, or by the kernel when its last descriptor closes).</summary>
    private static void Finished(LuoSession session, LuoSessionHolder? holder)
    {
        try
        {
            session.Finish();
        }
        catch (LuoException)
        {
            // Finished already (a resume stopped after finishing), or refused: closing the last descriptor finishes it.
        }

        holder?.Release();
    }
}
