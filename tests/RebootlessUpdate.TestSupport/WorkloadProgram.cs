using System.Security.Cryptography;

namespace RebootlessUpdate.TestSupport;

/// <summary>Compiles tests/workloads/rebootless-workload.c once per content (cached in /tmp).</summary>
public static class WorkloadProgram
{
    private static readonly Lazy<string> Built = new(Build);

    /// <summary>Path of the compiled workload binary.</summary>
    public static string Path => Built.Value;

    private static string Build()
    {
        var source = System.IO.Path.Combine(Testbed.RepositoryRoot, "tests", "workloads", "rebootless-workload.c");
        var hash = Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(source)))[..16];
        var binary = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"rebootless-workload-{hash}");
        if (!File.Exists(binary))
        {
            var tmp = binary + $".{Environment.ProcessId}";
            var result = ProcessRunner.Run("gcc", ["-O2", "-Wall", "-Wextra", "-Werror", "-pthread", "-o", tmp, source], TimeSpan.FromMinutes(2));
            if (result.ExitCode != 0)
            {
                throw new InvalidOperationException($"cannot compile the workload: {result}");
            }

            File.Move(tmp, binary, overwrite: true);
        }

        return binary;
    }
}
