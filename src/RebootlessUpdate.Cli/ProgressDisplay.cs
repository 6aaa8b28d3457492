using System.Globalization;
using System.Runtime.CompilerServices;
using RebootlessUpdate.Pipeline;
using Spectre.Console;

namespace RebootlessUpdate.Cli;

/// <summary>
/// How a pipeline run shows its progress on stderr: live bars when stderr is a terminal,
/// plain lines (no escape codes) when it is a file, a pipe or the journal, nothing with
/// <c>--json</c>. Spectre.Console is loaded only on the terminal path, so `resume` at boot
/// (stderr is the journal) does not pay for it.
/// </summary>
internal static class ProgressDisplay
{
    /// <summary>Runs <paramref name="run"/> with the progress sink that fits this invocation.</summary>
    public static Task<T> RunAsync<T>(bool json, Func<IProgress<UpdateProgress>?, Task<T>> run)
    {
        if (json)
        {
            return run(null);
        }

        return StderrIsTerminal() ? Live(run) : run(new LineProgress(Console.Error));
    }

    // Apart, and never inlined, so that compiling RunAsync does not load Spectre.Console.
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static Task<T> Live<T>(Func<IProgress<UpdateProgress>?, Task<T>> run) => LiveProgress.RunAsync(StderrConsole(), run);

    private static bool StderrIsTerminal() => !Console.IsErrorRedirected;

    private static IAnsiConsole StderrConsole() =>
        AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });

    /// <summary>The first line of a message (failures carry criu log excerpts; the full text comes after the run).</summary>
    internal static string FirstLine(string? message) =>
        message is null ? "" : message.Split('\n', 2)[0].TrimEnd();
}

/// <summary>Plain progress lines: <c>[Stage] ... target message</c>. No escape codes.</summary>
internal sealed class LineProgress(TextWriter writer) : IProgress<UpdateProgress>
{
    private readonly Lock _lock = new();

    public void Report(UpdateProgress value)
    {
        if (Format(value) is { } line)
        {
            lock (_lock)
            {
                writer.WriteLine(line);
            }
        }
    }

    /// <summary>The line for an event, or null for events the plain output leaves out (the result lists every stage).</summary>
    internal static string? Format(UpdateProgress e) => e.Kind switch
    {
        UpdateProgressKind.StageStarted => $"[{e.Stage}] ...",
        UpdateProgressKind.Compensating => $"[{e.Stage}] rolling back",
        UpdateProgressKind.Info => string.Join(' ', new[] { $"[{e.Stage}]", e.Target, LiveProgress.InfoText(e) }.Where(p => !string.IsNullOrEmpty(p))),
        _ => null,
    };
}

/// <summary>
/// Live progress bars (Spectre.Console): a row per stage with a bar, its elapsed time and a
/// spinner; a row per target (marked └) under its stage once the target reports (e.g. "frozen, 5.0 MiB
/// of images"). Stages report no fraction done, so a running stage's bar pulses and fills
/// when the stage ends. Rows are cut to the terminal's width (a row wider than the terminal
/// would collapse the whole table).
/// </summary>
internal sealed class LiveProgress : IProgress<UpdateProgress>
{
    private const int StageWidth = 10;
    private const int BarWidth = 20;

    // Bar, elapsed time (hh:mm:ss), spinner, the gaps between columns and a margin.
    private const int OtherColumnsWidth = BarWidth + 8 + 1 + 6;

    private readonly ProgressContext _context;
    private readonly int _width;
    private readonly bool _unicode;
    private readonly Dictionary<(string Stage, string? Target), ProgressTask> _rows = [];
    private readonly Dictionary<string, string> _stageDetails = [];
    private readonly Lock _lock = new();
    private ProgressTask? _compensating;

    private LiveProgress(ProgressContext context, int width, bool unicode) => (_context, _width, _unicode) = (context, width, unicode);

    public static async Task<T> RunAsync<T>(IAnsiConsole console, Func<IProgress<UpdateProgress>?, Task<T>> run)
    {
        var (width, unicode) = (console.Profile.Width, console.Profile.Capabilities.Unicode);
        return await console.Progress()
            .AutoClear(false)
            .HideCompleted(false)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn { Width = BarWidth }, new ElapsedTimeColumn(), new SpinnerColumn())
            .StartAsync(async context =>
            {
                var live = new LiveProgress(context, width, unicode);
                try
                {
                    return await run(live).ConfigureAwait(false);
                }
                finally
                {
                    live.StopAll();
                }
            }).ConfigureAwait(false);
    }

    public void Report(UpdateProgress value)
    {
        lock (_lock)
        {
            if (_compensating is { } c && value.Kind != UpdateProgressKind.Info)
            {
                Finish(c, null);
                _compensating = null;
            }

            switch (value.Kind)
            {
                case UpdateProgressKind.StageStarted:
                    var row = _context.AddTask(Describe(value.Stage, null, ("grey", "..."), null), maxValue: 1);
                    row.IsIndeterminate = true;
                    _rows[(value.Stage, null)] = row;
                    break;
                case UpdateProgressKind.StageCompleted:
                    Finish(StageRow(value.Stage), Describe(value.Stage, null, ("green", "done"), _stageDetails.GetValueOrDefault(value.Stage)));
                    break;
                case UpdateProgressKind.StageSkipped:
                    Finish(StageRow(value.Stage), Describe(value.Stage, null, ("grey", "skipped"), value.Message));
                    break;
                case UpdateProgressKind.StageRetrying:
                    StageRow(value.Stage).Description = Describe(value.Stage, null, ("yellow", "retrying"), value.Message);
                    break;
                case UpdateProgressKind.StageFailed:
                    var failed = StageRow(value.Stage);
                    failed.Description = Describe(value.Stage, null, ("red", "failed"), value.Message);
                    failed.IsIndeterminate = false;
                    failed.StopTask();
                    break;
                case UpdateProgressKind.Compensating:
                    _compensating = _context.AddTask(Describe(value.Stage, null, ("yellow", "rolling back"), null), maxValue: 1);
                    _compensating.IsIndeterminate = true;
                    break;
                case UpdateProgressKind.Info:
                    Info(value);
                    break;
            }
        }
    }

    /// <summary>The text of an info event as its row shows it: the message, with the bytes it reports spelled for people.</summary>
    internal static string InfoText(UpdateProgress e)
    {
        var message = ProgressDisplay.FirstLine(e.Message);
        return e.Bytes is { } b ? $"{message} ({CliOutput.Size(b)})" : message;
    }

    /// <summary>
    /// A row's markup: the stage (or, indented, the target), a coloured status word, then the
    /// detail's first line, cut with an ellipsis to what the terminal's width leaves.
    /// </summary>
    internal string Describe(string stage, string? target, (string Colour, string Word)? status, string? detail)
    {
        // Spectre trims a description's leading spaces: a target's row is marked instead of indented.
        var head = target is null ? stage.PadRight(StageWidth) : (_unicode ? "└ " : "- ") + target + ":";
        var word = status is { } s ? " " + s.Word : "";
        var text = ProgressDisplay.FirstLine(detail);
        var room = Math.Max(12, _width - OtherColumnsWidth - head.Length - word.Length - 1);
        if (head.Length > room)
        {
            head = head[..(room - 1)] + "…";
        }

        if (text.Length > room)
        {
            text = text[..(room - 1)] + "…";
        }

        var markup = target is null ? $"[bold]{Markup.Escape(head)}[/]" : Markup.Escape(head);
        if (status is { } st)
        {
            markup += $" [{st.Colour}]{Markup.Escape(st.Word)}[/]";
        }

        return text.Length == 0 ? markup : markup + " " + Markup.Escape(text);
    }

    private void Info(UpdateProgress e)
    {
        var text = InfoText(e);
        if (e.Target is null)
        {
            // Kept for the stage's "done" row: e.g. "done 5.0 MiB verified".
            _stageDetails[e.Stage] = text;
            StageRow(e.Stage).Description = Describe(e.Stage, null, null, text);
            return;
        }

        // A target's event ends its part of the stage (dumped, pre-dumped, restored, refused).
        var description = Describe(e.Stage, e.Target, null, text);
        if (!_rows.TryGetValue((e.Stage, e.Target), out var row))
        {
            row = _rows.TryGetValue((e.Stage, null), out var stage)
                ? _context.AddTaskAfter(description, LastRowOf(e.Stage, stage), autoStart: true, maxValue: 1)
                : _context.AddTask(description, maxValue: 1);
            _rows[(e.Stage, e.Target)] = row;
        }

        Finish(row, description);
    }

    private ProgressTask LastRowOf(string stage, ProgressTask stageRow) =>
        _rows.Where(r => r.Key.Stage == stage && r.Key.Target is not null).Select(r => r.Value).MaxBy(r => r.Id) ?? stageRow;

    private ProgressTask StageRow(string stage)
    {
        if (!_rows.TryGetValue((stage, null), out var row))
        {
            row = _context.AddTask(Describe(stage, null, null, null), maxValue: 1);
            _rows[(stage, null)] = row;
        }

        return row;
    }

    private static void Finish(ProgressTask row, string? description)
    {
        if (description is not null)
        {
            row.Description = description;
        }

        row.IsIndeterminate = false;
        row.Value = row.MaxValue;
        row.StopTask();
    }

    private void StopAll()
    {
        lock (_lock)
        {
            foreach (var row in _rows.Values.Append(_compensating).OfType<ProgressTask>().Where(r => r.StopTime is null))
            {
                row.IsIndeterminate = false;
                row.StopTask();
            }
        }
    }
}
