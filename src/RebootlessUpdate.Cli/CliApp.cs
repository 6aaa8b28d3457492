using System.CommandLine;
using System.CommandLine.Help;
using System.CommandLine.Invocation;
using RebootlessUpdate.Cli.Commands;

namespace RebootlessUpdate.Cli;

/// <summary>The tool's command tree, and the rules every invocation follows: a parse error is one line and exit 2, signals roll back.</summary>
internal static class CliApp
{
    public static RootCommand Create()
    {
        var root = new RootCommand("rebootless: update the kernel without a visible reboot.");
        root.Options.Add(CliOptions.Json);
        foreach (var command in new[]
        {
            CheckCommand.Create(), PlanCommand.Create(), RehearseCommand.Create(), UpdateCommand.Create(), ResumeCommand.Create(),
            StatusCommand.Create(), ImagesCommand.Create(), InstallUnitCommand.Create(), VersionCommand.Create(), CompletionCommand.Create(),
        })
        {
            root.Subcommands.Add(command);
        }

        var help = root.Options.OfType<HelpOption>().Single();
        help.Action = new HelpWithExitCodes((SynchronousCommandLineAction)help.Action!);
        return root;
    }

    public static async Task<int> RunAsync(string[] args)
    {
        // No response files: `@path` is an argument like any other (a set id or path from a script must not pull in options).
        var parse = Create().Parse(args, new ParserConfiguration { ResponseFileTokenReplacer = null });
        if (parse.Errors.Count > 0 && parse.Action is not HelpWithExitCodes)
        {
            // Not System.CommandLine's own report (the whole help on stdout, exit 1): one line, exit 2.
            var command = string.Join(' ', parse.CommandResult.Command.Parents.OfType<Command>().Reverse().Select(c => c.Name).Skip(1)
                .Append(parse.CommandResult.Command is RootCommand ? "" : parse.CommandResult.Command.Name)).Trim();
            return CliOutput.Fail(args.Contains("--json"), new CliError(ExitCodes.Usage,
                string.Join("; ", parse.Errors.Select(e => e.Message.TrimEnd('.')).Distinct()) + "; nothing was changed",
                $"`rebootless {(command.Length == 0 ? "" : command + " ")}--help` lists what it takes"));
        }

        // Only a run has a safe point to stop at and workloads to put back; other commands end at a signal as usual.
        using var interruption = new Interruption(graceful: parse.CommandResult.Command.Name is "rehearse" or "update" or "resume");
        return await parse.InvokeAsync(new InvocationConfiguration { ProcessTerminationTimeout = null, EnableDefaultExceptionHandler = false }, interruption.Token)
            .ConfigureAwait(false);
    }

    /// <summary>The help, then every exit code: scripts rely on them.</summary>
    private sealed class HelpWithExitCodes(SynchronousCommandLineAction help) : SynchronousCommandLineAction
    {
        public override int Invoke(ParseResult parseResult)
        {
            var code = help.Invoke(parseResult);
            var output = parseResult.InvocationConfiguration.Output;
            output.WriteLine("Exit codes:");
            foreach (var (value, name, meaning) in ExitCodes.All)
            {
                output.WriteLine($"  {value,3}  {name,-20} {meaning}");
            }

            output.WriteLine();
            return code;
        }
    }
}
