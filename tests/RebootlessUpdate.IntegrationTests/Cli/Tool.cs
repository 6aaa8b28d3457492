using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Cli;

/// <summary>Runs the built `rebootless` tool, as root or as nobody, with the environment it should see.</summary>
internal static class Tool
{
    public static string Path => BuiltTool.Path;

    /// <summary>Runs the tool without the testbed's REBOOTLESS_* variables (tests that want them set them).</summary>
    public static ProcessResult Run(params string[] args) => RunWith([], args);

    /// <summary>Runs the tool with <paramref name="environment"/> (NAME=value) added to a clean REBOOTLESS_* environment.</summary>
    public static ProcessResult RunWith(string[] environment, params string[] args) =>
        ProcessRunner.Run("env", [.. Unset, .. environment, "dotnet", Path, .. args], TimeSpan.FromMinutes(2));

    public static ProcessResult RunAsNobody(params string[] args) =>
        ProcessRunner.Run("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "env", .. Unset, "DOTNET_CLI_HOME=/tmp", "dotnet", Path, .. args],
            TimeSpan.FromMinutes(2));

    private static readonly string[] Unset = ["-u", "REBOOTLESS_CRIU", "-u", "REBOOTLESS_STORE", "-u", "REBOOTLESS_CONFIG"];
}
