using System.Text.Json;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Cli;

/// <summary>
/// The tool as a platform team installs it: packed into a temporary feed, installed with `dotnet tool install`
/// (no --prerelease), then run as installed: its version, its contract for bad input, and a real rehearsal.
/// </summary>
[NonParallelizable]
public class ToolPackageTests
{
    private string _root = null!;

    [SetUp]
    public void SetUp() => _root = Directory.CreateTempSubdirectory("rebootless-tool-package-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(_root, recursive: true);

    [Test]
    public void The_packed_tool_installs_without_prerelease_carries_only_linux_natives_and_rehearses_a_real_process()
    {
        var testbed = Testbed.Require();
        Testbed.RequireRoot();
        var feed = Directory.CreateDirectory(Path.Combine(_root, "feed")).FullName;
        var project = Path.Combine(Testbed.RepositoryRoot, "src", "RebootlessUpdate.Cli", "RebootlessUpdate.Cli.csproj");
        var pack = ProcessRunner.Run("dotnet", ["pack", project, "-c", BuiltTool.Configuration, "-o", feed, "-nologo"], TimeSpan.FromMinutes(5));
        Assert.That(pack.ExitCode, Is.Zero, pack.ToString());
        Assert.That(pack.Output, Does.Not.Contain(": warning "), pack.ToString());
        var top = Directory.GetFiles(feed, "RebootlessUpdate.Cli.*.nupkg").Select(Path.GetFileName).Single(f => char.IsAsciiDigit(f!["RebootlessUpdate.Cli.".Length]))!;
        var version = top["RebootlessUpdate.Cli.".Length..^".nupkg".Length];
        Assert.That(version, Does.Match(@"^\d+\.\d+\.\d+$"), "a stable version");

        // Its own package folder and tool path: the shared NuGet cache must neither serve nor keep this build.
        var bin = Path.Combine(_root, "bin");
        var install = ProcessRunner.Run("env", ["-C", _root, $"NUGET_PACKAGES={Path.Combine(_root, "packages")}", "dotnet", "tool", "install", "RebootlessUpdate.Cli",
            "--version", version, "--tool-path", bin, "--add-source", feed], TimeSpan.FromMinutes(5));
        Assert.That(install.ExitCode, Is.Zero, install.ToString());
        var tool = Path.Combine(bin, "rebootless");
        var natives = Directory.GetFiles(Path.Combine(bin, ".store"), "*.so", SearchOption.AllDirectories).Select(f => Path.GetRelativePath(bin, f)).ToList();
        TestContext.Out.WriteLine(string.Join('\n', natives));

        var flag = ProcessRunner.Run(tool, ["--version"], TimeSpan.FromMinutes(1));
        var bad = ProcessRunner.Run(tool, ["rehearse", "--pid", "abc"], TimeSpan.FromMinutes(1));
        Assert.Multiple(() =>
        {
            Assert.That(natives, Is.Not.Empty.And.All.Not.Match("android|ios|osx|tvos|win"), "only Linux native libraries");
            Assert.That(flag.Output, Does.StartWith(version + "+").Or.EqualTo(version + "\n"));
            Assert.That(bad.ExitCode, Is.EqualTo(2));
            Assert.That(bad.Output, Is.Empty);
            Assert.That(bad.Error.TrimEnd().Split('\n'), Has.Length.EqualTo(1).And.All.StartsWith("rebootless: "));
        });

        using var w = Workload.Start(Path.Combine(_root, "w"));
        var store = Directory.CreateDirectory(Path.Combine(_root, "store")).FullName;
        var rehearse = ProcessRunner.Run(tool, ["rehearse", "--pid", w.RootPid.ToString(), "--store", store, "--criu", testbed.Criu, "--json"], TimeSpan.FromMinutes(2));
        TestContext.Out.WriteLine(rehearse.ToString());
        Assert.That(rehearse.ExitCode, Is.Zero, rehearse.ToString());
        using var report = JsonDocument.Parse(rehearse.Output);
        w.RootPid = report.RootElement.GetProperty("targets")[0].GetProperty("restoredPid").GetInt32();
        var before = w.ReadCounter();
        Workload.WaitFor(() => w.ReadCounter() > before + 2 ? 1 : 0, "the workload rehearsed by the installed tool to count on");
    }
}
