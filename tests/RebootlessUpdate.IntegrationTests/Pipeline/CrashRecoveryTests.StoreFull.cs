using System.Globalization;
using System.Text.Json;
using Mono.Unix.Native;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Pipeline;

/// <summary>
/// The store fills up at the worst moment through the real tool: the set is sealed, the journal says so, and before the
/// tool lets CRIU end the workload (commit) something else takes every free byte of the store's file system. The tool is
/// stopped at that point by its test hook (REBOOTLESS_STOP_AT), the store is filled, and the tool goes on.
/// </summary>
public partial class CrashRecoveryTests
{
    // where the store fills (its blocks, or its inodes), and what the run does: refuses to seal and resumes the tree in
    // place (exit 10, "store full"), or finishes (the space kept aside pays for the journal's records while CRIU's logs
    // take every byte freed between them; the journal's spare inode and the restore log made at the dump need no new inode)
    [TestCase("dumping/frozen", false, 10, JournalState.RolledBack)] // while CRIU holds the tree, before the manifest is written
    [TestCase("sealed", false, 0, JournalState.Resumed)] // after seal, before commit lets CRIU end the workload
    [TestCase("resuming/restoring", false, 0, JournalState.Resumed)] // once restoring is journaled, before CRIU is asked
    [TestCase("dumping/frozen", true, 10, JournalState.RolledBack)]
    [TestCase("sealed", true, 0, JournalState.Resumed)]
    [TestCase("resuming/restoring", true, 0, JournalState.Resumed)]
    public void A_store_that_fills_during_the_run_leaves_exactly_one_copy_and_a_journal_that_says_so(string stopAt, bool inodes, int exitCode, JournalState end)
    {
        var mount = Directory.CreateDirectory(Path.Combine(_dir, "fs")).FullName;
        var mounted = ProcessRunner.Run("mount", ["-t", "tmpfs", "-o", "size=96m,mode=0700" + (inodes ? ",nr_inodes=400" : ""), "rebootless-test", mount], TimeSpan.FromSeconds(30));
        Assert.That(mounted.ExitCode, Is.Zero, mounted.ToString());
        try
        {
            var store = Directory.CreateDirectory(Path.Combine(mount, "store")).FullName;
            var appDir = Path.Combine(_dir, "app");
            _workload = Workload.StartProgram(appDir, 16);
            var originalPid = _workload.RootPid;

            var run = Task.Run(() => ProcessRunner.Run("env",
                [$"REBOOTLESS_STOP_AT={stopAt}", "REBOOTLESS_TEST_HOOKS=1", "dotnet", _tool, "rehearse", "--pid", Pid(originalPid), "--store", store, "--criu", _testbed.Criu, "--json"],
                TimeSpan.FromMinutes(3)));
            var tool = StoppedTool(store, run);
            var filler = Path.Combine(mount, "filler");
            var filled = inodes ? TakeEveryInode(filler) : Fill(filler);
            TestContext.Out.WriteLine($"tool pid {tool} stopped at {stopAt}; {(inodes ? $"{filled} more files" : $"{filled >> 20} MiB more")} filled the store");
            Assert.That(() => File.WriteAllBytes(Path.Combine(mount, "probe"), new byte[64 << 10]), Throws.InstanceOf<IOException>(), "the store is full");
            File.Delete(Path.Combine(mount, "probe"));
            Assert.That(Syscall.kill(tool, Signum.SIGCONT), Is.Zero);
            var rehearsed = run.Result;
            TestContext.Out.WriteLine($"--- rehearse on a store filled at {stopAt}\n{rehearsed}");

            Assert.That(rehearsed.ExitCode, Is.EqualTo(exitCode), rehearsed.ToString());
            Assert.That(rehearsed.Error, Does.Not.Contain("   at ").And.Not.Contain("Unhandled exception"), "no stack trace");
            if (exitCode != 0)
            {
                Assert.That(rehearsed.Error, Does.Contain("store filled up").And.Contain("free space in the store").And.Contain("every workload runs as before"));
            }

            var journal = UpdateJournal.List(store).Single();
            TestContext.Out.WriteLine("history: " + string.Join(" -> ", journal.History.Select(h => h.State)));
            Assert.That(journal.State, Is.EqualTo(end), "the end was journaled on the full store");
            using (var json = JsonDocument.Parse(rehearsed.Output))
            {
                var outcome = json.RootElement.GetProperty("outcome").GetString();
                Assert.That(outcome, Is.EqualTo(journal.State == JournalState.Resumed ? "Succeeded" : "RolledBack"), "the report and the journal agree");
            }

            var target = journal.Targets.Single();
            _workload.RootPid = target.RestoredPid ?? originalPid;
            Assert.That(Workload.IsRunning(_workload.RootPid), Is.True, $"the journal names a running copy ({target.Phase}, pid {_workload.RootPid})");
            Assert.That(Instances(appDir), Is.EqualTo(1), "exactly one copy of the workload runs");
            Assert.That(_workload.Check(), Does.StartWith("ok"), "with its memory, files, pipe and socket intact");

            // The recommended next step starts no second copy, whether or not the store has room again.
            var resumed = Tool(null, "resume", "--store", store, "--criu", _testbed.Criu, "--json");
            TestContext.Out.WriteLine($"--- resume\n{resumed}");
            Assert.That(resumed.ExitCode, Is.Zero, resumed.ToString());
            Assert.That(Instances(appDir), Is.EqualTo(1), "resume restored nothing a second time");
            if (inodes)
            {
                Directory.Delete(filler, recursive: true);
            }
            else
            {
                File.Delete(filler);
            }

            Assert.That(Tool(null, "resume", "--store", store, "--criu", _testbed.Criu).ExitCode, Is.Zero);
            Assert.That(Instances(appDir), Is.EqualTo(1));
            var before = _workload.ReadCounter();
            Workload.WaitFor(() => _workload.ReadCounter() > before + 2 ? 1 : 0, "the workload to count on");
        }
        finally
        {
            _workload?.Dispose();
            _workload = null;
            ProcessRunner.Run("umount", ["-l", mount], TimeSpan.FromSeconds(30));
        }
    }

    /// <summary>The tool's pid once it has stopped itself: it records its pid in the store lock it holds.</summary>
    private static int StoppedTool(string store, Task<ProcessResult> run)
    {
        var lockFile = Path.Combine(store, ".lock");
        var pid = 0;
        Workload.WaitFor(() =>
        {
            Assert.That(run.IsCompleted, Is.False, () => "the tool ended before it reached the stop point: " + run.Result);
            pid = File.Exists(lockFile) && int.TryParse(ProcessRunner.Run("cat", [lockFile], TimeSpan.FromSeconds(10)).Output.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var p) ? p : 0;
            return pid > 0 && IsStopped(pid) ? 1 : 0;
        }, "the tool to stop itself at its test hook", 120);
        return pid;
    }

    private static bool IsStopped(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            return stat[(stat.LastIndexOf(')') + 2)..].StartsWith('T');
        }
        catch (IOException)
        {
            return false;
        }
    }

    /// <summary>Makes empty files in the new folder <paramref name="folder"/> until the file system has no inode left; returns how many.</summary>
    private static long TakeEveryInode(string folder)
    {
        Directory.CreateDirectory(folder);
        var n = 0L;
        try
        {
            while (true)
            {
                File.WriteAllBytes(Path.Combine(folder, n.ToString(CultureInfo.InvariantCulture)), []);
                n++;
            }
        }
        catch (IOException e) when (e.HResult == 28)
        {
            return n;
        }
    }

    /// <summary>Writes to <paramref name="path"/> until the file system refuses; returns the bytes written.</summary>
    private static long Fill(string path)
    {
        using var filler = new FileStream(path, FileMode.CreateNew);
        var chunk = new byte[64 << 10];
        Array.Fill(chunk, (byte)0x5a);
        try
        {
            while (true)
            {
                filler.Write(chunk);
                filler.Flush();
            }
        }
        catch (IOException e) when (e.HResult == 28)
        {
            return filler.Length;
        }
    }
}
