using System.Globalization;
using RebootlessUpdate.Criu.Interop;

namespace RebootlessUpdate.Targets;

/// <summary>A process by pid and start time, so a reused pid is not mistaken for the original.</summary>
/// <param name="Pid">The pid.</param>
/// <param name="StartTime">Field 22 of <c>/proc/PID/stat</c> (clock ticks after boot).</param>
internal readonly record struct ProcessIdentity(int Pid, ulong StartTime)
{
    /// <summary>The identity of a running process, or null when there is none (or it is a zombie).</summary>
    public static ProcessIdentity? Of(int pid) => ProcStat.Read(pid) is { } s && s.State is not ('Z' or 'X') ? new ProcessIdentity(pid, s.StartTime) : null;

    /// <summary>True while this very process runs (not a zombie, not a reused pid).</summary>
    public bool IsAlive => ProcStat.Read(Pid) is { } s && s.StartTime == StartTime && s.State is not ('Z' or 'X');

    /// <summary>True while this process is ptrace-stopped or traced by another (CRIU holds a tree it dumps this way).</summary>
    public bool IsTraced
    {
        get
        {
            if (!IsAlive)
            {
                return false;
            }

            try
            {
                var line = File.ReadLines($"/proc/{Pid.ToString(CultureInfo.InvariantCulture)}/status").FirstOrDefault(l => l.StartsWith("TracerPid:", StringComparison.Ordinal));
                return line is not null && line["TracerPid:".Length..].Trim() != "0";
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                return false;
            }
        }
    }
}
