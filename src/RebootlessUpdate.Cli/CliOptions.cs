using System.CommandLine;
using RebootlessUpdate.Criu;

namespace RebootlessUpdate.Cli;

/// <summary>The options several commands share. Each command lists only those it uses (its --help shows no other).</summary>
internal static class CliOptions
{
    public static readonly Option<bool> Json = new("--json") { Description = "Write the result, or the error, as JSON on stdout.", Recursive = true };

    public static readonly Option<string?> Criu = new("--criu")
    {
        Description = $"The criu binary (default: ${CliSettings.CriuVariable}, else the config file's \"criu\", else criu on PATH).",
    };

    public static readonly Option<string?> CriuTimeout = new("--criu-timeout")
    {
        Description = "Seconds criu may work on one request before it is taken for hung: then it is killed and the run rolls back "
            + $"(the workloads run on). Default: the config file's \"criuTimeout\", else {(int)CriuClientOptions.DefaultRequestTimeout.TotalSeconds}.",
    };

    public static readonly Option<string?> CriuBreakpoints = new("--criu-breakpoints")
    {
        Description = "Whether criu may stop processes with hardware breakpoints: auto (probe whether they fire here; some VMs never "
            + "fire them and criu would hang), use, or avoid. Default: the config file's \"criuBreakpoints\", else auto.",
    };

    public static readonly Option<string?> Store = new("--store")
    {
        Description = $"The image store folder (default: ${CliSettings.StoreVariable}, else the config file's \"store\", else {CliSettings.DefaultStore}); "
            + $"\"{CliSettings.LuoStoreName}\" keeps it in memory handed to the kernel's Live Update Orchestrator at the jump (no memory reserved at boot; "
            + "a folder of that name is ./luo).",
    };

    public static readonly Option<string?> Pmem = new("--pmem")
    {
        Description = "Keep the store on this legacy persistent-memory device (e.g. /dev/pmem0), which survives kexec; formatted only when empty "
            + "(default: the config file's \"pmem\").",
    };

    public static readonly Option<string?> StoreMount = new("--store-mount")
    {
        Description = "Where --pmem's store is mounted (default /run/rebootless/store), or --store luo's tmpfs (default /run/rebootless/luo).",
    };

    public static readonly Option<string?> ManifestKey = new("--manifest-key")
    {
        Description = "A root-only key file outside the store (made 0600 at the first seal when missing): every seal signs the set's "
            + "manifest with it (HMAC-SHA256), and a set whose manifest does not carry a valid signature is refused, so rewriting a "
            + "manifest needs the key, not only write access to the store. Give the same key to update, resume and images verify; keep it "
            + "on the root file system so it survives the switch (default: the config file's \"manifestKey\").",
    };

    public static readonly Option<bool> TcpEstablished = new("--tcp-established")
    {
        Description = "Checkpoint established TCP connections of the --pid/--cgroup targets (the connections survive the switch).",
    };

    public static readonly Option<bool> SystemdUser = new("--systemd-user")
    {
        Description = "Find --service units in the calling user's service manager (systemctl --user) instead of the system's.",
    };

    /// <summary>The options that say which criu to run and how long it may take.</summary>
    public static Option[] CriuOptions => [Criu, CriuTimeout, CriuBreakpoints];

    /// <summary>The options that say where the store is.</summary>
    public static Option[] StoreOptions => [Store, Pmem, StoreMount];

    public static void Add(Command command, params Option[] options)
    {
        foreach (var o in options)
        {
            command.Options.Add(o);
        }
    }
}
