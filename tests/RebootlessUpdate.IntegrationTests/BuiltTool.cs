using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests;

/// <summary>The `rebootless` tool as this checkout built it (run with `dotnet PATH`).</summary>
internal static class BuiltTool
{
    /// <summary>The build configuration of the tests (Debug or Release): the tool and the samples are taken from the same.</summary>
    public static string Configuration =>
        System.IO.Path.GetFileName(System.IO.Path.GetDirectoryName(System.IO.Path.GetDirectoryName(typeof(BuiltTool).Assembly.Location))!);

    /// <summary>The tool's dll in the same configuration as the tests; a missing build is reported through <see cref="Testbed.Missing"/>.</summary>
    public static string Path
    {
        get
        {
            var tool = System.IO.Path.Combine(Testbed.RepositoryRoot, "src", "RebootlessUpdate.Cli", "bin", Configuration, "net10.0", "rebootless.dll");
            if (!File.Exists(tool))
            {
                Testbed.Missing($"the tool is not built at {tool}: run dotnet build RebootlessUpdate.sln");
            }

            return tool;
        }
    }
}
