using System.Diagnostics;
using System.Globalization;
using RebootlessUpdate.Targets;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Pipeline;

/// <summary><see cref="TreeKill"/> against a tree that forks all the time, at every level: no process of it may run on.</summary>
[NonParallelizable]
public class TreeKillTests
{
    [Test]
    public void A_tree_that_forks_at_every_level_is_killed_to_the_last_process()
    {
        var marker = "1000." + Environment.ProcessId.ToString(CultureInfo.InvariantCulture);
        // Each level starts the next, three sleepers, and forks /bin/true without pause; 6 levels deep.
        var script = $"d=$1; if [ $d -gt 0 ]; then bash -c \"$0\" \"$0\" $((d-1)) & fi; for i in 1 2 3; do sleep {marker} & done; while :; do /bin/true; done";
        var start = new ProcessStartInfo("bash") { UseShellExecute = false };
        foreach (var a in (string[])["-c", script, script, "6"])
        {
            start.ArgumentList.Add(a);
        }

        using var root = Process.Start(start)!;
        try
        {
            // 7 levels (each a bash whose command line holds the marker) and their 21 sleepers: all of them, or the
            // count below races the deepest level's start.
            Workload.WaitFor(() => Survivors(marker).Count >= 7 + 21 ? 1 : 0, "every level to start its sleepers", 30);
            var identity = ProcessIdentity.Of(root.Id)!.Value;

            var killed = TreeKill.Kill(identity);

            Thread.Sleep(500);
            var left = Survivors(marker);
            TestContext.Out.WriteLine($"killed {killed}; left {left.Count}");
            Assert.Multiple(() =>
            {
                Assert.That(killed, Is.GreaterThanOrEqualTo(7 + 21));
                Assert.That(left, Is.Empty, "no sleeper or level survives");
                Assert.That(root.WaitForExit(TimeSpan.FromSeconds(10)), Is.True);
            });
        }
        finally
        {
            foreach (var pid in Survivors(marker))
            {
                _ = Mono.Unix.Native.Syscall.kill(pid, Mono.Unix.Native.Signum.SIGKILL);
            }

            if (!root.HasExited)
            {
                root.Kill(entireProcessTree: true);
            }
        }
    }

    /// <summary>Live processes whose command line holds <paramref name="marker"/>: the sleepers and every level's bash.</summary>
    private static List<int> Survivors(string marker)
    {
        var found = new List<int>();
        foreach (var dir in Directory.GetDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), NumberStyles.None, CultureInfo.InvariantCulture, out var pid) || pid == Environment.ProcessId)
            {
                continue;
            }

            try
            {
                if (File.ReadAllText(Path.Combine(dir, "cmdline")).Contains(marker, StringComparison.Ordinal) && ProcessIdentity.Of(pid) is not null)
                {
                    found.Add(pid);
                }
            }
            catch (IOException)
            {
            }
            catch (UnauthorizedAccessException)
            {
            }
        }

        return found;
    }
}
