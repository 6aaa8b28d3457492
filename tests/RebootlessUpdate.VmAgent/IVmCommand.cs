namespace RebootlessUpdate.VmAgent;

/// <summary>
/// One scenario the guest runs: <c>dotnet VmAgent.dll NAME ARGS...</c>. Output
/// goes to stdout (the VM console) and to files under <c>/job</c>, which the
/// host test reads. Exit code 0 means the scenario's own checks passed.
/// </summary>
public interface IVmCommand
{
    /// <summary>The command's name on the command line.</summary>
    string Name { get; }

    /// <summary>Runs the scenario; returns the exit code.</summary>
    Task<int> RunAsync(IReadOnlyList<string> args);
}
