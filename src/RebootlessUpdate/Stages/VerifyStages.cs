using RebootlessUpdate.Images;
using RebootlessUpdate.Pipeline;

namespace RebootlessUpdate.Stages;

/// <summary>
/// A rehearsal's Verify: every hash of the sealed set, before Commit lets CRIU end the
/// held workloads. Damage anywhere fails the stage, and the rollback resumes them in place.
/// </summary>
internal sealed class RehearsalVerifyStage : IUpdateStage
{
    public string Name => "Verify";

    public async ValueTask ExecuteAsync(UpdateContext context, CancellationToken cancellationToken)
    {
        var store = context.RequireStore();
        context.Restorable = await store.OpenForRestoreAsync(context.SetId!, null, cancellationToken).ConfigureAwait(false);
        context.ReportProgress(Name, $"{context.Restorable.Verification.BytesHashed} bytes verified", bytes: context.Restorable.Verification.BytesHashed);
    }
}

/// <summary>
/// Verify after boot: every hash of the set before anything restored from it runs. The
/// page images of each target are, by default, hashed while CRIU restores them (the
/// Restore stage holds each target at post-restore until its check passed). Damage in
/// one target's folder refuses that target only; damage anywhere else refuses the set.
/// </summary>
internal abstract class AfterBootVerifyStage(VerifyStageOptions options) : IUpdateStage
{
    public string Name => "Verify";

    /// <summary>Why this kind of run restores from the set without verifying it, if it may.</summary>
    protected abstract string? Unverified(UpdateContext context, IImageStore store);

    public async ValueTask ExecuteAsync(UpdateContext context, CancellationToken cancellationToken)
    {
        var store = context.RequireStore();
        if (!context.Targets.Any(t => t.Phase == TargetPhase.Dumped))
        {
            context.SkipStage("no target needs restoring");
            return;
        }

        if (Unverified(context, store) is { } unverified)
        {
            context.SkipStage(unverified);
            return;
        }

        // Page images owned by a target may wait: CRIU reads them into memory that does not run before post-restore.
        bool Deferred(string path) => options.HashPagesDuringRestore && SetFiles.IsPageImage(path) && SetFiles.OwnerOf(context, path) is not null;
        var verification = await store.VerifyAsync(context.SetId!, new VerifyOptions { Include = p => !Deferred(p) }, cancellationToken).ConfigureAwait(false);
        if (verification.IsValid)
        {
            context.Restorable = new RestorableSet(verification);
            StartPageVerification(context, store, verification.Manifest!, Deferred);
            context.ReportProgress(Name, $"{verification.BytesHashed} bytes verified" + (options.HashPagesDuringRestore ? "; page images are hashed while they are restored" : string.Empty), bytes: verification.BytesHashed);
            return;
        }

        var owners = verification.Issues.Select(i => (Issue: i, Owner: SetFiles.OwnerOf(context, i))).ToList();
        if (verification.Manifest is null || owners.Any(o => o.Owner is null))
        {
            throw new CheckpointSetVerificationException(verification);
        }

        foreach (var group in owners.GroupBy(o => o.Owner!))
        {
            var t = group.Key;
            if (t.Phase is TargetPhase.Restored or TargetPhase.Resumed or TargetPhase.Ended or TargetPhase.Restoring)
            {
                // It runs, ran and ended, or an interrupted restore may still bring it up: it is not restored from these
                // images now, and marking it failed would lose what the journal knows of that restore.
                context.ReportProgress(Name, $"its images failed verification ({string.Join("; ", group.Select(o => o.Issue.ToString()))}); "
                    + $"they are not used: it is {t.Phase.ToString().ToLowerInvariant()}", t.Target.Id);
                continue;
            }

            var why = SetFiles.RefusalMessage(group.Select(o => o.Issue));
            t.Fail(why);
            PipelineLog.TargetWarning(context.Logger, t.Target.Id, why);
            context.ReportProgress(Name, why, t.Target.Id);
        }

        context.RequireJournal().UpdateTargets(context);
        StartPageVerification(context, store, verification.Manifest!, Deferred);
        context.ReportProgress(Name, $"{verification.BytesHashed} bytes verified; {owners.Select(o => o.Owner).Distinct().Count()} target(s) refused", bytes: verification.BytesHashed);
    }

    /// <summary>
    /// Starts, in the background, the check of each remaining target's deferred page images:
    /// one file at a time (the other processors restore), smallest target first (a small target
    /// waits at post-restore only for its own few pages, not behind a large one).
    /// </summary>
    private static void StartPageVerification(UpdateContext context, IImageStore store, CheckpointManifest manifest, Func<string, bool> deferred)
    {
        var order = context.Targets.Where(t => t.Phase == TargetPhase.Dumped)
            .Select(t => (Target: t, Bytes: manifest.Files.Where(f => deferred(f.Path) && SetFiles.OwnerOf(context, f.Path) == t).Sum(f => f.Size)))
            .OrderBy(x => x.Bytes)
            .Select(x => (x.Target, Done: new TaskCompletionSource<VerificationResult>(TaskCreationOptions.RunContinuationsAsynchronously)))
            .ToList();
        foreach (var (t, done) in order)
        {
            t.CheckPagesWith(done.Task);
        }

        _ = Task.Run(async () =>
        {
            foreach (var (t, done) in order)
            {
                try
                {
                    var only = new VerifyOptions { Include = p => deferred(p) && SetFiles.OwnerOf(context, p) == t, ReportUnlisted = false, MaxParallelism = 1 };
                    done.SetResult(await store.VerifyAsync(context.SetId!, only, CancellationToken.None).ConfigureAwait(false));
                }
                catch (Exception e)
                {
                    done.SetException(e);
                }
            }
        });
    }
}

/// <summary>A resume's Verify, after the jump: the set is always verified.</summary>
internal sealed class ResumeVerifyStage(VerifyStageOptions options) : AfterBootVerifyStage(options)
{
    protected override string? Unverified(UpdateContext context, IImageStore store) => null;
}

/// <summary>
/// A rollback's Verify, after a crash before the jump (same boot): like a resume's, except for a set that positively
/// never began sealing, whose images are this boot's own (CRIU checks them as it reads).
/// </summary>
internal sealed class RollbackVerifyStage(VerifyStageOptions options) : AfterBootVerifyStage(options)
{
    /// <remarks>
    /// Only a set that never began sealing: one whose manifest was deleted keeps its seal mark, and the journal's
    /// history says whether sealing began, so either is verified (and refused).
    /// </remarks>
    protected override string? Unverified(UpdateContext context, IImageStore store) =>
        store.ListSets().Any(s => s.SetId == context.SetId && s.IsNeverSealed)
        && !context.RequireJournal().Record.History.Any(h => h.State == JournalState.Sealed)
            ? "the set was never sealed (a crash before sealing); restoring this boot's own images"
            : null;
}

/// <summary>Which target a file of a set belongs to, and what a target refused for its files is told.</summary>
internal static class SetFiles
{
    /// <summary>CRIU's page data files (<c>pages-N.img</c>): the memory contents, nearly all of a set's bytes.</summary>
    internal static bool IsPageImage(string path)
    {
        var name = path[(path.LastIndexOf('/') + 1)..];
        return name.StartsWith("pages-", StringComparison.Ordinal) && name.EndsWith(".img", StringComparison.Ordinal);
    }

    /// <summary>The target whose images folder (or pre-dump folder) holds the file an issue names; null for damage of the whole set.</summary>
    internal static TargetRun? OwnerOf(UpdateContext context, VerificationIssue issue) =>
        issue.Kind is VerificationIssueKind.NotSealed or VerificationIssueKind.ManifestCorrupt or VerificationIssueKind.ForeignHost
            ? null
            : OwnerOf(context, issue.Path);

    /// <summary>The target whose images folder (or pre-dump folder) holds <paramref name="path"/>.</summary>
    internal static TargetRun? OwnerOf(UpdateContext context, string path) =>
        context.Targets.FirstOrDefault(t => t.Folder is { } f
            && (path.StartsWith(f + "/", StringComparison.Ordinal) || path.StartsWith(f + "-pre/", StringComparison.Ordinal)));

    /// <summary>What a target whose images failed verification is told (the same before and during its restore).</summary>
    internal static string RefusalMessage(IEnumerable<VerificationIssue> issues) =>
        "not restored: its images failed verification (" + string.Join("; ", issues.Select(i => i.ToString())) + "); nothing of it was restored, the images are kept for inspection";
}
