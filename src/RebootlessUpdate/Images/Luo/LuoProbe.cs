using RebootlessUpdate.Kexec;

namespace RebootlessUpdate.Images.Luo;

/// <summary>Whether a LUO store can be used on this kernel, and why not.</summary>
/// <param name="Usable">The device opens: sessions can be preserved across the next kexec.</param>
/// <param name="Detail">What was found, in words an operator can act on.</param>
internal sealed record LuoAvailability(bool Usable, string Detail);

/// <summary>
/// Looks whether this kernel offers the Live Update Orchestrator (<c>/dev/liveupdate</c>), without changing anything:
/// the device is opened and closed at once (it admits one process at a time, so one in use is reported as such).
/// </summary>
internal static class LuoProbe
{
    /// <summary>
    /// Probes <paramref name="device"/>; the kernel's build options are read from <paramref name="kernelConfig"/>
    /// (default: <c>/proc/config.gz</c>, else <c>/boot/config-RELEASE</c>).
    /// </summary>
    internal static LuoAvailability Check(string device = LuoDevice.DefaultPath, string? kernelConfig = null, ILuoSyscalls? syscalls = null)
    {
        var release = Environment.OSVersion.Version.ToString();
        try
        {
            release = File.ReadAllText("/proc/sys/kernel/osrelease").Trim();
        }
        catch (IOException)
        {
        }

        if (!File.Exists(device) && !Directory.Exists(device))
        {
            var config = kernelConfig is null ? KexecCapabilities.ReadConfig("/proc/config.gz", $"/boot/config-{release}") : KexecCapabilities.ReadConfig(kernelConfig);
            return new LuoAvailability(false, $"no {device}: " + WhyMissing(release, config.Source, config.Options));
        }

        try
        {
            using var opened = LuoDevice.Open(device, syscalls);
            return new LuoAvailability(true, $"{device} opens: kernel {release} can preserve memfds across kexec");
        }
        catch (LuoException e)
        {
            return new LuoAvailability(false, e.Message);
        }
    }

    private static string WhyMissing(string release, string? source, Dictionary<string, string>? options)
    {
        const string Needs = "LUO needs Linux 6.19 or later built with CONFIG_LIVEUPDATE and CONFIG_LIVEUPDATE_MEMFD, "
            + "and kexec handover on (kho=on, unless built on by default) with liveupdate=on on its command line";
        if (options is null)
        {
            return $"kernel {release} has no Live Update Orchestrator, or it is off (its build configuration is not readable); {Needs}";
        }

        bool On(string option) => options.TryGetValue(option, out var v) && v == "y";
        if (!On("CONFIG_LIVEUPDATE"))
        {
            return $"kernel {release} was built without the Live Update Orchestrator (CONFIG_LIVEUPDATE is not set in {source}); {Needs}";
        }

        return $"kernel {release} has the Live Update Orchestrator but it is off (boot it with liveupdate=on"
            + (On("CONFIG_KEXEC_HANDOVER_ENABLE_DEFAULT") ? ")" : " kho=on)");
    }
}
