namespace RebootlessUpdate.VmTests;

/// <summary>Files the guest agent leaves in a job folder: <c>NAME.results</c> (key=value lines) and plain files.</summary>
internal static class AgentResults
{
    /// <summary>The key=value lines of <c>NAME.results</c>; empty when the guest never wrote it.</summary>
    public static Dictionary<string, string> Results(string job, string name)
    {
        var path = Path.Combine(job, name + ".results");
        var d = new Dictionary<string, string>(StringComparer.Ordinal);
        if (File.Exists(path))
        {
            foreach (var line in File.ReadAllLines(path))
            {
                var eq = line.IndexOf('=', StringComparison.Ordinal);
                d[line[..eq]] = line[(eq + 1)..];
            }
        }

        return d;
    }

    /// <summary>A file of the job folder, or "(NAME missing)".</summary>
    public static string Read(string job, string name) =>
        File.Exists(Path.Combine(job, name)) ? File.ReadAllText(Path.Combine(job, name)) : $"({name} missing)";
}
