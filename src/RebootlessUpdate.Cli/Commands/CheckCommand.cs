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
            if (c.Settings.PmemDevice is { } device && !CliStores.IsMounted(device))
            {
                // Not formatted or mounted here: rehearse and update do that.
                storeError = new CliError(ExitCodes.Ok, $"{device} holds no mounted store yet; rehearse or update formats it (when empty) and mounts it");
            }
            else if (c.Settings.Luo && !Directory.Exists(c.Settings.StorePath))
            {
                storeError = new CliError(ExitCodes.Ok, $"the LUO store {c.Settings.StorePath} does not exist yet; rehearse or update mounts its tmpfs and creates it");
            }
            else if (c.Settings.PmemDevice is null && !Directory.Exists(c.Settings.StorePath))
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

            // Whether this kernel could keep a set in preserved memfds: a requirement with --store luo, else for information.
            if (c.Settings.Luo)
            {
                checks.AddRange(CliStores.LuoChecks());
            }
            else
            {
                var luo = Images.Luo.LuoProbe.Check();
                checks.Add(new ReadinessCheck("luo", true, luo.Usable ? luo.Detail : "no LUO store here (not needed by this store): " + luo.Detail));
            }
            var failed = checks.FirstOrDefault(x => !x.Ok);
            var code = failed is { Problem: { } problem } ? CliStores.Code(problem) : ExitCodes.Ok;
            if (c.Json)
            {
                CliOutput.WriteJson(new CheckOutput(failed is null, report.CriuVersion, [.. checks.Select(x => new CheckLine(x.Name, x.Ok, x.Detail))], code),
                    CliJson.Default.CheckOutput);
            }
            else
            {
                foreach (var x in checks)
                {
                    Console.WriteLine($"{(x.Ok ? "ok  " : "FAIL")} {x.Name}: {x.Detail}");
                }
            }

            if (failed is not null)
            {
                Console.Error.WriteLine(CliOutput.OneLine(new CliError(code, $"not ready: {failed.Name}: {failed.Detail}",
                    checks.Count(x => !x.Ok) > 1 ? $"{checks.Count(x => !x.Ok)} checks failed; the report lists them" : null)));
            }

            return code;
        });
        return cmd;
    }
}
