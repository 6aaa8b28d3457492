using System.Collections.Immutable;
using System.Diagnostics.CodeAnalysis;
using System.Reflection;
using System.Runtime.InteropServices;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Microsoft.CodeAnalysis.Diagnostics;

namespace RebootlessUpdate.UnitTests.Docs;

/// <summary>
/// Compiles a piece of documentation as a consumer's console app would be compiled: top-level statements, the SDK's
/// implicit usings, nullable on, the highest warning level, against the library's assemblies (not the tool's, not the
/// tests'), with the SDK's own .NET analyzers (CA1416, the platform check, among them).
/// </summary>
internal static class SnippetCompiler
{
    // What `dotnet new console` turns on with <ImplicitUsings>enable</ImplicitUsings>.
    private static readonly string[] ImplicitUsings =
        ["System", "System.Collections.Generic", "System.IO", "System.Linq", "System.Net.Http", "System.Threading", "System.Threading.Tasks"];

    // The library packages and what they bring along; never the tool, the tests or Roslyn itself.
    private static readonly string[] PackageAssemblies =
        ["RebootlessUpdate.dll", "RebootlessUpdate.Criu.dll", "Microsoft.Extensions.*.dll", "Polly.Core.dll", "Google.Protobuf.dll", "Mono.Unix.dll", "System.IO.Hashing.dll"];

    private static readonly Lazy<ImmutableArray<MetadataReference>> References = new(LoadReferences);
    private static readonly Lazy<ImmutableArray<DiagnosticAnalyzer>> Analyzers = new(LoadAnalyzers);

    /// <summary>The warnings and errors of <paramref name="source"/> compiled as a program named <paramref name="name"/>.</summary>
    public static async Task<IReadOnlyList<Diagnostic>> CompileAsync(string source, string name)
    {
        var parse = new CSharpParseOptions(LanguageVersion.Latest);
        var globalUsings = string.Join(Environment.NewLine, ImplicitUsings.Select(u => $"global using global::{u};"));
        var compilation = CSharpCompilation.Create(
            name,
            [CSharpSyntaxTree.ParseText(source, parse, path: name + ".cs"), CSharpSyntaxTree.ParseText(globalUsings, parse, path: "GlobalUsings.g.cs")],
            References.Value,
            new CSharpCompilationOptions(OutputKind.ConsoleApplication, nullableContextOptions: NullableContextOptions.Enable, warningLevel: 9999));
        var diagnostics = await compilation.WithAnalyzers(Analyzers.Value, new AnalyzerOptions([], new BuildProperties())).GetAllDiagnosticsAsync().ConfigureAwait(false);
        return [.. diagnostics.Where(d => d.Severity >= DiagnosticSeverity.Warning && !d.IsSuppressed)];
    }

    /// <summary>The installation the tests run on: <c>dotnet/shared/Microsoft.NETCore.App/VERSION</c> is the runtime's folder.</summary>
    private static string DotnetRoot => Path.GetFullPath(Path.Combine(RuntimeEnvironment.GetRuntimeDirectory(), "..", "..", ".."));

    /// <summary>What an app builds against: the reference pack of net10.0 (as the SDK does), then the library packages.</summary>
    private static ImmutableArray<MetadataReference> LoadReferences()
    {
        var framework = Newest(Path.Combine(DotnetRoot, "packs", "Microsoft.NETCore.App.Ref"), v => Path.Combine(v, "ref", "net10.0"), "System.Runtime.dll");
        var packages = PackageAssemblies.SelectMany(p => Directory.GetFiles(AppContext.BaseDirectory, p));
        return [.. Directory.GetFiles(framework, "*.dll").Concat(packages).Select(f => (MetadataReference)MetadataReference.CreateFromFile(f))];
    }

    /// <summary>The .NET analyzers of the newest SDK (<c>dotnet/sdk/VERSION/Sdks/Microsoft.NET.Sdk/analyzers</c>).</summary>
    private static ImmutableArray<DiagnosticAnalyzer> LoadAnalyzers()
    {
        var folder = Newest(Path.Combine(DotnetRoot, "sdk"), v => Path.Combine(v, "Sdks", "Microsoft.NET.Sdk", "analyzers"), "Microsoft.CodeAnalysis.NetAnalyzers.dll");
        var loader = new AnalyzerLoader();
        return [.. new[] { "Microsoft.CodeAnalysis.NetAnalyzers.dll", "Microsoft.CodeAnalysis.CSharp.NetAnalyzers.dll" }
            .SelectMany(f => new AnalyzerFileReference(Path.Combine(folder, f), loader).GetAnalyzers(LanguageNames.CSharp))];
    }

    /// <summary>The folder <paramref name="inside"/> the highest version under <paramref name="versions"/> that holds <paramref name="file"/>.</summary>
    private static string Newest(string versions, Func<string, string> inside, string file) =>
        Directory.GetDirectories(versions)
            .OrderByDescending(v => Version.TryParse(Path.GetFileName(v).Split('-')[0], out var version) ? version : new Version())
            .Select(inside)
            .FirstOrDefault(d => File.Exists(Path.Combine(d, file)))
        ?? throw new InvalidOperationException($"no version under {versions} has {file}");

    private sealed class AnalyzerLoader : IAnalyzerAssemblyLoader
    {
        public void AddDependencyLocation(string fullPath)
        {
        }

        public Assembly LoadFromPath(string fullPath) => Assembly.LoadFrom(fullPath);
    }

    /// <summary>The MSBuild properties the SDK hands the analyzers of a net10.0 console app.</summary>
    private sealed class BuildProperties : AnalyzerConfigOptionsProvider
    {
        private static readonly Options Values = new(new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["build_property.TargetFramework"] = "net10.0",
            ["build_property.TargetFrameworkIdentifier"] = ".NETCoreApp",
            ["build_property.TargetFrameworkVersion"] = "v10.0",
            ["build_property.OutputType"] = "Exe",
        });

        public override AnalyzerConfigOptions GlobalOptions => Values;

        public override AnalyzerConfigOptions GetOptions(SyntaxTree tree) => Values;

        public override AnalyzerConfigOptions GetOptions(AdditionalText textFile) => Values;

        private sealed class Options(Dictionary<string, string> values) : AnalyzerConfigOptions
        {
            public override bool TryGetValue(string key, [NotNullWhen(true)] out string? value) => values.TryGetValue(key, out value);
        }
    }
}
