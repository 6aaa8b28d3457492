using System.IO.Compression;
using System.Text;

namespace RebootlessUpdate.Kexec;

/// <summary>The kernel lockdown state (<c>/sys/kernel/security/lockdown</c>).</summary>
public enum KernelLockdown
{
    /// <summary>The state could not be read (securityfs not mounted, or no lockdown LSM).</summary>
    Unknown = 0,

    /// <summary>No lockdown.</summary>
    None,

    /// <summary>Integrity lockdown: <c>kexec_load</c> is refused, <c>kexec_file_load</c> needs a valid signature.</summary>
    Integrity,

    /// <summary>Confidentiality lockdown: as <see cref="Integrity"/>, and more.</summary>
    Confidentiality,
}

/// <summary>
/// Whether and how this machine can kexec, read from the kernel's build
/// configuration (<c>/proc/config.gz</c> or <c>/boot/config-RELEASE</c>), sysfs and
/// securityfs. <see cref="IsPossible"/> with <see cref="Reasons"/>, and a
/// readable <see cref="ToString"/> report.
/// </summary>
public sealed class KexecCapabilities
{
    private KexecCapabilities()
    {
    }

    /// <summary>The running kernel's release (<c>/proc/sys/kernel/osrelease</c>).</summary>
    public string KernelRelease { get; private init; } = "";

    /// <summary>The kernel configuration file that was read, or null when none was found.</summary>
    public string? ConfigSource { get; private init; }

    /// <summary><c>CONFIG_KEXEC</c> (the classic <c>kexec_load</c>); null when the configuration is unknown.</summary>
    public bool? HasKexecLoad { get; private init; }

    /// <summary><c>CONFIG_KEXEC_FILE</c> (<c>kexec_file_load</c>); null when the configuration is unknown.</summary>
    public bool? HasKexecFileLoad { get; private init; }

    /// <summary><c>CONFIG_KEXEC_SIG</c>: the kernel checks the signatures of images it loads; null when unknown.</summary>
    public bool? VerifiesSignatures { get; private init; }

    /// <summary><c>CONFIG_KEXEC_SIG_FORCE</c>: only validly signed images load; null when unknown.</summary>
    public bool? ForcesSignatures { get; private init; }

    /// <summary>True when <c>/sys/kernel/kexec_loaded</c> exists (the kernel has kexec at all).</summary>
    public bool HasKexecSysfs { get; private init; }

    /// <summary>Whether a kernel is loaded for kexec now; null when <c>/sys/kernel/kexec_loaded</c> does not exist.</summary>
    public bool? IsLoaded { get; private init; }

    /// <summary><c>/proc/sys/kernel/kexec_load_disabled</c> is 1: loading is off until the next boot. Null when absent.</summary>
    public bool? LoadDisabled { get; private init; }

    /// <summary>The kernel lockdown state.</summary>
    public KernelLockdown Lockdown { get; private init; }

    /// <summary>True when only a validly signed kernel can be loaded (signatures forced, or lockdown active).</summary>
    public bool SignatureRequired => ForcesSignatures == true || Lockdown is KernelLockdown.Integrity or KernelLockdown.Confidentiality;

    /// <summary>True when <c>kexec_file_load</c> can be used (possibly only for signed images, see <see cref="SignatureRequired"/>).</summary>
    public bool CanUseKexecFileLoad => (HasKexecFileLoad ?? HasKexecSysfs) && HasKexecSysfs && LoadDisabled != true;

    /// <summary>True when the classic <c>kexec_load</c> (kexec-tools without <c>-s</c>) can be used: not under lockdown.</summary>
    public bool CanUseKexecLoad => (HasKexecLoad ?? HasKexecSysfs) && HasKexecSysfs && LoadDisabled != true
        && Lockdown is not (KernelLockdown.Integrity or KernelLockdown.Confidentiality);

    /// <summary>True when some way to load a kernel exists.</summary>
    public bool IsPossible => CanUseKexecFileLoad || CanUseKexecLoad;

    /// <summary>Why kexec is impossible, or what limits it; empty when nothing does.</summary>
    public IReadOnlyList<string> Reasons { get; private init; } = [];

    /// <summary>Probes the running system.</summary>
    public static KexecCapabilities Probe() => Probe("/");

    /// <summary>Probes a system whose <c>/proc</c>, <c>/sys</c> and <c>/boot</c> are under <paramref name="root"/> (tests use fake trees).</summary>
    internal static KexecCapabilities Probe(string root)
    {
        string P(string path) => Path.Combine(root, path.TrimStart('/'));
        var release = ReadTrimmed(P("/proc/sys/kernel/osrelease")) ?? "(unknown)";
        var (configSource, config) = ReadConfig(P("/proc/config.gz"), P($"/boot/config-{release}"));
        bool? Option(string name) => config is null ? null : config.TryGetValue(name, out var v) && v is "y" or "m";

        var loadedText = ReadTrimmed(P("/sys/kernel/kexec_loaded"));
        var disabledText = ReadTrimmed(P("/proc/sys/kernel/kexec_load_disabled"));
        var lockdown = ParseLockdown(ReadTrimmed(P("/sys/kernel/security/lockdown")));

        var caps = new KexecCapabilities
        {
            KernelRelease = release,
            ConfigSource = configSource is null ? null : "/" + Path.GetRelativePath(root, configSource),
            HasKexecLoad = Option("CONFIG_KEXEC"),
            HasKexecFileLoad = Option("CONFIG_KEXEC_FILE"),
            VerifiesSignatures = Option("CONFIG_KEXEC_SIG"),
            ForcesSignatures = Option("CONFIG_KEXEC_SIG_FORCE"),
            HasKexecSysfs = loadedText is not null,
            IsLoaded = loadedText is null ? null : loadedText == "1",
            LoadDisabled = disabledText is null ? null : disabledText == "1",
            Lockdown = lockdown,
        };
        return caps.With(caps.Explain());
    }

    /// <summary>A report a user can read: verdict, reasons, and every fact found.</summary>
    public override string ToString()
    {
        static string YesNo(bool? b) => b switch { true => "yes", false => "no", null => "unknown" };
        var sb = new StringBuilder();
        sb.Append("kexec on kernel ").Append(KernelRelease).Append(": ").AppendLine(IsPossible
            ? $"possible ({(CanUseKexecFileLoad ? "kexec_file_load" : "")}{(CanUseKexecFileLoad && CanUseKexecLoad ? ", " : "")}{(CanUseKexecLoad ? "kexec_load" : "")})"
            : "NOT possible");
        foreach (var r in Reasons)
        {
            sb.Append("  - ").AppendLine(r);
        }

        sb.Append("  kernel configuration: ").AppendLine(ConfigSource ?? "not found (no /proc/config.gz, no /boot/config-" + KernelRelease + ")");
        sb.Append("  CONFIG_KEXEC (kexec_load): ").AppendLine(YesNo(HasKexecLoad));
        sb.Append("  CONFIG_KEXEC_FILE (kexec_file_load): ").AppendLine(YesNo(HasKexecFileLoad));
        sb.Append("  CONFIG_KEXEC_SIG / _FORCE: ").Append(YesNo(VerifiesSignatures)).Append(" / ").AppendLine(YesNo(ForcesSignatures));
        sb.Append("  /sys/kernel/kexec_loaded: ").AppendLine(HasKexecSysfs ? (IsLoaded == true ? "1 (a kernel is loaded)" : "0") : "absent");
        sb.Append("  kexec_load_disabled: ").AppendLine(LoadDisabled switch { true => "1", false => "0", null => "absent" });
        sb.Append("  lockdown: ").AppendLine(Lockdown.ToString().ToLowerInvariant());
        sb.Append("  signature required: ").Append(SignatureRequired ? "yes" : "no");
        return sb.ToString();
    }

    private KexecCapabilities With(IReadOnlyList<string> reasons) => new()
    {
        KernelRelease = KernelRelease, ConfigSource = ConfigSource, HasKexecLoad = HasKexecLoad, HasKexecFileLoad = HasKexecFileLoad,
        VerifiesSignatures = VerifiesSignatures, ForcesSignatures = ForcesSignatures, HasKexecSysfs = HasKexecSysfs,
        IsLoaded = IsLoaded, LoadDisabled = LoadDisabled, Lockdown = Lockdown, Reasons = reasons,
    };

    private List<string> Explain()
    {
        var reasons = new List<string>();
        if (HasKexecLoad == false && HasKexecFileLoad == false)
        {
            reasons.Add($"no kexec in this kernel: CONFIG_KEXEC and CONFIG_KEXEC_FILE are not set in {ConfigSource}; boot a kernel built with CONFIG_KEXEC_FILE=y");
        }

        if (!HasKexecSysfs)
        {
            reasons.Add("/sys/kernel/kexec_loaded does not exist: the running kernel was built without kexec support (CONFIG_KEXEC_CORE)");
        }
        else if (HasKexecFileLoad == false && HasKexecLoad == true)
        {
            reasons.Add("CONFIG_KEXEC_FILE is not set: only the classic kexec_load (kexec-tools without -s) can load a kernel");
        }

        if (LoadDisabled == true)
        {
            reasons.Add("kexec loading is disabled until the next boot (/proc/sys/kernel/kexec_load_disabled is 1)");
        }

        if (Lockdown is KernelLockdown.Integrity or KernelLockdown.Confidentiality)
        {
            reasons.Add($"kernel lockdown is '{Lockdown.ToString().ToLowerInvariant()}': kexec_load is refused and kexec_file_load accepts only a kernel whose signature the running kernel trusts");
        }
        else if (ForcesSignatures == true)
        {
            reasons.Add("CONFIG_KEXEC_SIG_FORCE is set: only a kernel whose signature the running kernel trusts can be loaded");
        }

        if (ConfigSource is null)
        {
            reasons.Add($"the kernel configuration is unknown (no /proc/config.gz, no /boot/config-{KernelRelease}): the verdict rests on sysfs alone");
        }

        return reasons;
    }

    private static KernelLockdown ParseLockdown(string? text)
    {
        // Format: "none [integrity] confidentiality" -- the active mode is in brackets.
        if (text is null)
        {
            return KernelLockdown.Unknown;
        }

        var open = text.IndexOf('[', StringComparison.Ordinal);
        var close = text.IndexOf(']', StringComparison.Ordinal);
        var active = open >= 0 && close > open ? text[(open + 1)..close] : text;
        return active switch
        {
            "none" => KernelLockdown.None,
            "integrity" => KernelLockdown.Integrity,
            "confidentiality" => KernelLockdown.Confidentiality,
            _ => KernelLockdown.Unknown,
        };
    }

    /// <summary>The first of <paramref name="candidates"/> that reads (plain or .gz): where it was, and its CONFIG_ options; nulls when none reads.</summary>
    internal static (string? Source, Dictionary<string, string>? Options) ReadConfig(params string[] candidates)
    {
        foreach (var path in candidates)
        {
            try
            {
                using var file = File.OpenRead(path);
                using Stream stream = path.EndsWith(".gz", StringComparison.Ordinal) ? new GZipStream(file, CompressionMode.Decompress) : file;
                using var reader = new StreamReader(stream);
                var options = new Dictionary<string, string>(StringComparer.Ordinal);
                while (reader.ReadLine() is { } line)
                {
                    var eq = line.IndexOf('=', StringComparison.Ordinal);
                    if (line.StartsWith("CONFIG_", StringComparison.Ordinal) && eq > 0)
                    {
                        options[line[..eq]] = line[(eq + 1)..];
                    }
                }

                return (path, options);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidDataException)
            {
                // Not there or unreadable: try the next source.
            }
        }

        return (null, null);
    }

    internal static string? ReadTrimmed(string path)
    {
        try
        {
            return File.ReadAllText(path).Trim();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }
}
