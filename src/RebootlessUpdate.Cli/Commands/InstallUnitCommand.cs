using System.CommandLine;
using RebootlessUpdate.Images;
using RebootlessUpdate.Images.Interop;
using RebootlessUpdate.Processes;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.Cli.Commands;

/// <summary>
/// <c>rebootless install-unit</c>: writes the shipped <c>rebootless-resume.service</c> with this installation's
/// command line (the tool as it was started: its own binary, or <c>dotnet rebootless.dll</c>), reloads systemd
/// and enables it, so the resume runs early on the new kernel without a hand-made unit.
/// </summary>
internal static class InstallUnitCommand
{
    public const string UnitName = SystemctlServiceManager.ResumeUnit;
    private const string ShippedCommand = "/usr/local/bin/rebootless";

    public static Command Create()
    {
        var cmd = new Command("install-unit", $"Install and enable the systemd unit ({UnitName}) that runs `rebootless resume` after the jump.");
        var unitDir = new Option<string?>("--unit-dir") { Description = "Where to write the unit (default /etc/systemd/system; with --systemd-user the user's unit folder)." };
        var tool = new Option<string?>("--tool") { Description = "The command the unit runs (default: this tool, as it was started)." };
        var noEnable = new Option<bool>("--no-enable") { Description = "Write the unit and reload systemd, but do not enable it." };
        CliOptions.Add(cmd, unitDir, tool, noEnable, CliOptions.SystemdUser);
        CliInvocation.SetAction(cmd, c =>
        {
            CliInvocation.RequireRoot("install-unit");
            var user = c.Value(CliOptions.SystemdUser);
            var dir = c.Value(unitDir) ?? (user ? UserUnitDirectory() : "/etc/systemd/system");
            if (!Path.IsPathRooted(dir) || !Directory.Exists(dir))
            {
                throw CliFailure.Of(ExitCodes.Usage, $"--unit-dir {dir}: not an existing folder given by its absolute path", "create it or give systemd's unit folder");
            }

            var command = c.Value(tool) ?? ThisTool();
            if (command.Any(char.IsControl) || !Path.IsPathRooted(command.TrimStart('"')))
            {
                throw CliFailure.Of(ExitCodes.Usage, "--tool: give the command as an absolute path on one line", "e.g. --tool /usr/local/bin/rebootless");
            }

            // systemd expands % specifiers in ExecStart: a literal % is written %%.
            var text = Shipped().Replace("ExecStart=" + ShippedCommand + " ", "ExecStart=" + command.Replace("%", "%%", StringComparison.Ordinal) + " ", StringComparison.Ordinal);
            var path = Path.Combine(dir, UnitName);
            var existing = new FileInfo(path);
            if (existing.LinkTarget is not null || (existing.Exists && existing.Attributes.HasFlag(FileAttributes.Directory)) || Directory.Exists(path))
            {
                // A masked unit is a link to /dev/null: writing through it would change what it points to.
                throw CliFailure.Of(ExitCodes.Usage, $"{path} is {(existing.LinkTarget is { } target ? $"a link to {target} (a masked unit?)" : "not a file")}; nothing was written",
                    $"systemctl unmask {UnitName}, or remove it, then install again");
            }

            var changed = !existing.Exists || File.ReadAllText(path) != text;
            if (changed)
            {
                // Written beside it and renamed over it: never through whatever is at the path, never half written.
                StoreFiles.WriteAtomically(path, System.Text.Encoding.UTF8.GetBytes(text), mode: Libc.Mode0644);
            }

            Systemctl(user, "daemon-reload");
            var enable = !c.Value(noEnable);
            if (enable)
            {
                Systemctl(user, "enable", UnitName);
            }

            if (c.Json)
            {
                CliOutput.WriteJson(new InstallUnitOutput(path, command, changed, enable), CliJson.Default.InstallUnitOutput);
            }
            else
            {
                Console.WriteLine($"{(changed ? "installed" : "unchanged")} {path} (runs {command} resume){(enable ? "; enabled" : "")}");
            }

            return ExitCodes.Ok;
        });
        return cmd;
    }

    /// <summary>The unit as shipped (its ExecStart names <c>/usr/local/bin/rebootless</c>).</summary>
    internal static string Shipped()
    {
        using var stream = typeof(InstallUnitCommand).Assembly.GetManifestResourceStream(UnitName)
            ?? throw new InvalidOperationException($"the tool was built without its {UnitName}");
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    }

    /// <summary>This tool as it was started: its own binary, or the dotnet host and the tool's dll (quoted where needed).</summary>
    private static string ThisTool()
    {
        // Started by the dotnet host, the first argument is the tool's dll (a native or apphost binary is its own command).
        // Not Assembly.Location: it is empty in a single-file or native executable.
        var process = Environment.ProcessPath ?? ShippedCommand;
        var dll = Environment.GetCommandLineArgs() is [{ Length: > 0 } first, ..] ? Path.GetFullPath(first) : "";
        return Path.GetFileName(process) == "dotnet" && dll.EndsWith(".dll", StringComparison.Ordinal) ? Quote(process) + " " + Quote(dll) : Quote(process);
    }

    private static string Quote(string path) => path.Any(char.IsWhiteSpace) ? "\"" + path + "\"" : path;

    private static string UserUnitDirectory() =>
        Path.Combine(Environment.GetEnvironmentVariable("XDG_CONFIG_HOME") is { Length: > 0 } config ? config
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".config"), "systemd", "user");

    private static void Systemctl(bool user, params string[] args)
    {
        var run = ProcessRunner.Run("systemctl", user ? ["--user", .. args] : args, TimeSpan.FromSeconds(60));
        if (run.ExitCode != 0 || run.TimedOut)
        {
            throw CliFailure.Of(ExitCodes.SystemdUnavailable, $"systemctl {(user ? "--user " : "")}{string.Join(' ', args)} failed"
                + (run.TimedOut ? " (no answer within 60 s)" : $" (exit {run.ExitCode}): {run.Stderr.Trim()}"), "is systemd running here?");
        }
    }
}
