using System.Diagnostics;
using System.Globalization;
using RebootlessUpdate.Processes;

namespace RebootlessUpdate.UnitTests.Processes;

/// <summary>The one process runner, over real child processes (/bin/sh).</summary>
[TestFixture]
public sealed class ProcessRunnerTests
{
    [Test]
    public void Exit_code_and_both_outputs_are_kept_apart()
    {
        var run = ProcessRunner.Run("/bin/sh", ["-c", "echo out; echo err >&2; exit 3"], TimeSpan.FromSeconds(30));

        Assert.Multiple(() =>
        {
            Assert.That(run.ExitCode, Is.EqualTo(3));
            Assert.That(run.TimedOut, Is.False);
            Assert.That(run.Succeeded, Is.False);
            Assert.That(run.Stdout, Is.EqualTo("out\n"));
            Assert.That(run.Stderr, Is.EqualTo("err\n"));
            Assert.That(run.FirstLine, Is.EqualTo("err"));
            Assert.That(run.Output, Is.EqualTo("out\nerr"));
        });
    }

    [Test]
    public void Arguments_reach_the_tool_as_given_without_a_shell()
    {
        var run = ProcessRunner.Run("/bin/printf", ["%s|", "a b", "$HOME", "'q'", ";ls"], TimeSpan.FromSeconds(30));

        Assert.That(run.Stdout, Is.EqualTo("a b|$HOME|'q'|;ls|"));
    }

    [Test]
    public void Standard_input_is_closed_so_a_reading_tool_does_not_wait()
    {
        var run = ProcessRunner.Run("/bin/cat", [], TimeSpan.FromSeconds(30));

        Assert.That(run.Succeeded, Is.True);
        Assert.That(run.Stdout, Is.Empty);
    }

    [Test]
    public void A_missing_tool_is_named()
    {
        Assert.That(() => ProcessRunner.Run("/nonexistent/tool", [], TimeSpan.FromSeconds(5)),
            Throws.TypeOf<ToolNotStartedException>().With.Message.Contains("/nonexistent/tool")
                .And.Property(nameof(ToolNotStartedException.File)).EqualTo("/nonexistent/tool"));
    }

    [Test]
    public void A_tool_that_overruns_is_killed_with_what_it_started()
    {
        using var dir = new TempFolder();
        var childPidFile = Path.Combine(dir.Path, "child");

        var watch = Stopwatch.StartNew();
        var run = ProcessRunner.Run("/bin/sh", ["-c", $"echo started; sleep 300 & echo $! > {childPidFile}; wait"], TimeSpan.FromMilliseconds(500));
        watch.Stop();

        Assert.Multiple(() =>
        {
            Assert.That(run.TimedOut, Is.True);
            Assert.That(run.Succeeded, Is.False);
            Assert.That(run.Stdout, Is.EqualTo("started\n"));
            Assert.That(watch.Elapsed, Is.LessThan(TimeSpan.FromSeconds(60)));
            Assert.That(IsAlive(ChildPid(childPidFile)), Is.False, "the tool's own child was left running");
        });
    }

    [Test]
    public void Cancellation_kills_the_tool_and_what_it_started_then_throws()
    {
        using var dir = new TempFolder();
        var childPidFile = Path.Combine(dir.Path, "child");
        using var cts = new CancellationTokenSource();

        var task = ProcessRunner.RunAsync("/bin/sh", ["-c", $"sleep 300 & echo $! > {childPidFile}; wait"], TimeSpan.FromMinutes(10), cts.Token);
        SpinWait.SpinUntil(() => File.Exists(childPidFile) && new FileInfo(childPidFile).Length > 0, TimeSpan.FromSeconds(30));
        cts.Cancel();

        Assert.That(async () => await task, Throws.InstanceOf<OperationCanceledException>());
        Assert.That(IsAlive(ChildPid(childPidFile)), Is.False, "the tool's own child was left running");
    }

    [Test]
    public void A_token_cancelled_before_the_start_starts_nothing()
    {
        using var dir = new TempFolder();
        var marker = Path.Combine(dir.Path, "ran");

        Assert.That(() => ProcessRunner.Run("/bin/touch", [marker], TimeSpan.FromSeconds(5), new CancellationToken(canceled: true)),
            Throws.InstanceOf<OperationCanceledException>());
        Assert.That(File.Exists(marker), Is.False);
    }

    [Test]
    public void Output_held_open_by_a_process_left_behind_does_not_hang_the_run()
    {
        using var dir = new TempFolder();
        var childPidFile = Path.Combine(dir.Path, "child");

        // The tool exits at once, but a grandchild it detached keeps its stdout open.
        var run = ProcessRunner.Run("/bin/sh", ["-c", $"echo hi; (sleep 300 & echo $! > {childPidFile}); exit 0"], TimeSpan.FromSeconds(2));
        try
        {
            Assert.That(run.TimedOut, Is.False);
            Assert.That(run.ExitCode, Is.Zero);
            Assert.That(run.Stdout, Is.EqualTo("hi\n"), "what was written before the exit is kept");
        }
        finally
        {
            var pid = ChildPid(childPidFile);
            if (IsAlive(pid))
            {
                Process.GetProcessById(pid).Kill(); // our own test's grandchild, by pid
            }
        }
    }

    private static int ChildPid(string file)
    {
        SpinWait.SpinUntil(() => File.Exists(file) && File.ReadAllText(file).Trim().Length > 0, TimeSpan.FromSeconds(10));
        return int.Parse(File.ReadAllText(file).Trim(), CultureInfo.InvariantCulture);
    }

    /// <summary>True while the pid runs and is not a zombie waiting to be reaped.</summary>
    private static bool IsAlive(int pid)
    {
        for (var i = 0; i < 50; i++)
        {
            var stat = $"/proc/{pid.ToString(CultureInfo.InvariantCulture)}/stat";
            if (!File.Exists(stat))
            {
                return false;
            }

            string text;
            try
            {
                text = File.ReadAllText(stat);
            }
            catch (IOException)
            {
                return false;
            }

            if (text[(text.LastIndexOf(')') + 2)..].StartsWith('Z'))
            {
                return false;
            }

            Thread.Sleep(100); // a kill takes a moment to land
        }

        return true;
    }

    private sealed class TempFolder : IDisposable
    {
        public string Path { get; } = Directory.CreateTempSubdirectory("runner-test-").FullName;

        public void Dispose() => Directory.Delete(Path, recursive: true);
    }
}
