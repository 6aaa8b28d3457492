using System.CommandLine;
using RebootlessUpdate.Images;
using RebootlessUpdate.Pipeline;

namespace RebootlessUpdate.Cli.Commands;

/// <summary><c>rebootless images ls|verify|rm</c>: the checkpoint sets in the store.</summary>
internal static class ImagesCommand
{
    public static Command Create()
    {
        var images = new Command("images", "List, verify or delete checkpoint sets.");
        images.Subcommands.Add(List());
        images.Subcommands.Add(Verify());
        images.Subcommands.Add(Remove());
        return images;
    }

    private static Command List()
    {
        var ls = new Command("ls", "List the sets.");
        CliOptions.Add(ls, CliOptions.StoreOptions);
        CliInvocation.SetAction(ls, c =>
        {
            var sets = OpenStore(c, readOnly: true).ListSets();
            if (c.Json)
            {
                CliOutput.WriteJson([.. sets.Select(s => new SetLine(s.SetId, s.IsSealed, s.CreatedAt, s.TotalBytes) { Problem = s.Problem })], CliJson.Default.ListSetLine);
                return ExitCodes.Ok;
            }

            if (CliStores.LuoNote(c.Settings) is { } note)
            {
                Console.WriteLine(note);
            }

            if (sets.Count == 0)
            {
                Console.WriteLine("no sets in this store");
                return ExitCodes.Ok;
            }

            var w = Math.Max(3, sets.Max(s => s.SetId.Length));
            Console.WriteLine($"{"SET".PadRight(w)}  {"STATE",-8}  {"SIZE",9}  CREATED");
            foreach (var s in sets)
            {
                Console.WriteLine($"{s.SetId.PadRight(w)}  {(s.IsSealed ? "sealed" : "unsealed"),-8}  {(s.TotalBytes is { } b ? CliOutput.Size(b) : "-"),9}  "
                    + s.CreatedAt.ToUniversalTime().ToString("yyyy-MM-dd HH:mm:ss'Z'", System.Globalization.CultureInfo.InvariantCulture)
                    + (s.Problem is null ? "" : "  DAMAGED: " + s.Problem));
            }

            return ExitCodes.Ok;
        });
        return ls;
    }

    private static Command Verify()
    {
        var id = SetArgument();
        var verify = new Command("verify", "Re-hash a set and list every mismatch; exit 0 only when intact.");
        verify.Arguments.Add(id);
        CliOptions.Add(verify, [.. CliOptions.StoreOptions, CliOptions.ManifestKey]);
        CliInvocation.SetAction(verify, c =>
        {
            var store = OpenStore(c, readOnly: true);
            var setId = ExistingSet(store, c.Parse.GetValue(id)!);
            var r = store.VerifyAsync(setId).GetAwaiter().GetResult();
            if (c.Json)
            {
                CliOutput.WriteJson(new VerifyOutput(r.SetId, r.IsValid, r.BytesHashed, [.. r.Issues.Select(i => i.ToString())]), CliJson.Default.VerifyOutput);
            }
            else
            {
                Console.WriteLine(r.IsValid
                    ? $"{setId}: intact ({CliOutput.Size(r.BytesHashed)} hashed)"
                    : $"{setId}: {r.Issues.Count} problem(s)\n  " + string.Join("\n  ", r.Issues));
            }

            if (!r.IsValid)
            {
                Console.Error.WriteLine(CliOutput.OneLine(new CliError(ExitCodes.Failed, $"set {setId} is damaged: {r.Issues.Count} problem(s), the first: {r.Issues[0]}",
                    "it cannot be restored as it is; `rebootless images rm` deletes it")));
            }

            return r.IsValid ? ExitCodes.Ok : ExitCodes.Failed;
        });
        return verify;
    }

    private static Command Remove()
    {
        var id = SetArgument();
        var rm = new Command("rm", "Delete a set; one an unfinished run still needs only with --force.");
        var force = new Option<bool>("--force")
        {
            Description = "Delete the set even though an unfinished (interrupted or failed) run needs it: the workloads it did not put back "
                + "are given up; the journal records the run as abandoned.",
        };
        rm.Arguments.Add(id);
        CliOptions.Add(rm, [force, .. CliOptions.StoreOptions]);
        CliInvocation.SetAction(rm, c =>
        {
            CliInvocation.RequireRoot("images rm");
            var setId = c.Parse.GetValue(id)!;
            if (!UpdateJournal.IsSetId(setId))
            {
                throw ResumeCommand.NotASetId("the set", setId);
            }

            // Looked up read-only first: a folder holding no such set (or no store at all) is not made a store.
            var look = OpenStore(c, readOnly: true);
            if (!look.ListSets().Any(s => s.SetId == setId) && !UpdateJournal.Scan(look.RootDirectory).Any(j => j.SetId == setId))
            {
                throw NoSuchSet(look, setId);
            }

            var store = OpenStore(c, readOnly: false);
            var (deleted, lost) = RemoveSet(store, setId, c.Value(force));
            if (c.Json)
            {
                CliOutput.WriteJson(new RemoveOutput(setId, deleted, lost), CliJson.Default.RemoveOutput);
            }
            else
            {
                Console.WriteLine(deleted ? $"deleted {setId}" : $"gave up {setId}");
            }

            if (lost is not null)
            {
                Console.Error.WriteLine($"rebootless: {(deleted ? "deleted set" : "gave up")} {setId} of an unfinished run: {lost}.");
            }

            return ExitCodes.Ok;
        });
        return rm;
    }

    /// <summary>Deletes the set under the store's lock; an unfinished run's only with <paramref name="force"/>, recording what is given up.</summary>
    private static (bool Deleted, string? Lost) RemoveSet(IImageStore store, string id, bool force)
    {
        // The lock first: whether a run still needs the set only holds while no run can change it.
        using var l = store.AcquireLock();
        var exists = store.ListSets().Any(s => s.SetId == id);
        var needed = UpdateJournal.Unfinished(store.RootDirectory).FirstOrDefault(j => j.SetId == id);
        if (!exists && needed is null)
        {
            throw NoSuchSet(store, id);
        }

        string? lost = null;
        if (needed is not null)
        {
            if (!force)
            {
                throw CliFailure.Of(ExitCodes.NeedsAttention, $"set {id} is not deleted: an unfinished run needs it ({needed.Describe()}); "
                    + "its images may be the only copy of workloads that do not run", "`rebootless resume` finishes the run; `--force` deletes them anyway");
            }

            // Recorded before anything is deleted: the journal says what was given up, and no longer blocks the store.
            if (needed.Record is null)
            {
                var aside = UpdateJournal.SetAside(store.RootDirectory, id, l);
                lost = $"the journal could not be read ({needed.Problem}); it is kept as {aside}; whatever of its run was not running is lost";
            }
            else
            {
                var targets = UpdateJournal.Open(store.RootDirectory, id, l)!.Abandon("given up with `rebootless images rm --force`: the set's images were deleted");
                lost = targets.Count == 0
                    ? "every target of its run was running; nothing is lost"
                    : $"lost: {string.Join(", ", targets.Select(t => $"{t.Id} (last journaled {t.Phase.ToString().ToLowerInvariant()})"))}: "
                        + "whatever of them does not run now can no longer be restored; the journal records the run as abandoned";
            }
        }

        if (exists)
        {
            store.DeleteSet(id);
        }

        return (exists, lost);
    }

    private static Argument<string> SetArgument() => new("set") { Description = "The set id (`rebootless images ls` lists them)." };

    private static IImageStore OpenStore(CliInvocation c, bool readOnly)
    {
        CliInvocation.RequireRoot("images " + c.Parse.CommandResult.Command.Name);
        return CliStores.Open(c, mustExist: true, readOnly);
    }

    private static string ExistingSet(IImageStore store, string id) =>
        store.ListSets().Any(s => s.SetId == id) ? id : throw NoSuchSet(store, id);

    private static CliFailure NoSuchSet(IImageStore store, string id) =>
        CliFailure.Of(ExitCodes.Usage, $"there is no set {id} in {store.RootDirectory}", "`rebootless images ls` lists them");
}
