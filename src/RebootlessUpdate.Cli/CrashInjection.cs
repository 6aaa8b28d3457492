using Mono.Unix.Native;
using RebootlessUpdate.Pipeline;

namespace RebootlessUpdate.Cli;

/// <summary>
/// Fault injection for crash tests, in the spirit of CRIU's own <c>CRIU_FAULT</c>:
/// <c>REBOOTLESS_CRASH_AT=STATE</c> (a journal state, e.g. <c>sealed</c>) or
/// <c>STATE/PHASE</c> (e.g. <c>dumping/frozen</c>: every target in that phase) makes the
/// tool kill itself with SIGKILL right after the journal durably records that point,
/// exactly as a power cut of the orchestrator would. Unset: nothing happens.
/// </summary>
internal static class CrashInjection
{
    internal const string Variable = "REBOOTLESS_CRASH_AT";

    public static void InstallFromEnvironment()
    {
        var spec = Environment.GetEnvironmentVariable(Variable);
        if (string.IsNullOrWhiteSpace(spec))
        {
            return;
        }

        var parts = spec.Trim().Split('/', 2);
        if (!Enum.TryParse<JournalState>(parts[0], ignoreCase: true, out var state)
            || (parts.Length == 2 && !Enum.TryParse<TargetPhase>(parts[1], ignoreCase: true, out _)))
        {
            Console.Error.WriteLine($"rebootless: {Variable}={spec} is not STATE or STATE/PHASE (states: {string.Join(", ", Enum.GetNames<JournalState>())}; phases: {string.Join(", ", Enum.GetNames<TargetPhase>())}); ignored.");
            return;
        }

        TargetPhase? phase = parts.Length == 2 ? Enum.Parse<TargetPhase>(parts[1], ignoreCase: true) : null;
        UpdateJournal.Written = record =>
        {
            if (record.State == state && (phase is null || (record.Targets.Count > 0 && record.Targets.All(t => t.Phase == phase))))
            {
                Console.Error.WriteLine($"rebootless: {Variable}: killing this process (pid {Environment.ProcessId}) at {spec}");
                Console.Error.Flush();
                Syscall.kill(Environment.ProcessId, Signum.SIGKILL);
                Thread.Sleep(Timeout.Infinite);
            }
        };
    }
}
