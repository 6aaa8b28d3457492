using System.Diagnostics;
using System.Globalization;
using System.Text;
using Mono.Unix.Native;
using RebootlessUpdate.Criu.Interop;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.Images.Luo;

/// <summary>
/// Keeps a retrieved LUO session alive outside this process: the kernel finishes a retrieved session (and frees every
/// file in it) when its last descriptor closes, so a resume killed while it receives would lose the store. Right after
/// the session is retrieved, a holder process (<c>sleep</c>, in a session of its own, so a Ctrl+C or the death of this
/// process does not reach it) inherits its descriptor; a record beside the store names it (pid, start time, descriptor
/// number, session). The next resume takes the descriptor back from the holder (pidfd_getfd) and carries on; the
/// holder is ended once the session is finished.
/// </summary>
internal sealed class LuoSessionHolder
{
    private const int FdCloExec = 1;

    private LuoSessionHolder(ProcessIdentity holder, int fd, string session, string recordPath)
    {
        Holder = holder;
        Fd = fd;
        Session = session;
        RecordPath = recordPath;
    }

    /// <summary>The holder process.</summary>
    public ProcessIdentity Holder { get; }

    /// <summary>The session's descriptor number in the holder.</summary>
    public int Fd { get; }

    /// <summary>The session's name.</summary>
    public string Session { get; }

    /// <summary>Where the record is.</summary>
    public string RecordPath { get; }

    /// <summary>Starts a holder of <paramref name="session"/>'s descriptor and records it at <paramref name="recordPath"/>.</summary>
    /// <exception cref="IOException">The holder could not be started or recorded (nothing is left running then).</exception>
    public static LuoSessionHolder Start(LuoSession session, string recordPath) => Start(session.Descriptor, session.Name, recordPath);

    /// <summary>Starts a holder of descriptor <paramref name="fd"/> (named <paramref name="name"/> in the record).</summary>
    internal static LuoSessionHolder Start(int fd, string name, string recordPath)
    {
        // Inherited only by this child: every descriptor .NET opens is close-on-exec, this one is made inheritable
        // just for the spawn (no other process is started meanwhile: the receive runs before anything else).
        if (Syscall.fcntl(fd, FcntlCommand.F_SETFD, 0) != 0)
        {
            throw new IOException($"cannot make descriptor {fd} inheritable: {Stdlib.GetLastError()}");
        }

        Process child;
        try
        {
            // Every other descriptor inherited from this process's parent is closed (a pipe the holder kept open would hold up
            // whoever waits for its end), then setsid without a fork (the child leads no group): the same pid becomes sleep,
            // in a session of its own.
            child = Process.Start(new ProcessStartInfo("bash", ["-c", HolderScript, "rebootless-luo-holder", fd.ToString(CultureInfo.InvariantCulture)])
            {
                UseShellExecute = false,
            }) ?? throw new IOException("the LUO session holder did not start");
        }
        finally
        {
            _ = Syscall.fcntl(fd, FcntlCommand.F_SETFD, FdCloExec);
        }

        using (child)
        {
            var holder = WaitUntilSleeping(child.Id);
            if (holder is null)
            {
                child.Kill();
                throw new IOException($"the LUO session holder (pid {child.Id}) did not come up as sleep");
            }

            var record = new LuoSessionHolder(holder.Value, fd, name, recordPath);
            try
            {
                StoreFiles.WriteAtomically(recordPath, Encoding.UTF8.GetBytes(
                    string.Create(CultureInfo.InvariantCulture, $"{holder.Value.Pid} {holder.Value.StartTime} {fd} {name}\n")));
            }
            catch
            {
                child.Kill();
                throw;
            }

            return record;
        }
    }

    /// <summary>The holder <paramref name="recordPath"/> names, or null when there is no record.</summary>
    /// <exception cref="InvalidDataException">The record is not one.</exception>
    public static LuoSessionHolder? Read(string recordPath)
    {
        string text;
        try
        {
            text = File.ReadAllText(recordPath);
        }
        catch (FileNotFoundException)
        {
            return null;
        }

        var parts = text.Trim().Split(' ', 4);
        if (parts.Length != 4 || !int.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out var pid) || pid <= 1
            || !ulong.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out var start)
            || !int.TryParse(parts[2], NumberStyles.None, CultureInfo.InvariantCulture, out var fd))
        {
            throw new InvalidDataException($"{recordPath} is not a LUO session holder record");
        }

        return new LuoSessionHolder(new ProcessIdentity(pid, start), fd, parts[3], recordPath);
    }

    /// <summary>True while the recorded process runs: the same one (its start time matches), and a holder (sleep).</summary>
    public bool IsAlive => ProcessIdentity.Of(Holder.Pid) == Holder && Comm(Holder.Pid) == "sleep";

    /// <summary>
    /// A descriptor of the held file, taken from the holder (the caller owns it), only while the holder is the recorded
    /// process and its descriptor's link is what <paramref name="link"/> accepts.
    /// </summary>
    /// <exception cref="IOException">The holder is gone, holds something else there, or the kernel refused.</exception>
    public int TakeDescriptor(Func<string?, bool> link)
    {
        if (!IsAlive)
        {
            throw new IOException($"the LUO session holder (pid {Holder.Pid}) is gone, and the session {Session} with it");
        }

        return PidfdSignal.GetFd(Holder.Pid, Holder.StartTime, Fd, link);
    }

    /// <summary>Ends the holder (only the recorded process: a reused pid is never signalled) and removes the record.</summary>
    public void Release()
    {
        if (IsAlive)
        {
            _ = PidfdSignal.Kill(Holder.Pid, Holder.StartTime);
        }

        File.Delete(RecordPath);
    }

    private static ProcessIdentity? WaitUntilSleeping(int pid)
    {
        var until = Stopwatch.GetTimestamp() + Stopwatch.Frequency * 5;
        while (Stopwatch.GetTimestamp() < until)
        {
            try
            {
                if (Comm(pid) == "sleep" && ProcessIdentity.Of(pid) is { } identity)
                {
                    return identity;
                }
            }
            catch (IOException)
            {
                return null;
            }

            Thread.Sleep(5);
        }

        return null;
    }

    private static string? Comm(int pid)
    {
        try
        {
            return File.ReadAllText($"/proc/{pid}/comm").Trim();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    private const string HolderScript = """
        for f in /proc/$$/fd/*; do
          n=${f##*/}
          [ "$n" -gt 2 ] && [ "$n" != "$1" ] && eval "exec $n>&-" 2>/dev/null
        done
        exec setsid sleep infinity </dev/null >/dev/null 2>&1
        """;
}
