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
/// </summary>
/// <remarks>
/// A production tool must not crash because a stray variable is set: the hook acts only when
/// <c>REBOOTLESS_TEST_HOOKS=1</c> is set as well, and says so on stderr when it is armed.
/// Without the gate a set <c>REBOOTLESS_CRASH_AT</c> costs one warning line and nothing else.
/// </remarks>
internal static class CrashInjection
{
    internal const string Variable = "REBOOTLESS_CRASH_AT";
    internal const string Gate = "REBOOTLESS_TEST_HOOKS";
    internal const string RestoreAnswered = "restore-answered";

    /// <summary>Where to crash: a journal state, and optionally the phase every target must be in.</summary>
    internal sealed record CrashPoint(string Spec, JournalState State, TargetPhase? Phase, bool AtRestoreAnswered = false)
    {
        public bool Matches(JournalRecord record) =>
            record.State == State && (Phase is null || (record.Targets.Count > 0 && record.Targets.All(t => t.Phase == Phase)));
    }

    public static void InstallFromEnvironment()
    {
        var point = Parse(Environment.GetEnvironmentVariable(Variable), Environment.GetEnvironmentVariable(Gate), out var warning);
        if (warning is not null)
        {
            Console.Error.WriteLine(warning);
        }

        if (point is null)
        {
            return;
        }

        if (point.AtRestoreAnswered)
        {
            TargetRestore.RestoreAnswered = _ => Crash(point);
            return;
        }

        UpdateJournal.Written = record =>
        {
            if (point.Matches(record))
            {
                Crash(point);
            }
        };
    }

    private static void Crash(CrashPoint point)
    {
        Console.Error.WriteLine($"rebootless: {Variable}: killing this process (pid {Environment.ProcessId}) at {point.Spec}");
        Console.Error.Flush();
        Syscall.kill(Environment.ProcessId, Signum.SIGKILL);
        Thread.Sleep(Timeout.Infinite);
    }

    /// <summary>
    /// The crash point the two variables ask for, or null when none is armed; <paramref name="warning"/>
    /// is the line to write on stderr (null when neither variable asks for anything).
    /// </summary>
    internal static CrashPoint? Parse(string? spec, string? gate, out string? warning)
    {
        warning = null;
        if (string.IsNullOrWhiteSpace(spec))
        {
            return null;
        }

        if (gate?.Trim() != "1")
        {
            warning = $"rebootless: warning: {Variable} is set but ignored: it is a test hook, active only with {Gate}=1.";
            return null;
        }

        if (spec.Trim().Equals(RestoreAnswered, StringComparison.OrdinalIgnoreCase))
        {
            warning = $"rebootless: warning: test hook armed ({Variable}={spec}, {Gate}=1): this process will kill itself with SIGKILL when CRIU has answered a restore.";
            return new CrashPoint(RestoreAnswered, JournalState.Resuming, TargetPhase.Restoring, AtRestoreAnswered: true);
        }

        var parts = spec.Trim().Split('/', 2);
        if (!Enum.TryParse<JournalState>(parts[0], ignoreCase: true, out var state) || !Enum.IsDefined(state)
            || (parts.Length == 2 && (!Enum.TryParse<TargetPhase>(parts[1], ignoreCase: true, out var p) || !Enum.IsDefined(p))))
        {
            warning = $"rebootless: warning: {Variable}={spec} is not STATE, STATE/PHASE or {RestoreAnswered} (states: {string.Join(", ", Enum.GetNames<JournalState>())}; phases: {string.Join(", ", Enum.GetNames<TargetPhase>())}); ignored.";
            return null;
        }

        TargetPhase? phase = parts.Length == 2 ? Enum.Parse<TargetPhase>(parts[1], ignoreCase: true) : null;
        warning = $"rebootless: warning: test hook armed ({Variable}={spec}, {Gate}=1): this process will kill itself with SIGKILL when the journal reaches {spec}.";
        return new CrashPoint(spec.Trim(), state, phase);
    }
}
