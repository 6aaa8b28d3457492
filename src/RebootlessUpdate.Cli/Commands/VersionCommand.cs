using System.CommandLine;
using System.Reflection;
using RebootlessUpdate.Criu;

namespace RebootlessUpdate.Cli.Commands;

/// <summary><c>rebootless version</c>: the same version as <c>--version</c>, and with --json also the criu found.</summary>
internal static class VersionCommand
{
    /// <summary>The tool's informational version (e.g. <c>0.2.0+abc123</c>), as <c>--version</c> prints it.</summary>
    public static string ToolVersion =>
        typeof(VersionCommand).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion
        ?? typeof(VersionCommand).Assembly.GetName().Version?.ToString() ?? "unknown";

    public static Command Create()
    {
        var cmd = new Command("version", "Print the tool's version, the criu version it requires and the one it finds.");
        CliOptions.Add(cmd, CliOptions.Criu);
        CliInvocation.SetAction(cmd, async (c, ct) =>
        {
            string? found = null;
            string? problem = null;
            try
            {
                found = (await c.Criu().GetVersionAsync(ct).ConfigureAwait(false)).ToString();
            }
            catch (Exception e) when (e is CriuException or IOException or UnauthorizedAccessException or System.ComponentModel.Win32Exception)
            {
                problem = e.Message;
            }

            if (c.Json)
            {
                CliOutput.WriteJson(new VersionOutput(ToolVersion, RebootlessInfo.MinimumCriuVersion.ToString(), c.Settings.CriuPath, found, problem), CliJson.Default.VersionOutput);
            }
            else
            {
                Console.WriteLine($"rebootless {ToolVersion}");
                Console.WriteLine($"criu: requires >= {RebootlessInfo.MinimumCriuVersion}; {(found is null ? $"{c.Settings.CriuPath}: not usable ({problem})" : $"found {found} ({c.Settings.CriuPath})")}");
            }

            return ExitCodes.Ok;
        });
        return cmd;
    }
}
