using System.CommandLine;
using RebootlessUpdate.Stages;

namespace RebootlessUpdate.Cli.Commands;

/// <summary><c>rebootless check</c>: whether an update is possible here. Looks only: creates and changes nothing.</summary>
internal static class CheckCommand
{
    public static Command Create()
    {
        var cmd = new Command("check", "criu, kexec and store readiness; exit 0 only when an update is possible. Creates and changes nothing.");
        CliOptions.Add(cmd, [.. CliOptions.CriuOptions, .. CliOptions.StoreOptions]);
        CliInvocation.SetAction(cmd, async (c, ct) =>
        {
            // Not refused for non-root: the report says so (exit 3), with whatever else it could see.
            CliError? storeError = null;
            Images.IImageStore? store = null;
            if (c.Settings.PmemDevice is null && !Directory.Exists(c.Settings.StorePath))
            {
                // A store that does not exist yet is not created: rehearse or update will.
                storeError = new CliError(c.Settings.StoreFolder is null ? ExitCodes.Ok : ExitCodes.BadStore,
                    $"{c.Settings.StorePath} does not exist yet" + (c.Settings.StoreFolder is null ? "; rehearse or update creates it" : ""));
            }
            else
            {
                try
                {
                    store = CliStores.Open(c, mustExist: false, readOnly: true);
                }
                catch (CliFailure f)
                {
                    storeError = f.Error;
                }
            }

            var report = await Readiness.CheckAsync(c.Criu(), store, needKexec: true, runCriuCheck: true, ct).ConfigureAwait(false);
            var checks = report.Checks.ToList();
            if (storeError is not null)
            {
                checks.Add(new ReadinessCheck("store", storeError.ExitCode == ExitCodes.Ok, storeError.Message,
                    storeError.ExitCode == ExitCodes.Ok ? null : ReadinessProblem.StoreUnusable));
            }

            if (c.Json)
            {
                CliOutput.WriteJson(new CheckOutput(checks.All(x => x.Ok), report.CriuVersion, [.. checks.Select(x => new CheckLine(x.Name, x.Ok, x.Detail))]),
                    CliJson.Default.CheckOutput);
            }
            else
            {
                foreach (var x in checks)
                {
                    Console.WriteLine($"{(x.Ok ? "ok  " : "FAIL")} {x.Name}: {x.Detail}");
                }
            }

            return checks.FirstOrDefault(x => !x.Ok) is { Problem: { } problem } ? CliStores.Code(problem) : ExitCodes.Ok;
        });
        return cmd;
    }
}
