using RebootlessUpdate.Criu;
using RebootlessUpdate.Pipeline;

namespace RebootlessUpdate.Stages;

/// <summary>
/// When a failed dump may be asked of CRIU again (<see cref="DumpStageOptions.SeizeRetries"/>): only when CRIU failed at
/// stopping the processes, before anything of them was written or announced, so that it let them run on untouched. A
/// later failure must never be retried: CRIU clears a tree's soft-dirty bits as it writes its pages, and a second
/// dump over a pre-dump would then take pages changed since the pre-dump for unchanged.
/// </summary>
internal static class SeizeRetry
{
    /// <summary>The images CRIU writes once the tree is stopped (one of each per process).</summary>
    private static readonly string[] WrittenAfterSeize = ["core-", "pagemap-", "pages-", "mm-"];

    /// <summary>
    /// What CRIU said when it failed at stopping the tree rooted at <paramref name="root"/>, or null for any other
    /// failure: criu's seize timeout ("Timeout reached"), a task that did not stop ("Unseizable non-zombie"), or the
    /// kernel refusing to let criu seize the root (compel says so for skipped zombie children too: those do not count).
    /// A failure in the caller's own notification handler never counts.
    /// </summary>
    internal static string? Cause(Exception e, int root)
    {
        if (e is not CriuRequestFailedException { Request: CriuRequestType.Dump, InnerException: null } failed)
        {
            return null;
        }

        string[] signs = ["Unseizable non-zombie", "Timeout reached. Try to interrupt"];
        return failed.LogExcerpt.Append(failed.CriuMessage ?? string.Empty).Any(line => signs.Any(sign => line.Contains(sign, StringComparison.Ordinal)))
            || failed.RefusedSeizePid == root
            ? failed.Cause ?? failed.Message
            : null;
    }

    /// <summary>Whether CRIU wrote none of the images it writes once the tree is stopped into <paramref name="images"/>.</summary>
    internal static bool NothingWritten(string images) =>
        !Directory.EnumerateFiles(images).Select(Path.GetFileName).Any(name => WrittenAfterSeize.Any(p => name!.StartsWith(p, StringComparison.Ordinal)));

    /// <summary>Keeps attempt <paramref name="attempt"/>'s <paramref name="log"/> in <paramref name="work"/> as LOG.N, so the next attempt's log does not replace it.</summary>
    internal static void KeepLog(string work, string log, int attempt)
    {
        var path = Path.Combine(work, log);
        if (File.Exists(path))
        {
            File.Move(path, $"{path}.{attempt}", overwrite: true);
        }
    }

    /// <summary>Says why the dump is asked again, and waits; throws when the run is cancelled meanwhile.</summary>
    internal static async Task PauseAsync(UpdateContext context, TargetRun t, string cause, int attempt, DumpStageOptions options, CancellationToken cancellationToken)
    {
        var message = $"CRIU could not stop the processes and let them run on ({cause}); asking again in "
            + $"{options.SeizeRetryDelay.TotalSeconds:0.#} s (attempt {attempt + 1} of {options.SeizeRetries + 1})";
        PipelineLog.TargetWarning(context.Logger, t.Target.Id, message);
        context.ReportProgress("Dump", message, t.Target.Id);
        await Task.Delay(options.SeizeRetryDelay, context.TimeProvider, cancellationToken).ConfigureAwait(false);
    }
}
