using System.Text.Json.Serialization;
using RebootlessUpdate.Pipeline;

namespace RebootlessUpdate.Cli;

internal sealed record CheckLine(string Name, bool Ok, string Detail);

internal sealed record CheckOutput(bool Ready, string? CriuVersion, IReadOnlyList<CheckLine> Checks, int ExitCode);

internal sealed record PlanTarget(string Target, int RootPid, int Processes, bool ShellJob, string? FreezeCgroup);

internal sealed record PlanOutput(IReadOnlyList<PlanTarget> Targets, int Processes, long MemoryBytes, long RequiredBytes, long FreeBytes, bool Fits, string Store)
{
    public int ExitCode => Fits ? ExitCodes.Ok : ExitCodes.StoreFull;
}

internal sealed record SetLine(string SetId, bool Sealed, DateTimeOffset CreatedAt, long? TotalBytes)
{
    public string? Problem { get; init; }
}

/// <summary>What <c>images rm</c> did: whether images were deleted, and what an unfinished run gave up.</summary>
internal sealed record RemoveOutput(string SetId, bool Deleted, string? GaveUp);

/// <summary>One journal in `status`: its record, or why it cannot be read; <c>Advice</c> when it needs an operator.</summary>
internal sealed record StatusLine(string SetId, string Kind, bool Readable, bool Unfinished, string? Problem, string? Advice, JournalRecord? Journal);

internal sealed record VerifyOutput(string SetId, bool Intact, long BytesHashed, IReadOnlyList<string> Issues)
{
    public int ExitCode => Intact ? ExitCodes.Ok : ExitCodes.Failed;
}

/// <summary>What <c>install-unit</c> wrote and whether it enabled the unit.</summary>
internal sealed record InstallUnitOutput(string UnitFile, string Command, bool Changed, bool Enabled);

internal sealed record VersionOutput(string Version, string RequiresCriu, string CriuPath, string? CriuVersion, string? CriuProblem);

[JsonSourceGenerationOptions(WriteIndented = true, PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase, UseStringEnumConverter = true,
    DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull, Converters = [typeof(SecondsJsonConverter)])]
[JsonSerializable(typeof(CheckOutput))]
[JsonSerializable(typeof(PlanOutput))]
[JsonSerializable(typeof(List<SetLine>))]
[JsonSerializable(typeof(RemoveOutput))]
[JsonSerializable(typeof(VerifyOutput))]
[JsonSerializable(typeof(VersionOutput))]
[JsonSerializable(typeof(InstallUnitOutput))]
[JsonSerializable(typeof(List<StatusLine>))]
internal sealed partial class CliJson : JsonSerializerContext;
