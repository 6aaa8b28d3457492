using Mono.Unix.Native;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;

namespace RebootlessUpdate.Cli;

/// <summary>
/// Fault injection for crash tests, in the spirit of CRIU's own <c>CRIU_FAULT</c>:
/// <c>REBOOTLESS_CRASH_AT=STATE</c> (a journal state, e.g. <c>sealed</c>) or
/// <c>STATE/PHASE</c> (e.g. <c>dumping/frozen</c>: every target in that phase) makes the
/// tool kill itself with SIGKILL right after the journal durably records that point,
/// exactly as a power cut of the orchestrator would. <c>restore-answered</c> kills it when CRIU has
/// answered a restore and the tree runs, before the run has recorded that (no journal write marks it).
/// <c>luo-received</c> kills it when a LUO store's session is written out whole but not yet finished (the store is not
/// in place yet; the session's holder keeps it for the next resume).
/// <c>REBOOTLESS_STOP_AT</c> takes the same points and stops the tool with SIGSTOP instead, so that a test can
/// change the world at that exact point (fill the store, hold a lock) and let the tool go on with SIGCONT.
/// </summary>
/// <remarks>
/// A production tool must not crash because a stray variable is set: the hook acts only when
/// <c>REBOOTLESS_TEST_HOOKS=1</c> is set as well, and says so on stderr when it is armed.
/// Without the gate a set <c>REBOOTLESS_CRASH_AT</c> costs one warning line and nothing else.
/// </remarks>
internal static class CrashInjection
{
    internal const string Variable = "REBOOTLESS_CRASH_AT";
    internal const string StopVariable = "REBOOTLESS_STOP_AT";
    internal const string Gate = "REBOOTLESS_TEST_HOOKS";
    internal const string RestoreAnswered = "restore-answered";
    internal const string LuoReceived = Images.Luo.LuoStoreReceiver.ReceivedPoint;

    /// <summary>Where to crash: a journal state, and optionally the phase every target must be in.</summary>
    internal sealed record CrashPoint(string Spec, JournalState State, TargetPhase? Phase, bool AtRestoreAnswered = false, bool StopOnly = false,
        bool AtLuoReceived = false)
    {
        public string Variable => StopOnly ? StopVariable : CrashInjection.Variable;

        public string Action => StopOnly ? "stop itself with SIGSTOP (SIGCONT lets it go on)" : "kill itself with SIGKILL";

        public bool Matches(JournalRecord record) =>
            record.State == State && (Phase is null || (record.Targets.Count > 0 && record.Targets.All(t => t.Phase == Phase)));
    }

    public static void InstallFromEnvironment()
    {
        var gate = Environment.GetEnvironmentVariable(Gate);
        List<CrashPoint> points = [];
        foreach (var stop in (bool[])[false, true])
        {
            var point = Parse(Environment.GetEnvironmentVariable(stop ? StopVariable : Variable), gate, out var warning, stop);
            if (warning is not null)
            {
                Console.Error.WriteLine(warning);
            }

            if (point is not null)
            {
                points.Add(point);
            }
        }

        // Each point acts once: a later record in the same state (the targets' phases after commit) passes it by.
        HashSet<CrashPoint> acted = [];
        bool First(CrashPoint p)
        {
            lock (acted)
            {
                return acted.Add(p);
            }
        }

        var answered = points.Where(p => p.AtRestoreAnswered).ToList();
        if (answered.Count > 0)
        {
            TargetRestore.RestoreAnswered = _ => answered.Where(First).ToList().ForEach(Act);
        }

        var luo = points.Where(p => p.AtLuoReceived).ToList();
        if (luo.Count > 0)
        {
            Images.Luo.LuoStoreReceiver.TestPoint = _ => luo.Where(First).ToList().ForEach(Act);
        }

        var written = points.Where(p => !p.AtRestoreAnswered && !p.AtLuoReceived).ToList();
        if (written.Count > 0)
        {
            UpdateJournal.Written = record => written.Where(p => p.Matches(record) && First(p)).ToList().ForEach(Act);
        }
    }

    private static void Act(CrashPoint point)
    {
        Console.Error.WriteLine($"rebootless: {point.Variable}: {(point.StopOnly ? "stopping" : "killing")} this process (pid {Environment.ProcessId}) at {point.Spec}");
        Console.Error.Flush();
        Syscall.kill(Environment.ProcessId, point.StopOnly ? Signum.SIGSTOP : Signum.SIGKILL);
        if (!point.StopOnly)
        {
            Thread.Sleep(Timeout.Infinite);
        }
    }

    /// <summary>
    /// The point a hook variable and the gate ask for, or null when none is armed; <paramref name="warning"/>
    /// is the line to write on stderr (null when neither variable asks for anything). <paramref name="stop"/>:
    /// the spec is <c>REBOOTLESS_STOP_AT</c>'s.
    /// </summary>
    internal static CrashPoint? Parse(string? spec, string? gate, out string? warning, bool stop = false)
    {
        var variable = stop ? StopVariable : Variable;
        warning = null;
        if (string.IsNullOrWhiteSpace(spec))
        {
            return null;
        }

        if (gate?.Trim() != "1")
        {
            warning = $"rebootless: warning: {variable} is set but ignored: it is a test hook, active only with {Gate}=1.";
            return null;
        }

        if (spec.Trim().Equals(RestoreAnswered, StringComparison.OrdinalIgnoreCase))
        {
            var answered = new CrashPoint(RestoreAnswered, JournalState.Resuming, TargetPhase.Restoring, AtRestoreAnswered: true, StopOnly: stop);
            warning = $"rebootless: warning: test hook armed ({variable}={spec}, {Gate}=1): this process will {answered.Action} when CRIU has answered a restore.";
            return answered;
        }

        if (spec.Trim().Equals(LuoReceived, StringComparison.OrdinalIgnoreCase))
        {
            var received = new CrashPoint(LuoReceived, JournalState.Resuming, null, StopOnly: stop, AtLuoReceived: true);
            warning = $"rebootless: warning: test hook armed ({variable}={spec}, {Gate}=1): this process will {received.Action} when a LUO store is written out, before its session is finished.";
            return received;
        }

        var parts = spec.Trim().Split('/', 2);
        if (!Enum.TryParse<JournalState>(parts[0], ignoreCase: true, out var state) || !Enum.IsDefined(state)
            || (parts.Length == 2 && (!Enum.TryParse<TargetPhase>(parts[1], ignoreCase: true, out var p) || !Enum.IsDefined(p))))
        {
            warning = $"rebootless: warning: {variable}={spec} is not STATE, STATE/PHASE, {RestoreAnswered} or {LuoReceived} (states: {string.Join(", ", Enum.GetNames<JournalState>())}; phases: {string.Join(", ", Enum.GetNames<TargetPhase>())}); ignored.";
            return null;
        }

        TargetPhase? phase = parts.Length == 2 ? Enum.Parse<TargetPhase>(parts[1], ignoreCase: true) : null;
        var point = new CrashPoint(spec.Trim(), state, phase, StopOnly: stop);
        warning = $"rebootless: warning: test hook armed ({variable}={spec}, {Gate}=1): this process will {point.Action} when the journal reaches {spec}.";
        return point;
    }
}
