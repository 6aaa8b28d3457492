using System.CommandLine;
using RebootlessUpdate.Pipeline;

namespace RebootlessUpdate.Cli.Commands;

/// <summary><c>rebootless status</c>: every run the store has a journal of, and where it stands.</summary>
internal static class StatusCommand
{
    public static Command Create()
    {
        var cmd = new Command("status", "The journals in the store: every update and rehearsal and where it stands.");
        CliOptions.Add(cmd, CliOptions.StoreOptions);
        CliInvocation.SetAction(cmd, c =>
        {
            CliInvocation.RequireRoot("status");
            var store = CliStores.Open(c, mustExist: true, readOnly: true);
            // Every journal file, also those that cannot be read (a truncated one is a row saying why, never skipped).
            var boot = SystemInfo.BootId();
            var lines = UpdateJournal.Scan(store.RootDirectory)
                .Select(j => (Listing: j, Unfinished: UpdateJournal.IsUnfinished(j, boot)))
                .Select(x => new StatusLine(x.Listing.SetId, Kind(x.Listing.Record), x.Listing.Record is not null, x.Unfinished, x.Listing.Problem,
                    x.Unfinished ? x.Listing.Remedy() : null, x.Listing.Record))
                .ToList();
            if (c.Json)
            {
                CliOutput.WriteJson(lines, CliJson.Default.ListStatusLine);
            }
            else
            {
                if (CliStores.LuoNote(c.Settings) is { } note)
                {
                    Console.WriteLine(note);
                }

                WriteTable(lines);
            }

            return ExitCodes.Ok;
        });
        return cmd;
    }

    private static string Kind(JournalRecord? r) => r?.Mode switch
    {
        UpdateMode.Rehearse => "rehearsal",
        UpdateMode.Update => "update",
        null => "?",
        var m => m.Value.ToString().ToLowerInvariant(),
    };

    /// <summary>A finished rehearsal restored its targets on the same kernel: "rehearsed", not "Resumed".</summary>
    private static string State(JournalRecord r) =>
        r is { Mode: UpdateMode.Rehearse, State: JournalState.Resumed } ? "rehearsed" : r.State.ToString().ToLowerInvariant();

    private static void WriteTable(List<StatusLine> lines)
    {
        if (lines.Count == 0)
        {
            Console.WriteLine("no runs in this store");
            return;
        }

        var rows = lines.Select(l => (l.SetId, l.Kind, State: l.Journal is { } r ? State(r) : "unreadable",
            Targets: l.Journal is { } j ? string.Join(" ", j.Targets.Select(t => $"{t.Id}={t.Phase.ToString().ToLowerInvariant()}")) : "-")).ToList();
        var w1 = Math.Max(3, rows.Max(r => r.SetId.Length));
        var w2 = Math.Max(4, rows.Max(r => r.Kind.Length));
        var w3 = Math.Max(5, rows.Max(r => r.State.Length));
        Console.WriteLine($"{"SET".PadRight(w1)}  {"KIND".PadRight(w2)}  {"STATE".PadRight(w3)}  TARGETS");
        foreach (var r in rows)
        {
            Console.WriteLine($"{r.SetId.PadRight(w1)}  {r.Kind.PadRight(w2)}  {r.State.PadRight(w3)}  {r.Targets}");
        }

        // Errors below the table, whole: a multi-line error would break the rows.
        foreach (var l in lines.Where(l => l.Problem is not null || l.Journal?.Error is not null || l.Advice is not null))
        {
            Console.WriteLine();
            Console.WriteLine($"{l.SetId}:");
            if (l.Problem is not null)
            {
                Console.WriteLine("  unreadable: " + l.Problem);
            }

            if (l.Journal is { Error: { } error } record)
            {
                Console.WriteLine($"  error{(record.FailedStage is null ? "" : " at " + record.FailedStage)}: " + error.Replace("\n", "\n    ", StringComparison.Ordinal));
            }

            if (l.Advice is not null)
            {
                Console.WriteLine("  needs attention: " + l.Advice);
            }
        }
    }
}
