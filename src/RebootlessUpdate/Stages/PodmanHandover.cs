using RebootlessUpdate.Criu;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.Stages;

/// <summary>
/// A podman target's dump and restore, which podman performs: <c>podman container checkpoint --export</c> writes the
/// container's CRIU images and podman's own files (its config, the rootfs changes) as one tar into the target's images
/// folder, sealed and verified like any image; <c>podman container restore --import</c> brings the container back
/// under the same id. Exactly once as for a CRIU target: the journal says "restoring" (and when, on this kernel's
/// clock) before podman is asked, and a later run that finds the target restoring asks podman whether it restored the
/// container since (<see cref="Judge"/>), while a restore still under way in the container's scope is left alone. A
/// container podman runs already is never restored a second time. Neither podman call is cancelled (a killed
/// checkpoint leaves the container's cgroup frozen, a killed restore leaves no answer): each is bounded by its timeout.
/// </summary>
internal static class PodmanHandover
{
    /// <summary>The tar podman exports into the target's images folder.</summary>
    internal const string ExportFile = "podman-checkpoint.tar";

    /// <summary>Where systemd says it runs this host (<c>sd_booted</c>'s test); tests point it elsewhere.</summary>
    internal static string SystemdRuntimeDirectory { get; set; } = "/run/systemd/system";

    internal static bool IsPodman(TargetRun t) => t.Settings?.Podman is not null;

    /// <summary>Whether the images folder holds podman's export (the images a rollback restores from).</summary>
    internal static bool HasExport(string imagesDirectory) =>
        new FileInfo(Path.Combine(imagesDirectory, ExportFile)) is { Exists: true, LinkTarget: null, Length: > 0 };

    /// <summary>
    /// Podman checkpoints the container into <paramref name="imagesDirectory"/> and ends it: there is no hold at
    /// post-dump as with our own CRIU dump, so the target is committed when this finishes (a rollback restores it from
    /// the export). When podman fails, CRIU has let the container run on and podman still runs it.
    /// </summary>
    internal static Task<CriuDumpResult> DumpAsync(TargetRun t, string imagesDirectory)
    {
        var settings = t.Settings!;
        var pod = settings.Podman!;
        var export = Path.Combine(imagesDirectory, ExportFile);
        return Task.Factory.StartNew(() =>
        {
            Cli(pod).Checkpoint(pod.Id, export, settings.TcpEstablished, settings.FileLocks, CancellationToken.None);
            return new CriuDumpResult(null, export);
        }, CancellationToken.None, TaskCreationOptions.LongRunning | TaskCreationOptions.DenyChildAttach, TaskScheduler.Default);
    }

    /// <summary>
    /// Restores the container from its export: podman's record of it left by the kernel it ran on (exited, or
    /// configured after podman's reboot refresh) is removed first, as <c>restore --import</c> refuses while the id
    /// exists. Refused, with nothing changed, when podman runs the container already.
    /// </summary>
    internal static async Task RestoreAsync(UpdateContext context, TargetRun t, string imagesDirectory, CancellationToken cancellationToken)
    {
        var settings = t.Settings!;
        var pod = settings.Podman!;
        var podman = Cli(pod);
        var export = Path.Combine(imagesDirectory, ExportFile);
        var found = await Task.Run(() => podman.Inspect(pod.Id), cancellationToken).ConfigureAwait(false);
        if (found is { Running: true })
        {
            throw new InvalidOperationException($"podman runs container {pod.Name} ({Short(pod.Id)}) already, as pid {found.Pid}, not restored by "
                + $"this run: a second copy is never restored; its images are kept in {imagesDirectory}");
        }

        await WaitForBusAsync(context, t, cancellationToken).ConfigureAwait(false);
        TargetRestore.JournalRestoring(context, t);

        var start = context.TimeProvider.GetTimestamp();
        try
        {
            await Task.Run(() =>
            {
                if (found is not null)
                {
                    podman.Remove(pod.Id);
                }

                podman.Restore(export, settings.TcpEstablished, settings.FileLocks, SystemdRuns ? ScopeName(pod) : null, CancellationToken.None);
            }, CancellationToken.None).ConfigureAwait(false);
        }
        catch (InvalidOperationException e)
        {
            // Podman answered, or was killed at its timeout: ask it what runs now.
            switch (Judge(t, context.Processes))
            {
                case InterruptedRestore.Outcome.Running:
                    PipelineLog.TargetWarning(context.Logger, t.Target.Id, $"podman's restore failed ({e.Message}) but it runs the container: kept as the one copy");
                    Finish(context, t, pod, start);
                    return;
                case InterruptedRestore.Outcome.RanAndExited:
                    t.End($"podman restored it and it has exited since; not restored a second time (its images are kept in {imagesDirectory}); podman said: {e.Message}");
                    throw;
                case InterruptedRestore.Outcome.StillRestoring:
                    t.LeftRestoring($"podman's restore failed ({e.Message}), and it may still be under way (scope {ScopeName(pod)}.scope) or podman "
                        + "cannot say whether it runs the container; not asked again: run `rebootless resume` once that scope is gone and `podman ps -a` answers");
                    throw;
                default:
                    t.NothingRestored(); // podman does not run it: a later attempt may restore it
                    throw;
            }
        }

        if (Judge(t, context.Processes) != InterruptedRestore.Outcome.Running)
        {
            var now = podman.Inspect(pod.Id);
            var why = $"podman restored container {pod.Name} but does not run it now ({(now is null ? "it knows no such container" : now.Status)})";
            t.End(why + $"; not restored a second time (its images are kept in {imagesDirectory})");
            throw new InvalidOperationException(why);
        }

        Finish(context, t, pod, start);
    }

    /// <summary>
    /// Whether podman restored the container of an interrupted restore: running and restored since the restore was
    /// asked (its root is then recorded on <paramref name="t"/>); still restoring (podman cannot say, or the restore's
    /// scope is still there without a running container); restored since and exited; or not restored (not known to
    /// podman, or not restored since: a container started afresh is then refused by the restore).
    /// </summary>
    internal static InterruptedRestore.Outcome Judge(TargetRun t, IProcessTable processes)
    {
        if (t.RestoredRoot is { } recorded && processes.IsAlive(recorded))
        {
            return InterruptedRestore.Outcome.Running;
        }

        var pod = t.Settings!.Podman!;
        PodmanState? state;
        try
        {
            state = Cli(pod).Inspect(pod.Id);
        }
        catch (Exception e) when (e is InvalidOperationException or InvalidDataException)
        {
            return InterruptedRestore.Outcome.StillRestoring; // podman cannot say: never restored again on a guess
        }

        // Podman's clock and the request's are this kernel's: the dump's time came from the other kernel's clock.
        var restoredSince = state?.RestoredAt is { } at && t.RestoreRequestedAt is { } asked && at >= asked;
        if (state is { Running: true } && restoredSince && processes.IdentityOf(state.Pid) is { } root)
        {
            if (t.Phase == TargetPhase.Restoring)
            {
                t.RecordRestoredRoot(root);
            }

            return InterruptedRestore.Outcome.Running;
        }

        if (state is not { Running: true } && SystemdRuns && ScopeHandback.IsActive(ScopeName(pod) + ".scope"))
        {
            return InterruptedRestore.Outcome.StillRestoring; // podman, crun or CRIU still work in the restore's scope
        }

        return restoredSince && state is not null ? InterruptedRestore.Outcome.RanAndExited : InterruptedRestore.Outcome.NotRunning;
    }

    private static void Finish(UpdateContext context, TargetRun t, PodmanContainer pod, long start)
    {
        var root = t.RestoredRoot!.Value;
        // Journaled before anything else is asked: a run that cannot write it leaves the target restoring, and the next
        // one finds the container through podman (restored since the dump) instead of restoring it again.
        context.Journal?.UpdateTargets(context);
        var took = TargetRestore.MarkRestored(context, t, root.Pid, null, context.TimeProvider.GetTimestamp(), start);
        context.ReportProgress("Restore", $"podman restored container {pod.Name} ({Short(pod.Id)}) as pid {root.Pid} in {took.TotalMilliseconds:0} ms", t.Target.Id);
    }

    /// <summary>
    /// Podman's systemd cgroup manager asks systemd for the container's scope over the system bus, and the resume unit
    /// starts early on the new kernel, before the bus's socket exists: wait for it (bounded; podman then says what is
    /// wrong itself).
    /// </summary>
    private static async Task WaitForBusAsync(UpdateContext context, TargetRun t, CancellationToken cancellationToken)
    {
        if (!Directory.Exists(SystemdRuntimeDirectory) || File.Exists(SystemBus))
        {
            return;
        }

        var start = context.TimeProvider.GetTimestamp();
        while (!File.Exists(SystemBus) && context.TimeProvider.GetElapsedTime(start) < BusWait)
        {
            await Task.Delay(100, cancellationToken).ConfigureAwait(false);
        }

        context.ReportProgress("Restore", $"waited {context.TimeProvider.GetElapsedTime(start).TotalSeconds:0.0} s for the system bus "
            + $"({SystemBus}{(File.Exists(SystemBus) ? "" : ": still missing")}): podman asks systemd for the container's scope over it", t.Target.Id);
    }

    private const string SystemBus = "/run/dbus/system_bus_socket";

    private static readonly TimeSpan BusWait = TimeSpan.FromMinutes(2);

    private static PodmanCli Cli(PodmanContainer pod) => new(pod.Binary, pod.Timeout);

    private static bool SystemdRuns => Directory.Exists(SystemdRuntimeDirectory);

    /// <summary>
    /// The scope the restore runs in when systemd runs this host (conmon stays in the cgroup podman runs in, and the
    /// resume unit's cgroup is emptied when that unit stops): one name per container, so a restore still under way
    /// is found, and a second one cannot start beside it.
    /// </summary>
    internal static string ScopeName(PodmanContainer pod) => $"rebootless-podman-{Short(pod.Id)}";

    private static string Short(string id) => id.Length > 12 ? id[..12] : id;
}
