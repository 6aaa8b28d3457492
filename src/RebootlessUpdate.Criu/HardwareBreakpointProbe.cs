using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using Mono.Unix.Native;
using RebootlessUpdate.Criu.Interop;

namespace RebootlessUpdate.Criu;

/// <summary>What the probe found: whether an execution breakpoint stops a process here, and how it knows.</summary>
internal sealed record BreakpointVerdict(bool Fire, string Detail);

/// <summary>
/// Whether criu's workers get <c>CRIU_FAULT=130</c>; <paramref name="Hazard"/> when breakpoints should be avoided but
/// the caller's own <c>CRIU_FAULT</c> keeps criu from being told; and the whole of it in words.
/// </summary>
internal sealed record BreakpointChoice(bool AddNoBreakpointsFault, bool Hazard, string Description);

/// <summary>
/// Finds out whether hardware breakpoints fire on this machine, the way criu uses them: an execution breakpoint in a
/// debug register of a traced process, on the syscall instruction it is about to run. A <c>sleep</c> of ours is
/// seized and interrupted in its <c>clock_nanosleep</c>; resumed, the kernel restarts the sleep by sending it back to
/// that syscall instruction, so the breakpoint there either stops it at once (SIGTRAP) or is passed, and the process is
/// then asleep in <c>restart_syscall</c>. Either outcome is seen without a guess at timing. Anything else, or no
/// answer within the limit, counts as "do not fire": criu without breakpoints costs a few more ptrace stops, criu
/// waiting for a breakpoint that never fires hangs with the processes frozen.
/// </summary>
internal static partial class HardwareBreakpointProbe
{
    /// <summary>criu's fault-injection switch, read at its start.</summary>
    internal const string FaultVariable = "CRIU_FAULT";

    /// <summary>criu's FI_NO_BREAKPOINTS: stop processes by stepping their syscalls, never with a debug register.</summary>
    internal const string NoBreakpointsFault = "130";

    private const int NanosleepNr = 35;
    private const int ClockNanosleepNr = 230;
    private const int RestartSyscallNr = 219;
    private const long ErestartRestartblock = -516;
    private const long SyscallInstructionLength = 2;

    // DR7: local enable of DR0; its type and length bits zero mean "execution of the instruction at DR0".
    private const long Dr7LocalEnable0 = 1;

    private static readonly string[] SleepPaths = ["/usr/bin/sleep", "/bin/sleep"];
    private static readonly TimeSpan ProbeLimit = TimeSpan.FromSeconds(10);
    private static readonly Lazy<BreakpointVerdict> HostVerdict = new(() => Run(ProbeLimit), LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>This machine's verdict, probed on first use (a few milliseconds) and kept for the process.</summary>
    public static BreakpointVerdict Host => HostVerdict.Value;

    /// <summary>
    /// What criu is to do about breakpoints under <paramref name="mode"/>, and why, in words for <c>check</c> and the log.
    /// A <c>CRIU_FAULT</c> in this process's environment reaches the criu workers it starts as it is (criu takes one
    /// value): 130 means the operator has already told criu to avoid breakpoints, so nothing is probed; another value
    /// is a test's own fault and wins over the switch, with a warning where the switch was wanted. A
    /// <paramref name="service"/> (a <c>criu service</c> started by someone else) inherits nothing from here.
    /// </summary>
    public static BreakpointChoice Choose(CriuBreakpoints mode, bool service = false)
    {
        var own = service ? null : Environment.GetEnvironmentVariable(FaultVariable);
        if (own == NoBreakpointsFault)
        {
            return new(false, false, mode == CriuBreakpoints.Use
                ? "criu was told to use hardware breakpoints, but CRIU_FAULT=130 is set in this environment and criu inherits it: it runs without them"
                : "criu runs without hardware breakpoints: CRIU_FAULT=130 is set in this environment and criu inherits it");
        }

        string why;
        switch (mode)
        {
            case CriuBreakpoints.Use:
                return new(false, false, "criu uses hardware breakpoints, as configured");
            case CriuBreakpoints.Avoid:
                why = "as configured";
                break;
            default:
                var host = Host;
                if (host.Fire)
                {
                    return new(false, false, $"hardware breakpoints fire here, criu uses them: {host.Detail}");
                }

                why = host.Detail;
                break;
        }

        return own is null
            ? new(true, false, mode == CriuBreakpoints.Avoid ? "criu avoids hardware breakpoints, as configured" : $"criu runs without hardware breakpoints (CRIU_FAULT=130): {why}")
            : new(false, true, $"criu should run without hardware breakpoints ({why}), but CRIU_FAULT={own} is set and kept (criu takes one value), "
                + "so criu may hang at the end of a dump or restore");
    }

    /// <summary>
    /// What a criu worker's environment gains under <paramref name="mode"/>: <c>CRIU_FAULT=130</c> when breakpoints
    /// are to be avoided and the caller set no <c>CRIU_FAULT</c> of its own (see <see cref="Choose"/>).
    /// </summary>
    public static IReadOnlyList<KeyValuePair<string, string>> WorkerEnvironment(CriuBreakpoints mode, ILogger logger)
    {
        var choice = Choose(mode);
        if (choice.Hazard)
        {
            Log.Hazard(logger, choice.Description);
        }
        else if (choice.AddNoBreakpointsFault)
        {
            Log.Avoided(logger, choice.Description);
        }

        return choice.AddNoBreakpointsFault ? [new(FaultVariable, NoBreakpointsFault)] : [];
    }

    /// <summary>Probes now, within <paramref name="limit"/>; never throws.</summary>
    internal static BreakpointVerdict Run(TimeSpan limit)
    {
        if (RuntimeInformation.ProcessArchitecture != Architecture.X64)
        {
            return new(true, $"not probed on {RuntimeInformation.ProcessArchitecture}: criu's own default is kept");
        }

        if (FindSleep() is not { } sleep)
        {
            return Unknown("there is no /usr/bin/sleep or /bin/sleep to probe with");
        }

        int pid;
        try
        {
            var devNull = (int)NativeConvert.FromOpenFlags(OpenFlags.O_RDWR);
            pid = Spawn.Start(sleep, [sleep, "60"],
                [Spawn.FdAction.Open(0, "/dev/null", devNull), Spawn.FdAction.Open(1, "/dev/null", devNull), Spawn.FdAction.Open(2, "/dev/null", devNull)]);
        }
        catch (IOException e)
        {
            return Unknown($"cannot start {sleep}: {e.Message}");
        }

        var tracee = new Tracee(pid, Stopwatch.StartNew(), limit);
        try
        {
            return tracee.Probe();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidOperationException)
        {
            return Unknown(e.Message);
        }
        finally
        {
            tracee.Reap();
        }
    }

    private static BreakpointVerdict Unknown(string why) => new(false, $"the probe could not tell ({why}); criu avoids them to be safe");

    /// <summary>The probe's own sleep: seized, stopped, resumed over a breakpoint, and in the end killed and reaped.</summary>
    private sealed class Tracee(int pid, Stopwatch clock, TimeSpan limit)
    {
        private bool _reaped;

        private bool TimeLeft => clock.Elapsed < limit;

        public BreakpointVerdict Probe()
        {
            // Wait until the sleep is in its syscall: interrupted there, its resume restarts from the syscall insn.
            while (SyscallOf() is not (ClockNanosleepNr or NanosleepNr))
            {
                // Before it is seized, a wait reports only its end.
                if (!TimeLeft || WaitStatus(untilLimit: false) is not null)
                {
                    return Unknown("the probe's sleep never reached its nanosleep");
                }

                Thread.Sleep(1);
            }

            if (!Ptrace.TrySeize(pid, out var errno) || !Ptrace.TryInterrupt(pid, out errno))
            {
                return Unknown($"ptrace of the probe's sleep failed: {errno}");
            }

            if (WaitStatus(untilLimit: true) is not { } stop || !IsStopped(stop) || stop >> 16 != Ptrace.EventStop)
            {
                return Unknown("the probe's sleep did not stop when interrupted");
            }

            var ip = Ptrace.Peek(pid, Ptrace.RipOffset);
            if (ip is null
                || Ptrace.Peek(pid, Ptrace.OrigRaxOffset) is not (ClockNanosleepNr or NanosleepNr)
                || Ptrace.Peek(pid, Ptrace.RaxOffset) != ErestartRestartblock)
            {
                return Unknown("the probe's sleep was not stopped in a restartable nanosleep");
            }

            if (!Ptrace.TryPoke(pid, Ptrace.DebugReg(0), ip.Value - SyscallInstructionLength, out errno)
                || !Ptrace.TryPoke(pid, Ptrace.DebugReg(7), Dr7LocalEnable0, out errno))
            {
                return new(false, $"the kernel refused to set a debug register ({errno})");
            }

            if (!Ptrace.TryContinue(pid, out errno))
            {
                return Unknown($"ptrace could not resume the probe's sleep: {errno}");
            }

            while (TimeLeft)
            {
                if (WaitStatus(untilLimit: false) is { } status)
                {
                    // Only a plain SIGTRAP stop at the breakpoint's address, with DR6 naming breakpoint 0 (B0), counts:
                    // "fire" is the verdict that, if wrong, leaves criu waiting forever.
                    var dr6 = Ptrace.Peek(pid, Ptrace.DebugReg(6)) ?? 0;
                    if (IsStopped(status) && status >> 16 == 0 && ((status >> 8) & 0xff) == (int)Signum.SIGTRAP && (dr6 & 1) != 0
                        && Ptrace.Peek(pid, Ptrace.RipOffset) == ip.Value - SyscallInstructionLength)
                    {
                        return new(true, $"an execution breakpoint stopped a traced process (DR6 {dr6:x})");
                    }

                    return Unknown($"the probe's sleep stopped or ended unexpectedly (wait status {status:x})");
                }

                // Asleep again in the restarted syscall: it ran the instruction under the breakpoint without a trap.
                if (SyscallOf() == RestartSyscallNr && WaitStatus(untilLimit: false) is null)
                {
                    return new(false, "an execution breakpoint on the instruction a traced process was about to run never "
                        + "stopped it: it ran past and went back to sleep. The debug registers are not virtualized here");
                }

                Thread.Sleep(1);
            }

            return Unknown("the probe got no answer in time");
        }

        /// <summary>Kills the probe's own sleep (ours, by pid) and reaps it, unless a wait reaped it already.</summary>
        public void Reap()
        {
            if (_reaped)
            {
                return;
            }

            _ = Syscall.kill(pid, Signum.SIGKILL);
            for (var i = 0; i < 64 && !_reaped; i++)
            {
                // Stops not collected yet come first; the kill's end follows them. EINTR is tried again; ECHILD means
                // it is reaped already, so the pid is never signalled again (it may be someone else's by then).
                var r = Syscall.waitpid(pid, out var status, 0);
                _reaped = r == pid ? !IsStopped(status) : Stdlib.GetLastError() != Errno.EINTR;
            }
        }

        /// <summary>The syscall number the sleep waits in (/proc/PID/syscall); null while it runs or once it is gone.</summary>
        private int? SyscallOf()
        {
            try
            {
                var first = File.ReadAllText($"/proc/{pid}/syscall").Split(' ', 2)[0];
                return int.TryParse(first, NumberStyles.Integer, CultureInfo.InvariantCulture, out var nr) ? nr : null;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                return null;
            }
        }

        /// <summary>A change of the sleep's state (polled, so the limit holds), once or until the limit; null if none.</summary>
        private int? WaitStatus(bool untilLimit)
        {
            while (true)
            {
                var r = Syscall.waitpid(pid, out var status, WaitOptions.WNOHANG);
                if (r == pid)
                {
                    _reaped |= !IsStopped(status);
                    return status;
                }

                if (r < 0 && Stdlib.GetLastError() == Errno.ECHILD)
                {
                    _reaped = true;
                }

                if (r < 0 || !untilLimit || !TimeLeft)
                {
                    return null;
                }

                Thread.Sleep(1);
            }
        }
    }

    private static bool IsStopped(int status) => (status & 0xff) == 0x7f;

    private static partial class Log
    {
        [LoggerMessage(32, LogLevel.Information, "{Choice}")]
        public static partial void Avoided(ILogger logger, string choice);

        [LoggerMessage(33, LogLevel.Warning, "{Choice}")]
        public static partial void Hazard(ILogger logger, string choice);
    }

    /// <summary>The system's own sleep: never one found through PATH, which the probe, running as root, must not trust.</summary>
    private static string? FindSleep() =>
        SleepPaths.FirstOrDefault(p => Syscall.access(p, AccessModes.X_OK) == 0);
}
