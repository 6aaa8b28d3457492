using NUnit.Framework;

namespace RebootlessUpdate.TestSupport;

/// <summary>
/// The provisioned testbed (criu 4.x wrapper, rootfs, VM kernels), as written
/// by <c>testbed/provision</c> into <c>testbed.env</c>. Tests that need it call
/// <see cref="Require"/>: outside CI a missing testbed skips the test with the
/// command that provisions it; in CI (<c>CI=true</c>) it is a failure.
/// </summary>
public sealed class Testbed
{
    private static readonly Lazy<Testbed?> Current = new(Load);

    private readonly Dictionary<string, string> _values;

    private Testbed(Dictionary<string, string> values) => _values = values;

    /// <summary>True when the tests run in CI, where nothing may be skipped for a missing prerequisite.</summary>
    public static bool InCi => string.Equals(Environment.GetEnvironmentVariable("CI"), "true", StringComparison.OrdinalIgnoreCase);

    /// <summary>The cache folder (<c>REBOOTLESS_CACHE</c>, default <c>/var/cache/rebootless-testbed</c>).</summary>
    public static string CacheDirectory =>
        Environment.GetEnvironmentVariable("REBOOTLESS_CACHE") is { Length: > 0 } dir ? dir : "/var/cache/rebootless-testbed";

    /// <summary>Path of the criu 4.x wrapper.</summary>
    public string Criu => this["REBOOTLESS_CRIU"];

    /// <summary>Path of the crit wrapper (CRIU's image decoder), an independent oracle for image contents.</summary>
    public string Crit => this["REBOOTLESS_CRIT"];

    /// <summary>The trixie root filesystem (also the VM's root).</summary>
    public string RootFs => this["REBOOTLESS_ROOTFS"];

    /// <summary>Upstream CRIU RPC schema installed by libcriu-dev in the rootfs.</summary>
    public string UpstreamRpcProto => this["REBOOTLESS_RPC_PROTO"];

    /// <summary>Kernel release of the VM's "old" kernel (trixie).</summary>
    public string OldKernel => this["REBOOTLESS_KERNEL_OLD"];

    /// <summary>Kernel release of the VM's "new" kernel (unstable).</summary>
    public string NewKernel => this["REBOOTLESS_KERNEL_NEW"];

    /// <summary>
    /// The NUnit category of the VM tests that boot the LUO kernels. testbed/run-tests runs them last, after a provision
    /// that waits for those kernels (on a cold cache they build in the background while the other tiers run).
    /// </summary>
    public const string LuoKernelsCategory = "LuoKernels";

    /// <summary>Kernel release of the older of the two LUO kernels testbed/provision builds (Live Update Orchestrator on).</summary>
    public string LuoOldKernel => this["REBOOTLESS_KERNEL_LUO_OLD"];

    /// <summary>Kernel release of the newer LUO kernel.</summary>
    public string LuoNewKernel => this["REBOOTLESS_KERNEL_LUO_NEW"];

    /// <summary>
    /// The VM runner script of this checkout (testbed.env names the one of
    /// whichever checkout provisioned last, which may be another clone).
    /// </summary>
    public string VmRunner => File.Exists(Path.Combine(RepositoryRoot, "testbed", "vm")) ? Path.Combine(RepositoryRoot, "testbed", "vm") : this["REBOOTLESS_VM"];

    /// <summary>A value of testbed.env.</summary>
    public string this[string key] => _values.TryGetValue(key, out var v)
        ? v
        : throw new InvalidOperationException($"testbed.env has no {key}; re-run testbed/provision");

    /// <summary>Returns the testbed, or skips (fails in CI) the calling test when it is not provisioned.</summary>
    public static Testbed Require()
    {
        var testbed = Current.Value;
        if (testbed is null)
        {
            Missing($"the testbed is not provisioned ({Path.Combine(CacheDirectory, "testbed.env")} is missing); run `sudo testbed/provision`");
        }

        return testbed!;
    }

    /// <summary>Skips the test with <paramref name="what"/>, or fails it in CI.</summary>
    public static void Missing(string what)
    {
        if (InCi)
        {
            Assert.Fail($"missing prerequisite in CI: {what}");
        }

        Assert.Ignore($"missing prerequisite: {what}");
    }

    /// <summary>Skips (fails in CI) the calling test unless it runs as root.</summary>
    public static void RequireRoot()
    {
        if (Mono.Unix.Native.Syscall.geteuid() != 0)
        {
            Missing("this test needs root");
        }
    }

    /// <summary>The repository's top folder (the one holding RebootlessUpdate.sln).</summary>
    public static string RepositoryRoot { get; } = FindRepositoryRoot();

    private static string FindRepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "RebootlessUpdate.sln")))
            {
                return dir.FullName;
            }
        }

        throw new InvalidOperationException($"RebootlessUpdate.sln not found above {AppContext.BaseDirectory}");
    }

    private static Testbed? Load()
    {
        var file = Path.Combine(CacheDirectory, "testbed.env");
        if (!File.Exists(file))
        {
            return null;
        }

        var values = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var line in File.ReadAllLines(file))
        {
            var eq = line.IndexOf('=', StringComparison.Ordinal);
            if (eq > 0 && !line.StartsWith('#'))
            {
                values[line[..eq]] = line[(eq + 1)..];
            }
        }

        return new Testbed(values);
    }
}
