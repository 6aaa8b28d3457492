using System.Globalization;
using System.Text.Json;
using RebootlessUpdate.Processes;

namespace RebootlessUpdate.Targets;

/// <summary>What <c>podman container inspect</c> says of a container.</summary>
/// <param name="Id">Its full id.</param>
/// <param name="Name">Its name.</param>
/// <param name="Status">Podman's state: <c>running</c>, <c>exited</c>, <c>configured</c>, <c>created</c>, <c>paused</c>, ...</param>
/// <param name="Pid">Its init's pid on this host (0 when it does not run).</param>
/// <param name="RestoredAt">When podman last restored it from a checkpoint, if ever.</param>
internal sealed record PodmanState(string Id, string Name, string Status, int Pid, DateTimeOffset? RestoredAt)
{
    public bool Running => Status == "running";

    /// <summary>Reads the first container of <c>podman container inspect</c>'s JSON array.</summary>
    /// <exception cref="InvalidDataException">Not the JSON podman writes.</exception>
    internal static PodmanState Parse(string json)
    {
        try
        {
            using var doc = JsonDocument.Parse(json);
            var c = doc.RootElement.ValueKind == JsonValueKind.Array && doc.RootElement.GetArrayLength() > 0
                ? doc.RootElement[0]
                : throw new InvalidDataException("podman inspect answered no container");
            var state = c.GetProperty("State");
            DateTimeOffset? restored = state.TryGetProperty(nameof(RestoredAt), out var at) && at.ValueKind == JsonValueKind.String
                && DateTimeOffset.TryParse(at.GetString(), CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal, out var when) && when.Year > 1
                ? when
                : null;
            // This record's names are podman's own.
            return new PodmanState(c.GetProperty(nameof(Id)).GetString()!, c.GetProperty(nameof(Name)).GetString()!.TrimStart('/'),
                state.GetProperty(nameof(Status)).GetString()!, state.TryGetProperty(nameof(Pid), out var pid) ? pid.GetInt32() : 0, restored);
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
        {
            throw new InvalidDataException($"podman inspect answered something else than a container's JSON: {e.Message}", e);
        }
    }
}

/// <summary>Runs podman for the podman targets: the one place that knows its command lines.</summary>
internal sealed class PodmanCli(string binary, TimeSpan timeout)
{
    private static readonly TimeSpan InspectTimeout = TimeSpan.FromSeconds(60);

    public string Binary => binary;

    /// <summary>The container named <paramref name="nameOrId"/>, or null when podman does not know it.</summary>
    /// <exception cref="InvalidOperationException">podman cannot be run or failed otherwise.</exception>
    public PodmanState? Inspect(string nameOrId)
    {
        var run = Run(["container", "inspect", "--format", "json", "--", nameOrId], InspectTimeout);
        if (run.ExitCode != 0 && !run.TimedOut && run.Stderr.Contains("no such container", StringComparison.OrdinalIgnoreCase))
        {
            return null;
        }

        Check(run, "container inspect " + nameOrId, InspectTimeout);
        try
        {
            return PodmanState.Parse(run.Stdout);
        }
        catch (InvalidDataException e)
        {
            throw new InvalidOperationException(e.Message, e);
        }
    }

    /// <summary>Checkpoints <paramref name="id"/> into the tar <paramref name="export"/>; podman ends the container.</summary>
    public ToolRun Checkpoint(string id, string export, bool tcpEstablished, bool fileLocks, CancellationToken cancellationToken)
    {
        List<string> args = ["container", "checkpoint", "--export", export, "--compress", "none", "--ignore-volumes"];
        AddFlags(args, tcpEstablished, fileLocks);
        args.AddRange(["--", id]);
        return Check(Run(args, timeout, cancellationToken), "container checkpoint " + id, timeout, "dump.log");
    }

    /// <summary>Removes podman's record of a container that does not run (left by the kernel it ran on).</summary>
    public void Remove(string id) => Check(Run(["container", "rm", "--", id], InspectTimeout), "container rm " + id, InspectTimeout);

    /// <summary>
    /// Restores the container of <paramref name="export"/> under its own id. With <paramref name="scope"/>, podman runs
    /// in that new systemd scope: its conmon stays where podman starts it, and must not stay in the caller's unit
    /// (a resume unit's cgroup is emptied when the unit stops).
    /// </summary>
    public ToolRun Restore(string export, bool tcpEstablished, bool fileLocks, string? scope, CancellationToken cancellationToken)
    {
        List<string> args = ["container", "restore", "--import", export, "--ignore-volumes"];
        AddFlags(args, tcpEstablished, fileLocks);
        var run = scope is null
            ? Run(args, timeout, cancellationToken)
            : Tool("systemd-run", ["--scope", "--quiet", "--collect", "--unit", scope, "--", binary, .. args], timeout, cancellationToken);
        return Check(run, "container restore --import " + export, timeout, "restore.log");
    }

    private static void AddFlags(List<string> args, bool tcpEstablished, bool fileLocks)
    {
        if (tcpEstablished)
        {
            args.Add("--tcp-established");
        }

        if (fileLocks)
        {
            args.Add("--file-locks");
        }
    }

    private ToolRun Run(IReadOnlyList<string> args, TimeSpan limit, CancellationToken cancellationToken = default) =>
        Tool(binary, args, limit, cancellationToken);

    private static ToolRun Tool(string file, IReadOnlyList<string> args, TimeSpan limit, CancellationToken cancellationToken)
    {
        try
        {
            return ProcessRunner.Run(file, args, limit, cancellationToken);
        }
        catch (ToolNotStartedException e)
        {
            throw new InvalidOperationException($"{file} cannot be run ({e.InnerException?.Message ?? e.Message}); install it or give its path", e);
        }
    }

    private static ToolRun Check(ToolRun run, string what, TimeSpan limit, string? criuLog = null)
    {
        if (run.TimedOut)
        {
            throw new InvalidOperationException($"podman {what} did not finish within {limit.TotalSeconds:0} s and was killed");
        }

        if (run.ExitCode != 0)
        {
            throw new InvalidOperationException($"podman {what} failed (exit {run.ExitCode}): {Why(run)}"
                + (criuLog is null ? "" : CriuErrors(run, criuLog)));
        }

        return run;
    }

    /// <summary>
    /// The error lines of the CRIU log the OCI runtime left in the work folder podman names (<c>--work-path DIR</c> in
    /// its error), as "; CRIU's log (PATH) says: ...", or nothing when there is none to read.
    /// </summary>
    internal static string CriuErrors(ToolRun run, string logName)
    {
        var match = System.Text.RegularExpressions.Regex.Match(run.Stderr, @"--work-path (/\S+)");
        if (!match.Success)
        {
            return "";
        }

        var log = Path.Combine(match.Groups[1].Value, logName);
        try
        {
            var errors = File.ReadLines(log).Where(l => l.Contains("Error", StringComparison.Ordinal)).TakeLast(3).Select(l => l.Trim()).ToList();
            return errors.Count == 0 ? $"; CRIU's log: {log}" : $"; CRIU's log ({log}) says: {string.Join(" | ", errors)}";
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return "";
        }
    }

    /// <summary>Podman's own error line (it logs warnings before it), else the first line it wrote.</summary>
    internal static string Why(ToolRun run) =>
        run.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .LastOrDefault(l => l.StartsWith("Error:", StringComparison.Ordinal)) is { } error ? error["Error:".Length..].Trim() : run.FirstLine;
}
