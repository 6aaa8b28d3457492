using RebootlessUpdate.Criu;
using RebootlessUpdate.Images;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.Stages;

/// <summary>A target's dump: started, held by CRIU at post-dump, then committed (CRIU ends the processes).</summary>
internal static class TargetDump
{
    private const long NearlyFullBytes = 256 * 1024;
    private const string LogFile = "dump.log";

    /// <summary>
    /// Starts the dump of <paramref name="t"/>. CRIU freezes it, writes its images and
    /// then waits in its post-dump notification until the pipeline commits (CRIU ends
    /// the processes) or vetoes (CRIU lets them run on, nothing to restore).
    /// </summary>
    internal static void Start(UpdateContext context, TargetRun t, CriuClient criu, CheckpointSet set,
        Func<TargetNotification, CancellationToken, ValueTask>? hook, CancellationToken cancellationToken)
    {
        var resolved = t.Resolved ?? throw new InvalidOperationException("the Plan stage must resolve the targets first.");
        var images = Path.Combine(set.ImagesDirectory, t.Folder!);
        Directory.CreateDirectory(images, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        var work = TargetFolders.WorkDirectory(context, t);
        InterruptedRestore.KeepLogInode(work);
        var original = context.Processes.IdentityOf(resolved.RootPid)
            ?? throw new TargetNotFoundException(t.Target.Id, $"process {resolved.RootPid} exited after the plan; nothing was frozen.");
        var processes = context.Processes.Tree(resolved.RootPid).Count;
        var pending = new TargetRun.Pending();
        var options = t.Settings!.ToDump(resolved.RootPid, images, work) with
        {
            LogFile = LogFile,
            ParentImages = t.PreDumpFolder is null ? null : "../" + t.PreDumpFolder,
            // Without memory tracking CRIU ignores the parent and copies every page again while frozen.
            TrackMemory = t.PreDumpFolder is not null,
            OnNotification = async (n, ct) =>
            {
                if (hook is not null)
                {
                    await hook(new TargetNotification(t.Target.Id, n.Script, n.Pid), ct).ConfigureAwait(false);
                }

                if (n.Script != "pre-dump")
                {
                    // CRIU has the tree stopped and is at work on it: a failure from here on is never asked again.
                    pending.PastSeize = true;
                }

                if (n.Script == "post-dump")
                {
                    pending.HeldAtPostDump.TrySetResult();
                    var commit = await pending.Decision.Task.WaitAsync(ct).ConfigureAwait(false);
                    if (!commit)
                    {
                        // Failing post-dump makes CRIU resume the frozen tasks instead of killing them.
                        throw new OperationCanceledException("the update was rolled back before the jump; the workload resumes in place");
                    }
                }
            },
        };
        if (PodmanHandover.IsPodman(t))
        {
            // Podman checkpoints and ends the container: committed when it finishes, with no hold at post-dump.
            pending.Abandon = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            t.DumpRequested(images, original, context.Processes.IsNamespaceInit(resolved.RootPid), context.TimeProvider.GetTimestamp(),
                context.TimeProvider.GetUtcNow(), pending);
            pending.Ask = () => PodmanHandover.DumpAsync(t, images);
            pending.Request = pending.Ask();
            PipelineLog.TargetEvent(context.Logger, t.Target.Id, $"podman checkpoints container {t.Settings.Podman!.Name} (root {resolved.RootPid}, {processes} processes) into {t.ImagesDirectory}");
            return;
        }

        // Before anything freezes (and before systemd is told anything): runc's state of a container goes with its images.
        ContainerHandback.Capture(t, images);
        // Before anything freezes: systemd must not act on the end CRIU gives the unit's processes.
        ServiceHandback.Release(context, t);
        pending.Abandon = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        t.DumpRequested(images, original, context.Processes.IsNamespaceInit(resolved.RootPid), context.TimeProvider.GetTimestamp(),
            context.TimeProvider.GetUtcNow(), pending);
        var abandon = pending.Abandon.Token;
        pending.Ask = () =>
        {
            pending.PastSeize = false;
            return Task.Run(() => criu.DumpAsync(options, abandon), CancellationToken.None);
        };
        pending.Request = pending.Ask();
        PipelineLog.TargetEvent(context.Logger, t.Target.Id, $"dumping root {resolved.RootPid} ({processes} processes) into {t.ImagesDirectory}");
    }

    /// <summary>
    /// Waits until CRIU holds the target at post-dump, or its dump failed. A dump CRIU failed because it could not stop
    /// the processes, leaving them running untouched, is asked again (<see cref="DumpStageOptions.SeizeRetries"/>, see
    /// <see cref="SeizeRetry"/>) while the root is the same process; a cancel during the pause fails the target and throws.
    /// </summary>
    internal static async Task WaitHeldAsync(UpdateContext context, TargetRun t, CheckpointSet set, DumpStageOptions options, CancellationToken cancellationToken)
    {
        var pending = t.PendingDump!;
        for (var attempt = 1; ; attempt++)
        {
            var first = await Task.WhenAny(pending.HeldAtPostDump.Task, pending.Request).ConfigureAwait(false);
            var took = context.TimeProvider.GetElapsedTime(t.DumpStartedTimestamp!.Value);
            if (first == pending.HeldAtPostDump.Task)
            {
                t.Froze(took, TargetFolders.FolderBytes(t.ImagesDirectory!));
                context.ReportProgress("Dump", $"frozen, {t.Bytes} bytes of images in {took.TotalMilliseconds:0} ms", t.Target.Id, t.Bytes);
                return;
            }

            try
            {
                var result = await pending.Request.ConfigureAwait(false);
                // No post-dump notification arrived: podman's dump (it has none), else CRIU ended the tree without one.
                t.DumpFinished(result.Statistics, took, TargetFolders.FolderBytes(t.ImagesDirectory!));
                return;
            }
            catch (Exception e)
            {
                if (attempt <= options.SeizeRetries && !pending.PastSeize && SeizeRetry.Cause(e, t.Original!.Value.Pid) is { } cause
                    && SeizeRetry.NothingWritten(t.ImagesDirectory!) && RootUnchanged(context, t))
                {
                    try
                    {
                        await SeizeRetry.PauseAsync(context, t, cause, attempt, options, cancellationToken).ConfigureAwait(false);
                    }
                    catch (OperationCanceledException)
                    {
                        t.DumpFailed(Classify(e, set), took);
                        throw;
                    }

                    SeizeRetry.KeepLog(TargetFolders.WorkDirectory(context, t), LogFile, attempt);
                    t.DumpAskedAgain(context.TimeProvider.GetTimestamp(), context.TimeProvider.GetUtcNow());
                    pending.Request = pending.Ask();
                    continue;
                }

                var error = Classify(e, set);
                t.DumpFailed(error, took);
                PipelineLog.TargetWarning(context.Logger, t.Target.Id, $"dump failed{(attempt > 1 ? $" (attempt {attempt})" : "")}: " + error.Message);
                return;
            }
        }
    }

    private static bool RootUnchanged(UpdateContext context, TargetRun t) =>
        t.Original is { } original && context.Processes.IdentityOf(original.Pid) == original;

    /// <summary>Lets CRIU finish every held dump: the frozen processes end; from here a rollback restores from the images.</summary>
    internal static async Task CommitAsync(UpdateContext context)
    {
        var held = context.Targets.Where(t => t.PendingDump is not null && t.IsHeld).ToList();
        foreach (var t in held)
        {
            t.PendingDump!.Decision.TrySetResult(true);
        }

        List<string> errors = [];
        List<Exception> causes = [];
        foreach (var t in held)
        {
            try
            {
                var result = await t.PendingDump!.Request.ConfigureAwait(false);
                t.DumpFinished(result.Statistics);
            }
            catch (Exception e)
            {
                t.Fail("finishing the dump failed: " + e.Message);
                errors.Add($"{t.Target.Id}: {t.Error}");
                causes.Add(e);
            }
        }

        context.Journal?.UpdateTargets(context);
        if (errors.Count > 0)
        {
            // The causes stay attached: a caller tells a CRIU timeout (or a full store) from other failures by them.
            throw new InvalidOperationException("CRIU could not finish every dump: " + string.Join("; ", errors),
                causes.Count == 1 ? causes[0] : new AggregateException(causes));
        }
    }

    private static Exception Classify(Exception e, CheckpointSet set)
    {
        if (e is CriuRequestFailedException failed)
        {
            StoreCapacity capacity;
            try
            {
                capacity = set.Store.GetCapacity();
            }
            catch (Exception probe) when (probe is IOException or UnauthorizedAccessException or ImageStoreException)
            {
                return e; // the store cannot say how full it is: CRIU's own error stands
            }

            if (failed.Message.Contains("No space left on device", StringComparison.Ordinal) || capacity.FreeBytes < NearlyFullBytes)
            {
                return new StoreFullException(
                    $"the image store at {set.Store.RootDirectory} is full ({capacity.FreeBytes} of {capacity.TotalBytes} bytes free after the failed dump); "
                    + $"CRIU resumed the workload. Free space or use a larger store. CRIU said: {failed.Message}", capacity.FreeBytes, null, failed);
            }
        }

        return e;
    }
}
