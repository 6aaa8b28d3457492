using System.Diagnostics;
using RebootlessUpdate.Kexec;

namespace RebootlessUpdate.VmAgent.Kexec;

/// <summary>
/// Results of the kexec guest commands: <c>key=value</c> lines in a file under
/// /job that the host test reads, plus full messages in a second file.
/// </summary>
internal sealed class KexecResults(string directory, string name)
{
    private readonly string _file = Path.Combine(directory, name + ".results");
    private readonly string _log = Path.Combine(directory, name + ".log");

    public void Set(string key, object? value)
    {
        var line = $"{key}={value}";
        Console.WriteLine($"kexec-agent: {line}");
        File.AppendAllText(_file, line + "\n");
    }

    public void Log(string text)
    {
        Console.WriteLine($"kexec-agent: {text}");
        File.AppendAllText(_log, text + "\n");
    }

    public static string Loaded() => File.ReadAllText("/sys/kernel/kexec_loaded").Trim();

    /// <summary>Runs <paramref name="action"/>; records "ok" and its time, or "Reason/errno" of the KexecException.</summary>
    public async Task Try(string key, Func<Task> action)
    {
        var sw = Stopwatch.StartNew();
        try
        {
            await action();
            Set(key, "ok");
            Set(key + ".ms", sw.ElapsedMilliseconds);
        }
        catch (KexecException e)
        {
            Set(key, $"{e.Reason}/{e.Errno}");
            Log($"{key}: {e.Message}");
        }
    }
}
