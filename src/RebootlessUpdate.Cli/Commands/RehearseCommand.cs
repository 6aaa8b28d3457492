using System.CommandLine;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;

namespace RebootlessUpdate.Cli.Commands;

/// <summary><c>rebootless rehearse</c>: the whole checkpoint and restore on this kernel.</summary>
internal static class RehearseCommand
{
    public static Command Create()
    {
        var cmd = new Command("rehearse", "Checkpoint, seal, verify and restore on this kernel; exit 0 only when every target was checkpointed and restored.");
        var targets = new CliTargets(cmd);
        var keep = new Option<bool>("--keep-images") { Description = "Keep the rehearsal's checkpoint set." };
        var lazy = UpdateCommand.LazyRestoreOption("(the rehearsal's set is deleted once every page is delivered)");
        var fromStore = UpdateCommand.PagesFromStoreOption("(the rehearsal's set is deleted afterwards unless --keep-images)");
        CliOptions.Add(cmd, [keep, lazy, fromStore, .. CliOptions.CriuOptions, .. CliOptions.StoreOptions, CliOptions.ManifestKey]);
        CliInvocation.SetAction(cmd, async (c, ct) =>
        {
            CliInvocation.RequireRoot("rehearse");
            var named = targets.Resolve(c);
            var store = CliStores.Ready(c, needKexec: false, ct);
            var pipeline = RebootlessPipelines.Rehearsal(cleanup: new CleanupStageOptions { DeleteRehearsalSet = !c.Value(keep) }).Build();
            return await RunReport.RunAsync(c, pipeline, UpdateMode.Rehearse, named, store, c.Value(lazy), c.Value(fromStore), ct).ConfigureAwait(false);
        });
        return cmd;
    }
}
