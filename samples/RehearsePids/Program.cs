using System.Globalization;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Images;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;
using RebootlessUpdate.Targets;

// Rehearses a kernel update of some process trees on this kernel: checkpoint, seal,
// verify and restore each one, then print whether it is restorable and what it cost.
// Needs root and criu >= 4.0.
// Usage: RehearsePids --store DIR [--criu PATH] PID [PID...]
// Exit: 0 every target restorable, 1 not (every workload was put back), 2 usage.
string? store = null;
var criu = "criu";
var pids = new List<int>();
for (var i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--store" when i + 1 < args.Length:
            store = args[++i];
            break;
        case "--criu" when i + 1 < args.Length:
            criu = args[++i];
            break;
        default:
            if (!int.TryParse(args[i], NumberStyles.None, CultureInfo.InvariantCulture, out var pid) || pid <= 0)
            {
                return Usage($"'{args[i]}' is not a pid");
            }

            pids.Add(pid);
            break;
    }
}

if (store is null || pids.Count == 0)
{
    return Usage("give --store DIR and at least one pid");
}

// The store is any folder for a rehearsal; the set is deleted when the rehearsal succeeds.
Directory.CreateDirectory(store);
var context = new UpdateContext(UpdateMode.Rehearse, pids.Select(p => UpdateTarget.ProcessTree(p)))
{
    Store = new DirectoryImageStore(new DirectoryImageStoreOptions { RootDirectory = store }),
    Criu = new CriuClient(new CriuClientOptions { CriuPath = criu }),
    Progress = new ConsoleProgress(),
};

var result = await RebootlessPipelines.Rehearsal().Build().ExecuteAsync(context);

foreach (var t in result.Targets)
{
    Console.WriteLine(t.Restorable
        ? $"{t.Target}: restorable; restored as pid {t.RestoredPid}; dump {Ms(t.DumpTime)}, frozen {Ms(t.FrozenTime)}, restore {Ms(t.RestoreTime)}, downtime {Ms(t.Downtime)}; {t.Bytes} bytes, {t.PagesWritten} pages"
        : $"{t.Target}: NOT restorable ({t.Phase}): {t.Error ?? result.Error}");
}

Console.WriteLine($"rehearsal {result.Outcome.ToString().ToLowerInvariant()}"
    + (result.FailedStage is null ? string.Empty : $" at {result.FailedStage}: {result.Error}")
    + (result.Downtime is { } d ? $"; total downtime {d.TotalMilliseconds:0} ms" : string.Empty));
return result.Outcome == UpdateOutcome.Succeeded ? 0 : 1;

static string Ms(TimeSpan? t) => t is { } v ? v.TotalMilliseconds.ToString("0", CultureInfo.InvariantCulture) + " ms" : "-";

static int Usage(string problem)
{
    Console.Error.WriteLine($"RehearsePids: {problem}. Usage: RehearsePids --store DIR [--criu PATH] PID [PID...]");
    return 2;
}

/// <summary>Prints progress as it comes (synchronously: Progress&lt;T&gt; would post to the thread pool and reorder lines).</summary>
internal sealed class ConsoleProgress : IProgress<UpdateProgress>
{
    public void Report(UpdateProgress value)
    {
        if (value.Kind is UpdateProgressKind.Info or UpdateProgressKind.StageFailed or UpdateProgressKind.Compensating)
        {
            Console.Error.WriteLine($"[{value.Stage}] {value.Kind} {value.Target} {value.Message}".TrimEnd());
        }
    }
}
