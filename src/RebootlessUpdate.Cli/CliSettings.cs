using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Mono.Unix.Native;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Images;
using RebootlessUpdate.Images.Luo;

namespace RebootlessUpdate.Cli;

/// <summary>
/// Where criu and the store are, and how long criu may take: from the command line, else the environment
/// (<c>REBOOTLESS_CRIU</c>, <c>REBOOTLESS_STORE</c>), else the config file (<c>/etc/rebootless/rebootless.json</c>, or
/// <c>REBOOTLESS_CONFIG</c>), else the defaults. The config file names the criu that runs as root: one that anyone
/// but root could have written is refused.
/// </summary>
internal sealed record CliSettings
{
    public const string DefaultStore = "/var/lib/rebootless/store";

    /// <summary>The --store value that names the LUO store rather than a folder.</summary>
    public const string LuoStoreName = "luo";
    public const string DefaultConfigFile = "/etc/rebootless/rebootless.json";
    public const string CriuVariable = "REBOOTLESS_CRIU";
    public const string StoreVariable = "REBOOTLESS_STORE";
    public const string ConfigVariable = "REBOOTLESS_CONFIG";
    private const int MaxCriuTimeoutSeconds = 24 * 24 * 3600;

    private const long MaxConfigBytes = 64 * 1024;

    private static readonly string[] ConfigKeys = ["criu", "criuTimeout", "criuBreakpoints", "store", "pmem", "storeMount", "manifestKey"];

    public string CriuPath { get; init; } = "criu";

    public TimeSpan CriuTimeout { get; init; } = CriuClientOptions.DefaultRequestTimeout;

    public CriuBreakpoints CriuBreakpoints { get; init; } = CriuBreakpoints.Auto;

    /// <summary>The store folder; null for the default.</summary>
    public string? StoreFolder { get; init; }

    public string? PmemDevice { get; init; }

    public string? StoreMount { get; init; }

    public string? ManifestKey { get; init; }

    /// <summary>True for <c>--store luo</c>: the store is kept in memory the kernel hands over (<see cref="LuoImageStore"/>).</summary>
    public bool Luo => StoreFolder == LuoStoreName && PmemDevice is null;

    /// <summary>The store folder to use.</summary>
    public string StorePath => Luo ? LuoImageStore.StoreFolder(StoreMount ?? new LuoImageStoreOptions().MountPoint) : StoreFolder ?? DefaultStore;

    /// <summary>Reads the settings for <paramref name="p"/>.</summary>
    /// <exception cref="CliFailure">A bad value or config file (exit 2).</exception>
    public static CliSettings Resolve(ParseResult p)
    {
        var configPath = Variable(ConfigVariable) ?? DefaultConfigFile;
        var config = ReadConfig(configPath, explicitly: Variable(ConfigVariable) is not null);
        var given = Given(p, CliOptions.CriuTimeout);
        var timeoutText = given ?? (config.TryGetValue("criuTimeout", out var t) ? t : null);
        var timeout = CriuClientOptions.DefaultRequestTimeout;
        if (timeoutText is not null)
        {
            timeout = ParseCriuTimeout(timeoutText) ?? throw CliFailure.Of(ExitCodes.Usage,
                $"{(given is null ? $"\"criuTimeout\" {timeoutText} in the config file {configPath}" : $"--criu-timeout '{timeoutText}'")} is not a whole number of seconds from 1 to {MaxCriuTimeoutSeconds}",
                $"give the time criu may spend on one request; the default is {(int)CriuClientOptions.DefaultRequestTimeout.TotalSeconds}");
        }

        var breakpointsGiven = Given(p, CliOptions.CriuBreakpoints);
        var breakpointsText = breakpointsGiven ?? config.GetValueOrDefault("criuBreakpoints");
        var breakpoints = CriuBreakpoints.Auto;
        if (breakpointsText is not null)
        {
            breakpoints = ParseCriuBreakpoints(breakpointsText) ?? throw CliFailure.Of(ExitCodes.Usage,
                $"{(breakpointsGiven is null ? $"\"criuBreakpoints\" {breakpointsText} in the config file {configPath}" : $"--criu-breakpoints '{breakpointsText}'")} is not auto, use or avoid",
                "give auto (the default: probe this machine), use or avoid");
        }

        // A store named above the config file (command line, environment) wins over the file's pmem device too.
        var folderAbove = Given(p, CliOptions.Store) ?? Variable(StoreVariable);
        var settings = new CliSettings
        {
            CriuPath = Given(p, CliOptions.Criu) ?? Variable(CriuVariable) ?? config.GetValueOrDefault("criu") ?? "criu",
            CriuTimeout = timeout,
            CriuBreakpoints = breakpoints,
            StoreFolder = folderAbove ?? config.GetValueOrDefault("store"),
            PmemDevice = Given(p, CliOptions.Pmem) ?? (folderAbove is null ? config.GetValueOrDefault("pmem") : null),
            StoreMount = Given(p, CliOptions.StoreMount) ?? config.GetValueOrDefault("storeMount"),
            ManifestKey = Given(p, CliOptions.ManifestKey) ?? config.GetValueOrDefault("manifestKey"),
        };
        if (settings.ManifestKey is { } key && !Path.IsPathRooted(key))
        {
            throw CliFailure.Of(ExitCodes.Usage, $"--manifest-key {key}: not an absolute path; nothing was changed",
                "give an absolute path: the same key file for update, resume and images verify");
        }

        return settings;
    }

    /// <summary>A whole number of seconds from 1 to 24 days, or null.</summary>
    internal static TimeSpan? ParseCriuTimeout(string? text) =>
        int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var seconds) && seconds is > 0 and <= MaxCriuTimeoutSeconds
            ? TimeSpan.FromSeconds(seconds)
            : null;

    /// <summary>auto, use or avoid; null for anything else.</summary>
    internal static CriuBreakpoints? ParseCriuBreakpoints(string? text) => text switch
    {
        "auto" => CriuBreakpoints.Auto,
        "use" => CriuBreakpoints.Use,
        "avoid" => CriuBreakpoints.Avoid,
        _ => null,
    };

    /// <summary>The option's value when it is on the command line of a command that has it.</summary>
    private static string? Given(ParseResult p, Option<string?> option) =>
        p.CommandResult.Command.Options.Contains(option) || option.Recursive ? p.GetValue(option) : null;

    private static string? Variable(string name) => Environment.GetEnvironmentVariable(name) is { Length: > 0 } v ? v : null;

    /// <summary>The config file's settings; none when it does not exist (unless named by <see cref="ConfigVariable"/>).</summary>
    internal static Dictionary<string, string> ReadConfig(string path, bool explicitly)
    {
        if (Syscall.lstat(path, out var st) != 0)
        {
            return explicitly
                ? throw CliFailure.Of(ExitCodes.Usage, $"the config file {path} (${ConfigVariable}) does not exist", $"create it or unset {ConfigVariable}")
                : [];
        }

        // It names the criu that runs as root: only a file root (or the caller) wrote, on a way nobody else can change, is read.
        // The checks are made on the opened file (no link followed, a FIFO never blocks), so what is checked is what is read.
        byte[] bytes;
        try
        {
            if ((st.st_mode & FilePermissions.S_IFMT) == FilePermissions.S_IFLNK)
            {
                throw CliFailure.Of(ExitCodes.Usage, $"the config file {path} is a symbolic link", "name the file itself");
            }

            var full = Path.GetFullPath(path);
            var folder = Path.GetDirectoryName(full) ?? "/";
            StoreFiles.CheckStorePath(folder);
            var folderProblem = Syscall.lstat(folder, out var dir) != 0 ? "cannot be examined" : StoreFiles.UntrustedFolder(dir, Syscall.geteuid());
            if (folderProblem is not null)
            {
                throw CliFailure.Of(ExitCodes.Usage, $"the config file {path} is not trusted: its folder {folder} {folderProblem}",
                    "keep it in a folder only root may write to, like /etc/rebootless");
            }

            bytes = StoreFiles.ReadRegular(full, MaxConfigBytes, ownOnly: true, rootMayOwn: true);
        }
        catch (UntrustedFileException e)
        {
            throw CliFailure.Of(ExitCodes.Usage, $"the config file {path} is not trusted: {e.Message}; someone other than root could choose the criu that runs as root",
                $"chown root {path} && chmod go-w {path}");
        }
        catch (NotARegularFileException e)
        {
            throw CliFailure.Of(ExitCodes.Usage, $"the config file {path} is not a regular file: {e.Message}", "replace it with a JSON file owned by root");
        }
        catch (Exception e) when (e is UnsafeStorePathException or IOException or UnauthorizedAccessException)
        {
            throw CliFailure.Of(ExitCodes.Usage, $"the config file {path} cannot be used: {e.Message}");
        }

        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        try
        {
            using var doc = JsonDocument.Parse(bytes);
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw CliFailure.Of(ExitCodes.Usage, $"the config file {path} is not a JSON object", "write e.g. {\"criu\": \"/usr/sbin/criu\", \"store\": \"/var/lib/rebootless/store\"}");
            }

            foreach (var property in doc.RootElement.EnumerateObject())
            {
                if (!ConfigKeys.Contains(property.Name, StringComparer.Ordinal))
                {
                    throw CliFailure.Of(ExitCodes.Usage, $"the config file {path} has an unknown setting \"{property.Name}\"", "known settings: " + string.Join(", ", ConfigKeys));
                }

                var isTimeout = property.Name == "criuTimeout";
                result[property.Name] = property.Value.ValueKind switch
                {
                    JsonValueKind.String when !isTimeout => property.Value.GetString()!,
                    JsonValueKind.Number when isTimeout => property.Value.GetRawText(),
                    _ => throw CliFailure.Of(ExitCodes.Usage, $"the config file {path}: \"{property.Name}\" must be a {(isTimeout ? "number of seconds" : "string")}"),
                };
            }
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException)
        {
            // InvalidOperationException: a string that is not UTF-8.
            throw CliFailure.Of(ExitCodes.Usage, $"the config file {path} is not valid JSON: {e.Message}", "fix it or remove it");
        }

        return result;
    }
}
