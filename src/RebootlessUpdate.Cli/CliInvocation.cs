using System.CommandLine;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Images;
using RebootlessUpdate.Pipeline;

namespace RebootlessUpdate.Cli;

/// <summary>One command being run: its parse result, whether JSON was asked for, and the resolved settings.</summary>
internal sealed class CliInvocation(ParseResult parse)
{
    private CliSettings? _settings;

    public ParseResult Parse { get; } = parse;

    public bool Json { get; } = parse.GetValue(CliOptions.Json);

    /// <summary>The settings (command line, environment, config file), read on first use.</summary>
    public CliSettings Settings => _settings ??= CliSettings.Resolve(Parse);

    public T? Value<T>(Option<T> option) => Parse.GetValue(option);

    /// <summary>Refuses to go on unless root: before anything is read or changed.</summary>
    public static void RequireRoot(string what)
    {
        var uid = Mono.Unix.Native.Syscall.geteuid();
        if (uid != 0)
        {
            throw CliFailure.Of(ExitCodes.NotRoot, $"running as uid {uid}: {what} needs root; nothing was read or changed", "run it as root (sudo rebootless ...)");
        }
    }

    /// <summary>
    /// The command's one CRIU client: what it learns once (criu's version, its features, the kernel probe started at
    /// the readiness check) serves every stage after, instead of a second criu worker asking again.
    /// </summary>
    public CriuClient Criu() => _criu ??= new(new CriuClientOptions { CriuPath = Settings.CriuPath, RequestTimeout = Settings.CriuTimeout, Breakpoints = Settings.CriuBreakpoints });

    private CriuClient? _criu;

    /// <summary>
    /// Sets <paramref name="command"/>'s action: runs <paramref name="body"/> and turns what it throws into one
    /// error (never a stack trace): a <see cref="CliFailure"/> as it says, an interruption as exit 130, anything
    /// else as a bug (exit 70) with its type and message.
    /// </summary>
    public static void SetAction(Command command, Func<CliInvocation, CancellationToken, Task<int>> body) =>
        command.SetAction(async (p, ct) =>
        {
            var invocation = new CliInvocation(p);
            try
            {
                return await body(invocation, ct).ConfigureAwait(false);
            }
            catch (CliFailure f)
            {
                return CliOutput.Fail(invocation.Json, f.Error);
            }
            catch (ImageStoreLockedException e)
            {
                return CliOutput.Fail(invocation.Json, new CliError(ExitCodes.StoreLocked, e.Message, "wait for the other run to end; `rebootless status` shows it"));
            }
            catch (JournalException e)
            {
                return CliOutput.Fail(invocation.Json, new CliError(RunReport.Code(e), e.Message));
            }
            catch (ImageStoreException e)
            {
                return CliOutput.Fail(invocation.Json, new CliError(ExitCodes.BadStore, e.Message));
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
                return CliOutput.Fail(invocation.Json, new CliError(ExitCodes.Interrupted, "interrupted before anything was changed"));
            }
            catch (Exception e)
            {
                return CliOutput.Fail(invocation.Json, new CliError(ExitCodes.Internal,
                    $"{p.CommandResult.Command.Name} stopped on an unexpected {e.GetType().Name}: {e.Message}",
                    "this is a bug in rebootless; please report it with the command line"));
            }
        });

    /// <summary>The synchronous form of <see cref="SetAction(Command, Func{CliInvocation, CancellationToken, Task{int}})"/>.</summary>
    public static void SetAction(Command command, Func<CliInvocation, int> body) =>
        SetAction(command, (i, _) => Task.FromResult(body(i)));
}
