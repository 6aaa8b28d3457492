using System.CommandLine;

namespace RebootlessUpdate.Cli.Commands;

/// <summary>
/// <c>rebootless completion bash|zsh|fish</c>: a script for the shell that asks the tool itself what fits
/// (System.CommandLine's <c>[suggest:POSITION]</c> directive), so completions always match this version's options.
/// </summary>
internal static class CompletionCommand
{
    public static readonly IReadOnlyDictionary<string, string> Scripts = new Dictionary<string, string>(StringComparer.Ordinal)
    {
        ["bash"] = """
            # rebootless completion for bash: eval "$(rebootless completion bash)", or save it in /etc/bash_completion.d/rebootless
            _rebootless_complete() {
                local IFS=$'\n'
                COMPREPLY=($(rebootless "[suggest:${COMP_POINT}]" "${COMP_LINE}" 2>/dev/null))
            }
            complete -o default -F _rebootless_complete rebootless
            """,
        ["zsh"] = """
            #compdef rebootless
            # rebootless completion for zsh: eval "$(rebootless completion zsh)", or save it as _rebootless on your $fpath
            _rebootless() {
                local -a items
                items=("${(@f)$(rebootless "[suggest:${CURSOR}]" "${BUFFER}" 2>/dev/null)}")
                compadd -- "${items[@]}"
            }
            compdef _rebootless rebootless
            """,
        ["fish"] = """
            # rebootless completion for fish: rebootless completion fish > ~/.config/fish/completions/rebootless.fish
            function __rebootless_complete
                set -l line (commandline -cp)
                rebootless "[suggest:"(string length -- "$line")"]" "$line" 2>/dev/null
            end
            complete -c rebootless -f -a '(__rebootless_complete)'
            """,
    };

    public static Command Create()
    {
        var shell = new Argument<string>("shell") { Description = "bash, zsh or fish." };
        shell.AcceptOnlyFromAmong([.. Scripts.Keys]);
        var cmd = new Command("completion", "Print the shell completion script for bash, zsh or fish.");
        cmd.Arguments.Add(shell);
        CliInvocation.SetAction(cmd, c =>
        {
            Console.WriteLine(Scripts[c.Parse.GetValue(shell)!]);
            return ExitCodes.Ok;
        });
        return cmd;
    }
}
