using System.CommandLine;
using RebootlessUpdate;
using RebootlessUpdate.Cli;

CrashInjection.InstallFromEnvironment();
var root = new RootCommand("rebootless: update the kernel without a visible reboot.");
var version = new Command("version", "Print the tool's version and the CRIU version it requires.");
version.SetAction(_ =>
{
    Console.WriteLine($"rebootless {typeof(RebootlessInfo).Assembly.GetName().Version}; requires criu >= {RebootlessInfo.MinimumCriuVersion}");
    return 0;
});
root.Subcommands.Add(version);
Commands.AddAll(root);
var parsed = root.Parse(args);
return Commands.ValidateGlobalOptions(parsed) ?? await parsed.InvokeAsync().ConfigureAwait(false);
