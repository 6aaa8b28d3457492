using System.CommandLine;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.Cli.Commands;

/// <summary><c>rebootless resume</c>: after boot, verify and restore. Idempotent.</summary>
internal static class ResumeCommand
{
    public static Command Create()
    {
        var cmd = new Command("resume", "After boot: verify the checkpoint named by the command line and restore every target. Idempotent.");
        var setId = new Option<string?>("--set") { Description = "The set to resume (default: rebootless.resume= on the command line, else the newest unfinished one)." };
        var lazy = UpdateCommand.LazyRestoreOption("even when the update did not ask for it (targets the update marked lazy are restored lazily anyway)");
        var fromStore = UpdateCommand.PagesFromStoreOption("even when the update did not ask for it");
        var notify = new Option<bool>("--systemd-notify")
        {
            Description = "Run as the resume unit (Type=notify): say READY=1 to systemd once every tree is back, so the units ordered after it start "
                + "(a service's queued start then takes its restored process), and check them before exiting.",
        };
        CliOptions.Add(cmd, [setId, lazy, fromStore, notify, .. CliOptions.CriuOptions, .. CliOptions.StoreOptions, CliOptions.ManifestKey]);
        CliInvocation.SetAction(cmd, async (c, ct) =>
        {
            CliInvocation.RequireRoot("resume");
            if (c.Value(setId) is { } id && !UpdateJournal.IsSetId(id))
            {
                // Before a path is made of it: `--set ../x`, an absolute path or a link name reads nothing.
                throw NotASetId("--set", id);
            }

            if (c.Value(setId) is { } named && !(c.Settings.Luo && !Directory.Exists(c.Settings.StorePath)))
            {
                // Looked up read-only first: a store holding no such run is left as it is.
                var look = CliStores.Open(c, mustExist: true, readOnly: true);
                if (!UpdateJournal.Scan(look.RootDirectory).Any(j => j.SetId == named))
                {
                    throw CliFailure.Of(ExitCodes.Usage, $"--set {named}: there is no run of that set in {look.RootDirectory}; nothing was changed", "`rebootless status` lists them");
                }
            }

            var store = CliStores.Ready(c, needKexec: false, ct, mustExist: true, incomingSetId: c.Value(setId));
            if (store is Images.Luo.LuoImageStore { NotReceived: { } why })
            {
                // The marker (or --set) names a set whose session never came: a cold boot, or a kernel without LUO, lost it.
                throw CliFailure.Of(ExitCodes.BadStore, $"the checkpoint was to cross the jump in a LUO session, but {why}; nothing was restored",
                    "the workloads checkpointed by that update are not coming back: start them anew (`rebootless status` shows the store is empty)");
            }

            // A LUO store lives in memory: a run that ended well leaves no set behind there (a failed one keeps its images).
            var cleanup = store is Images.Luo.LuoImageStore ? new CleanupStageOptions { KeepSealedSets = 0 } : null;
            var pipeline = RebootlessPipelines.Resume(new LocateStageOptions { SetId = c.Value(setId) }, cleanup,
                new RestoreStageOptions { LazyPages = c.Value(lazy), ServePagesFromStore = c.Value(fromStore) }).Build();
            // Which targets, and whether lazily, the journal says (and --lazy-restore, through the restore options).
            // Only when asked: a NOTIFY_SOCKET inherited from some other unit is not the resume unit's.
            var gate = c.Value(notify) ? SystemdNotifyGate.Process : SystemdNotifyGate.None;
            try
            {
                return await RunReport.RunAsync(c, pipeline, UpdateMode.Resume, [], store, lazyRestore: false, pagesFromStore: false, ct, gate).ConfigureAwait(false);
            }
            finally
            {
                // A resume that ended before its restores (nothing to do, or a failure) still lets the boot go on.
                if (gate.TryRelease() is { } notReleased)
                {
                    Console.Error.WriteLine("rebootless: " + notReleased);
                }
            }
        });
        return cmd;
    }

    public static CliFailure NotASetId(string what, string id) => CliFailure.Of(ExitCodes.Usage,
        $"{what} '{id}' is not a checkpoint set id (expected e.g. 20261126T063200Z-1a2b3c4d); nothing was read or changed", "`rebootless status` lists them");
}
