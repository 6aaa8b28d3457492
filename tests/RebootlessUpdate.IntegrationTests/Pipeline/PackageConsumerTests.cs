using System.Globalization;
using System.Text.RegularExpressions;
using System.Xml.Linq;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Pipeline;

/// <summary>
/// The packages as a new user meets them: the libraries packed into a temporary folder feed, and
/// tests/consumer/Program.cs built in a temporary folder against them only (stable versions, no
/// project reference, warnings as errors), then run as root against real criu: it rehearses a real
/// workload through <c>AddRebootlessUpdate</c> and cancels a dump of it at post-dump.
/// </summary>
[NonParallelizable]
public partial class PackageConsumerTests
{
    private static readonly TimeSpan DotnetTimeout = TimeSpan.FromMinutes(5);
    private static readonly string[] Libraries = ["RebootlessUpdate.Criu", "RebootlessUpdate"];
    private string _root = null!;
    private string _feed = null!;
    private string _version = null!;

    [OneTimeSetUp]
    public void PackOnce()
    {
        _root = Directory.CreateTempSubdirectory("rebootless-consumer-").FullName;
        _feed = Directory.CreateDirectory(Path.Combine(_root, "feed")).FullName;
        foreach (var library in Libraries)
        {
            var project = Path.Combine(Testbed.RepositoryRoot, "src", library, library + ".csproj");
            var pack = ProcessRunner.Run("dotnet", ["pack", project, "-c", BuiltTool.Configuration, "-o", _feed], DotnetTimeout);
            Assert.That(pack.ExitCode, Is.Zero, $"dotnet pack {library} failed:\n{pack}");
            Assert.That(pack.Output, Does.Not.Contain(": warning "), $"dotnet pack {library} warned:\n{pack}");
        }

        var versions = Libraries.Select(l => PackedVersion(_feed, l)).Distinct().ToList();
        Assert.That(versions, Has.Count.EqualTo(1), "the libraries share one version");
        _version = versions[0];
    }

    [OneTimeTearDown]
    public void CleanUp()
    {
        if (_root is not null)
        {
            Directory.Delete(_root, recursive: true);
        }
    }

    /// <summary>The version of <paramref name="id"/>'s package in <paramref name="feed"/> (exactly one must be there).</summary>
    private static string PackedVersion(string feed, string id)
    {
        var found = Directory.GetFiles(feed, id + ".*.nupkg")
            .Select(f => Path.GetFileName(f)[(id.Length + 1)..^".nupkg".Length])
            .Where(v => char.IsAsciiDigit(v[0]))
            .ToList();
        Assert.That(found, Has.Count.EqualTo(1), $"one {id} package in the feed: {string.Join(", ", found)}");
        return found[0];
    }

    private string Packages => Path.Combine(_root, "packages");

    /// <summary>
    /// Runs dotnet in <paramref name="directory"/> with a package folder of its own: the shared NuGet
    /// cache would keep (and hand back) whichever build of this version it saw first, and must not receive this one.
    /// </summary>
    private ProcessResult ConsumerDotnet(string directory, params string[] args) =>
        ProcessRunner.Run("env", ["-C", directory, $"NUGET_PACKAGES={Packages}", "dotnet", .. args], DotnetTimeout);

    [Test]
    public void The_packed_libraries_are_stable_versions()
    {
        Assert.That(_version, Does.Match(@"^\d+\.\d+\.\d+$"), "installable without --prerelease");
    }

    [Test]
    public void A_console_app_built_on_the_packages_rehearses_a_real_process_and_cancels_a_dump()
    {
        var testbed = Testbed.Require();
        Testbed.RequireRoot();
        Assert.That(_version, Does.Match(@"^\d+\.\d+\.\d+$"), "the app asks for a stable version");
        var app = Directory.CreateDirectory(Path.Combine(_root, "app")).FullName;
        File.Copy(Path.Combine(Testbed.RepositoryRoot, "tests", "consumer", "Program.cs"), Path.Combine(app, "Program.cs"));
        File.WriteAllText(Path.Combine(app, "Consumer.csproj"), ConsumerProject(_version));
        WriteNuGetConfig(app, _feed);

        var build = ConsumerDotnet(app, "build", "-warnaserror", "-c", "Release");
        Assert.That(build.ExitCode, Is.Zero, $"the consumer does not build:\n{build}");
        Assert.That(build.Output, Does.Not.Contain(": warning ").And.Not.Contain(": error "), build.ToString());
        foreach (var library in Libraries)
        {
            // A package of the same id and version on another source must not have been taken instead.
            var metadata = File.ReadAllText(Path.Combine(Packages, library.ToLowerInvariant(), _version, ".nupkg.metadata"));
            Assert.That(metadata, Does.Contain(_feed), $"{library} {_version} restored from the packed feed");
        }

        using var workload = Workload.Start(Path.Combine(_root, "work"));
        var run = ProcessRunner.Run("dotnet", [Path.Combine(app, "bin", "Release", "net10.0", "Consumer.dll"), testbed.Criu, Path.Combine(_root, "store"),
            workload.RootPid.ToString(CultureInfo.InvariantCulture)], TimeSpan.FromMinutes(2));
        TestContext.Out.WriteLine(run.ToString());

        Assert.That(run.ExitCode, Is.Zero, run.ToString());
        Assert.That(run.Output, Does.Contain("rehearsal: Succeeded"));
        Assert.That(run.Output, Does.Contain("dump: cancelled"));
        workload.RootPid = int.Parse(RestoredPid().Match(run.Output).Groups[1].Value, CultureInfo.InvariantCulture);
        Workload.WaitFor(() => Workload.IsFree(workload.RootPid) ? 1 : 0, "the restored workload to be untraced and running after the cancelled dump");
        var before = workload.ReadCounter();
        Workload.WaitFor(() => workload.ReadCounter() > before + 2 ? 1 : 0, "the workload to count on");
        Assert.That(Workload.CopiesOf(workload.Directory), Is.EqualTo(new[] { workload.RootPid }), "exactly the restored copy runs");
    }

    [GeneratedRegex(@"restored-pid: (\d+)")]
    private static partial Regex RestoredPid();

    /// <summary>A plain net10.0 console app, as `dotnet new console` makes it, with exact stable versions.</summary>
    private static string ConsumerProject(string version) => $"""
        <Project Sdk="Microsoft.NET.Sdk">
          <PropertyGroup>
            <OutputType>Exe</OutputType>
            <TargetFramework>net10.0</TargetFramework>
            <Nullable>enable</Nullable>
            <ImplicitUsings>enable</ImplicitUsings>
          </PropertyGroup>
          <ItemGroup>
            <PackageReference Include="RebootlessUpdate" Version="[{version}]" />
            <PackageReference Include="Microsoft.Extensions.DependencyInjection" Version="10.0.0" />
          </ItemGroup>
        </Project>
        """;

    /// <summary>
    /// The repository's nuget.config (its restore settings; sources come from the machine's own
    /// configuration, which still applies) plus the temporary feed.
    /// </summary>
    private static void WriteNuGetConfig(string app, string feed)
    {
        var config = XDocument.Load(Path.Combine(Testbed.RepositoryRoot, "nuget.config"));
        var sources = config.Root!.Element("packageSources") ?? new XElement("packageSources");
        if (sources.Parent is null)
        {
            config.Root.Add(sources);
        }

        sources.Add(new XElement("add", new XAttribute("key", "rebootless-packed"), new XAttribute("value", feed)));
        config.Save(Path.Combine(app, "nuget.config"));
    }
}
