using System.Text.RegularExpressions;
using RebootlessUpdate.Cli;
using RebootlessUpdate.Pipeline;
using Spectre.Console.Testing;

namespace RebootlessUpdate.UnitTests.Cli;

public partial class ProgressDisplayTests
{
    private static readonly UpdateProgress[] Run =
    [
        new(UpdateProgressKind.StageStarted, "Plan"),
        new(UpdateProgressKind.Info, "Plan", "set S: 2 target(s)"),
        new(UpdateProgressKind.StageCompleted, "Plan"),
        new(UpdateProgressKind.StageStarted, "PreDump"),
        new(UpdateProgressKind.StageSkipped, "PreDump", "memory tracking (soft-dirty, CONFIG_MEM_SOFT_DIRTY) is not available in this kernel: the final dump copies all memory while frozen, which is a long line"),
        new(UpdateProgressKind.StageStarted, "Dump"),
        new(UpdateProgressKind.Info, "Dump", "frozen, 5242880 bytes of images in 80 ms", "pid:41", 5_242_880),
        new(UpdateProgressKind.Info, "Dump", "frozen, [1234] bytes of images in 20 ms", "cgroup:/sys/fs/cgroup/a[b]", 1234),
        new(UpdateProgressKind.StageCompleted, "Dump"),
        new(UpdateProgressKind.StageStarted, "Verify"),
        new(UpdateProgressKind.Info, "Verify", "5244114 bytes verified", Bytes: 5_244_114),
        new(UpdateProgressKind.StageFailed, "Verify", "hash mismatch\nfrom the manifest: second line"),
        new(UpdateProgressKind.Compensating, "Dump"),
        new(UpdateProgressKind.Compensating, "Plan"),
    ];

    [Test]
    public void Plain_lines_have_no_escape_codes_and_name_stage_target_and_message()
    {
        var writer = new StringWriter();
        var progress = new LineProgress(writer);
        foreach (var e in Run)
        {
            progress.Report(e);
        }

        var text = writer.ToString();
        Assert.That(text, Does.Not.Contain("\u001b"));
        Assert.That(text.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.TrimEnd('\r')), Is.EqualTo(new[]
        {
            "[Plan] ...",
            "[Plan] set S: 2 target(s)",
            "[PreDump] ...",
            "[Dump] ...",
            "[Dump] pid:41 frozen, 5242880 bytes of images in 80 ms (5.0 MiB)",
            "[Dump] cgroup:/sys/fs/cgroup/a[b] frozen, [1234] bytes of images in 20 ms (1.2 KiB)",
            "[Verify] ...",
            "[Verify] 5244114 bytes verified (5.0 MiB)",
            "[Dump] rolling back",
            "[Plan] rolling back",
        }));
    }

    [Test]
    public async Task Json_gets_no_progress_at_all()
    {
        IProgress<UpdateProgress>? seen = new LineProgress(TextWriter.Null);
        var r = await ProgressDisplay.RunAsync(json: true, p => { seen = p; return Task.FromResult(7); });

        Assert.That(r, Is.EqualTo(7));
        Assert.That(seen, Is.Null);
    }

    [Test]
    public async Task Live_bars_show_every_stage_its_targets_and_their_bytes_within_the_terminal_width()
    {
        var console = new TestConsole().Width(100).Interactive().SupportsAnsi(true).SupportsUnicode(true).EmitAnsiSequences();

        var result = await LiveProgress.RunAsync(console, async p =>
        {
            foreach (var e in Run)
            {
                p!.Report(e);
                await Task.Yield();
            }

            return 42;
        });

        Assert.That(result, Is.EqualTo(42));
        Assert.That(console.Output, Does.Contain("\u001b["), "a terminal gets ANSI sequences");
        var screen = FinalFrame(console.Output);
        TestContext.Out.WriteLine(string.Join("\n", screen));
        Assert.Multiple(() =>
        {
            Assert.That(screen, Has.Some.Match(@"^Plan\s+done set S: 2 target\(s\)"), "a finished stage keeps its last message");
            Assert.That(screen, Has.Some.Match(@"^PreDump\s+skipped memory tracking .*…"), "a long message is cut, not wrapped");
            Assert.That(screen, Has.Some.Match(@"^Dump\s+done\s"));
            Assert.That(screen, Has.Some.Contains("└ pid:41: frozen, 5242880 bytes of images in 80 ms (5.0 MiB)"));
            Assert.That(screen, Has.Some.Contains("cgroup:/sys/fs/cgroup/a[b]: frozen, [1234] bytes"), "markup in names and messages is shown as text");
            Assert.That(screen, Has.Some.Match(@"^Verify\s+failed hash mismatch\b").And.None.Contains("second line"));
            Assert.That(screen, Has.Some.Match(@"^Dump\s+rolling back"));
            Assert.That(screen, Has.All.Length.LessThanOrEqualTo(100));
        });
        Assert.That(screen.FindIndex(l => l.Contains("pid:41", StringComparison.Ordinal)), Is.GreaterThan(screen.FindIndex(l => l.StartsWith("Dump", StringComparison.Ordinal))), "a target's row is under its stage");
    }

    /// <summary>The last frame the live display drew (after its last cursor-up), without escape sequences, one string per row.</summary>
    private static List<string> FinalFrame(string output)
    {
        var last = CursorUp().Split(output)[^1];
        return [.. Ansi().Replace(last, "").Split('\n').Select(l => l.Split('\r')[^1].TrimEnd()).Where(l => l.Length > 0)];
    }

    [GeneratedRegex(@"\u001b\[[0-9]+A")]
    private static partial Regex CursorUp();

    [GeneratedRegex(@"\u001b\[[0-9;?]*[A-Za-z]")]
    private static partial Regex Ansi();
}
