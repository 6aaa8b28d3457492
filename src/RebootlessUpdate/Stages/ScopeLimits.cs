using System.Globalization;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.Stages;

/// <summary>
/// The resource limits and device rules systemd applies to a scope (runc's systemd cgroup driver gives a container's
/// memory, pids and CPU limits and its device allow-list to systemd as the properties of <c>runc-ID.scope</c>), read
/// from <c>systemctl show</c> at plan and turned back into the <c>systemd-run -p</c> assignments that set them again.
/// Without them a scope started over the restored tree has systemd's defaults: no memory or CPU limit, the default
/// task limit, and no device filter at all (cgroup v2 device rules are a BPF program that systemd attaches for the
/// unit; CRIU does not carry it).
/// </summary>
internal static class ScopeLimits
{
    /// <summary>The properties to ask <c>systemctl show</c> for.</summary>
    internal static readonly string[] Shown =
    [
        "MemoryMin", "MemoryLow", "MemoryHigh", "MemoryMax", "MemorySwapMax", "TasksMax", "CPUWeight", "StartupCPUWeight",
        "CPUQuotaPerSecUSec", "CPUQuotaPeriodUSec", "IOWeight", "StartupIOWeight", "AllowedCPUs", "AllowedMemoryNodes",
        "DevicePolicy", "DeviceAllow",
    ];

    /// <summary>Properties shown and set under the same name, with the value that means "not set".</summary>
    private static readonly (string Name, string Unset)[] Verbatim =
    [
        ("MemoryMin", "0"), ("MemoryLow", "0"), ("MemoryHigh", "infinity"), ("MemoryMax", "infinity"), ("MemorySwapMax", "infinity"),
        ("TasksMax", ""), ("CPUWeight", "[not set]"), ("StartupCPUWeight", "[not set]"), ("IOWeight", "[not set]"),
        ("StartupIOWeight", "[not set]"), ("AllowedCPUs", ""), ("AllowedMemoryNodes", ""), ("DevicePolicy", "auto"),
    ];

    /// <summary>Whether an assignment is one of the device rules, which matter more than the rest (see the hand-back's retry).</summary>
    internal static bool IsDeviceRule(string assignment) =>
        assignment.StartsWith("DevicePolicy=", StringComparison.Ordinal) || assignment.StartsWith("DeviceAllow=", StringComparison.Ordinal);

    /// <summary>The <c>systemd-run -p</c> assignments that give a new scope the limits <paramref name="show"/> lists.</summary>
    internal static IReadOnlyList<string> From(string show)
    {
        var values = SystemdServiceTarget.ParseProperties(show);
        var assignments = new List<string>();
        foreach (var (name, unset) in Verbatim)
        {
            if (values.GetValueOrDefault(name) is { Length: > 0 } value && value != unset)
            {
                // A weight of 0 is shown for "idle" (runc's cpu.idle), which is how systemd-run takes it.
                assignments.Add($"{name}={(value == "0" && name.EndsWith("CPUWeight", StringComparison.Ordinal) ? "idle" : value)}");
            }
        }

        if (values.GetValueOrDefault("CPUQuotaPerSecUSec") is { } quota && Microseconds(quota) is > 0 and var perSecond)
        {
            // CPUQuota is a share of one CPU per second: 10 ms per second is 1 %, and systemd takes hundredths of one.
            var percent = Math.Max(0.01, Math.Round(perSecond / 10_000.0, 2));
            assignments.Add($"CPUQuota={percent.ToString("0.##", CultureInfo.InvariantCulture)}%");
        }

        if (values.GetValueOrDefault("CPUQuotaPeriodUSec") is { } period && Microseconds(period) is { } periodUs)
        {
            assignments.Add($"CPUQuotaPeriodSec={periodUs.ToString(CultureInfo.InvariantCulture)}us");
        }

        // A list property: one line per rule, in order ("DeviceAllow=/dev/char/1:3 rwm").
        assignments.AddRange(show.Split('\n').Select(l => l.TrimEnd('\r'))
            .Where(l => l.StartsWith("DeviceAllow=", StringComparison.Ordinal) && l.Length > "DeviceAllow=".Length));
        return assignments;
    }

    /// <summary>
    /// A systemd time span as <c>systemctl show</c> prints it ("500ms", "1s 500ms", "2min 30s", "100us") in
    /// microseconds; null for "infinity", an empty value or anything else.
    /// </summary>
    internal static long? Microseconds(string span)
    {
        var parts = span.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length == 0)
        {
            return null;
        }

        decimal total = 0;
        foreach (var part in parts)
        {
            var digits = part.TakeWhile(c => char.IsAsciiDigit(c) || c == '.').Count();
            if (digits == 0 || !decimal.TryParse(part[..digits], NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var n))
            {
                return null;
            }

            decimal? unit = part[digits..] switch
            {
                "us" or "µs" => 1m,
                "ms" => 1_000m,
                "s" or "" => 1_000_000m,
                "min" => 60_000_000m,
                "h" => 3_600_000_000m,
                _ => null,
            };
            if (unit is null)
            {
                return null;
            }

            total += n * unit.Value;
        }

        return (long)total;
    }
}
