using System.Text.Json;
using System.Text.Json.Nodes;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Images;
using RebootlessUpdate.Images.Luo;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.Cli;

/// <summary>Runs a pipeline for a command and reports it: the report on stdout, one line on stderr when it failed, and the exit code.</summary>
internal static class RunReport
{
    /// <summary>Runs <paramref name="pipeline"/> on <paramref name="targets"/> with the store and criu the invocation names, and reports it.</summary>
    public static async Task<int> RunAsync(CliInvocation c, UpdatePipeline pipeline, UpdateMode mode, IReadOnlyList<UpdateTarget> targets, IImageStore store,
        bool lazyRestore, bool pagesFromStore, CancellationToken ct, IBootGate? bootGate = null)
    {
        var result = await ProgressDisplay.RunAsync(c.Json, progress => pipeline.ExecuteAsync(new UpdateContext(mode, targets)
        {
            Store = store,
            Criu = c.Criu(),
            Progress = progress,
            LazyRestore = lazyRestore,
            PagesFromStore = pagesFromStore,
            BootGate = bootGate ?? SystemdNotifyGate.None,
        }, ct)).ConfigureAwait(false);
        var error = ErrorOf(result);
        if (c.Json)
        {
            var report = JsonSerializer.SerializeToNode(result, PipelineJsonPublic.UpdateResultInfo)!.AsObject();
            // The report's own "error" is the failure's message; the error object every failing command prints goes under "failure".
            report["exitCode"] = error?.ExitCode ?? ExitCodes.Ok;
            if (store is LuoImageStore { Received: { } r })
            {
                report["luoSession"] = new JsonObject
                {
                    ["name"] = r.Session,
                    ["files"] = r.Files,
                    ["bytes"] = r.Bytes,
                    ["receiveSeconds"] = Math.Round(r.Elapsed.TotalSeconds, 3),
                    ["takenOver"] = r.TakenOver,
                    ["warning"] = r.Warning,
                    ["problems"] = new JsonArray([.. r.Problems.Select(p => JsonValue.Create(p))]),
                };
            }

            if (error is not null)
            {
                report["failure"] = CliOutput.ErrorObject(error);
            }

            CliOutput.WriteJson(report);
        }
        else
        {
            if (store is LuoImageStore { Received: { } r })
            {
                Console.WriteLine($"store received from {r.Session}{(r.TakenOver ? " (taken over from a stopped resume's holder)" : "")}: "
                    + $"{r.Files} files, {CliOutput.Size(r.Bytes)} in {CliOutput.Duration(r.Elapsed)}"
                    + string.Concat(r.Problems.Select(p => "; " + p)) + (r.Warning is null ? "" : "; warning: " + r.Warning));
            }

            WriteText(result);
        }

        if (error is null)
        {
            return ExitCodes.Ok;
        }

        Console.Error.WriteLine(CliOutput.OneLine(error));
        return error.ExitCode;
    }

    private static void WriteText(UpdateResult result)
    {
        foreach (var s in result.Stages)
        {
            Console.WriteLine($"{s.Name,-10} {s.Status,-18} {CliOutput.Duration(s.Duration),9} {s.Message}");
        }

        foreach (var t in result.Targets)
        {
            Console.WriteLine($"{t.Target}: {t.Phase}{(t.Restorable ? " (restorable)" : "")}"
                + (t.Bytes is { } b ? $", {CliOutput.Size(b)}" : "")
                + (t.Downtime is { } d ? $", down {CliOutput.Duration(d)}" : "")
                + (t.LazyPagesDaemonPid is { } daemon ? $", lazy (pages served by daemon {daemon})" : "")
                + (t.PagesServedOnDemand is { } served ? $", {served} pages served from the store" : "")
                + (t.AllMemoryBackAfter is { } back ? $", all memory back after {CliOutput.Duration(back)}" : "")
                + (t.PreDumpRefused is null ? "" : ", dumped whole in the freeze (CRIU refused its pre-dump)")
                + (t.Error is null ? "" : "  " + t.Error));
        }

        Console.WriteLine($"{result.Mode}: {result.Outcome}{(result.SetId is null ? "" : " set " + result.SetId)}");
    }

    /// <summary>The error a failed run ends with, or null when it succeeded (or had nothing to do).</summary>
    internal static CliError? ErrorOf(UpdateResult result)
    {
        if (result.IsSuccess)
        {
            return null;
        }

        var mode = result.Mode.ToString().ToLowerInvariant();
        var what = result.Outcome switch
        {
            UpdateOutcome.Refused => "refused",
            UpdateOutcome.RolledBack when result.Cancelled => "interrupted and rolled back",
            UpdateOutcome.RolledBack => "failed and rolled back",
            _ => "failed",
        };
        var message = $"{mode} {what} at {result.FailedStage}: {(result.Cancelled ? "stopped by SIGINT or SIGTERM" : result.Error)}";
        var hint = result.Outcome switch
        {
            // A resume refused changed nothing, but the workloads it was to restore may still be down: the message says what to do.
            UpdateOutcome.Refused when result.Mode == UpdateMode.Resume => "this run changed nothing",
            UpdateOutcome.Refused => "nothing was frozen or checkpointed; every workload runs as before",
            UpdateOutcome.RolledBack => "every workload runs as before",
            _ => "not every workload is back: read the report; `rebootless status` says what needs attention",
        };
        return new CliError(CodeOf(result), message, hint);
    }

    internal static int CodeOf(UpdateResult result) => result switch
    {
        { IsSuccess: true } => ExitCodes.Ok,
        { Outcome: UpdateOutcome.Failed } when result.Exception is not JournalException => ExitCodes.NeedsAttention,
        { Exception: JournalException j } => Code(j),
        { Cancelled: true } => ExitCodes.Interrupted,
        _ when ExceptionCauses.IsOutOfSpace(result.Exception) => ExitCodes.StoreFull,
        _ when ExceptionCauses.Contains<ImageStoreLockedException>(result.Exception) => ExitCodes.StoreLocked,
        _ when ExceptionCauses.Contains<CriuTimeoutException>(result.Exception) => ExitCodes.CriuTimedOut,
        _ when ExceptionCauses.Contains<UnsafeStorePathException>(result.Exception) => ExitCodes.BadStore,
        { Exception: PreflightException p } when p.Report.FirstFailure is { Problem: { } problem } => CliStores.Code(problem),
        { Exception: TargetNotFoundException t } => CliTargets.Code(t.Problem),
        _ => ExitCodes.Failed,
    };

    internal static int Code(JournalException e) => e.Problem switch
    {
        JournalProblem.BadSetId or JournalProblem.UnknownSet => ExitCodes.Usage,
        JournalProblem.UnsafeFolder => ExitCodes.BadStore,
        _ => ExitCodes.NeedsAttention,
    };
}
