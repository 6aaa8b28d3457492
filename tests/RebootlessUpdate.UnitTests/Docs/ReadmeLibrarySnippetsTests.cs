using System.Text.RegularExpressions;
using Microsoft.CodeAnalysis;

namespace RebootlessUpdate.UnitTests.Docs;

/// <summary>
/// The README's "Using the library" section is the only copy of its snippets: each C# block is compiled here as a
/// console app of its own against the library, and any warning (CA1416 included) or error fails the test.
/// </summary>
public partial class ReadmeLibrarySnippetsTests
{
    private const string Section = "## Using the library";

    [Test]
    public async Task Every_snippet_of_the_library_section_compiles_without_a_warning()
    {
        var snippets = LibrarySnippets();

        Assert.That(snippets, Has.Count.GreaterThanOrEqualTo(4), "DI and options, update and resume, custom stages, progress and cancellation");
        var failures = new List<string>();
        foreach (var (line, code) in snippets)
        {
            var diagnostics = await SnippetCompiler.CompileAsync(code, $"ReadmeSnippetAtLine{line}");
            failures.AddRange(diagnostics.Select(d => $"README.md snippet at line {line}: {Describe(d)}"));
        }

        Assert.That(failures, Is.Empty);
    }

    [Test]
    public async Task A_snippet_not_marked_linux_only_fails_with_CA1416()
    {
        // The check is only worth something if the platform analyzer runs: without the attribute it must object.
        var (line, code) = LibrarySnippets()[0];
        const string Attribute = "[assembly: SupportedOSPlatform(\"linux\")]";
        Assert.That(code, Does.Contain(Attribute), $"the snippet at line {line} shows how to mark the app");

        var diagnostics = await SnippetCompiler.CompileAsync(code.Replace(Attribute, string.Empty, StringComparison.Ordinal), "NotLinuxOnly");

        Assert.That(diagnostics.Select(d => d.Id), Has.Member("CA1416"), string.Join(Environment.NewLine, diagnostics.Select(Describe)));
    }

    /// <summary>The C# blocks between the section's heading and the next top-level heading, with the README line each starts on.</summary>
    private static List<(int Line, string Code)> LibrarySnippets()
    {
        var readme = File.ReadAllText(Path.Combine(RepositoryRoot(), "README.md")).ReplaceLineEndings("\n");
        var start = readme.IndexOf("\n" + Section + "\n", StringComparison.Ordinal);
        Assert.That(start, Is.GreaterThanOrEqualTo(0), $"README.md has a '{Section}' section");
        var end = readme.IndexOf("\n## ", start + Section.Length, StringComparison.Ordinal);
        var section = readme[start..(end < 0 ? readme.Length : end)];
        var firstLine = readme[..start].Count(c => c == '\n') + 1;
        return [.. CSharpBlock().Matches(section).Select(m => (firstLine + section[..m.Index].Count(c => c == '\n') + 1, m.Groups["code"].Value))];
    }

    private static string RepositoryRoot()
    {
        for (var dir = new DirectoryInfo(TestContext.CurrentContext.TestDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "RebootlessUpdate.sln")) && File.Exists(Path.Combine(dir.FullName, "README.md")))
            {
                return dir.FullName;
            }
        }

        throw new InvalidOperationException($"no repository root above {TestContext.CurrentContext.TestDirectory}");
    }

    private static string Describe(Diagnostic d) =>
        $"{d.Id} {d.Severity} at snippet line {d.Location.GetLineSpan().StartLinePosition.Line + 1}: {d.GetMessage(System.Globalization.CultureInfo.InvariantCulture)}";

    [GeneratedRegex(@"^```csharp\n(?<code>.*?)^```$", RegexOptions.Singleline | RegexOptions.Multiline)]
    private static partial Regex CSharpBlock();
}
