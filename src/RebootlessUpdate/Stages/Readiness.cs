using Mono.Unix.Native;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Images;
using RebootlessUpdate.Kexec;

namespace RebootlessUpdate.Stages;

/// <summary>What makes an update impossible.</summary>
public enum ReadinessProblem
{
    /// <summary>Not running as root.</summary>
    NotRoot,

    /// <summary>criu is not installed (or not at the given path).</summary>
    CriuMissing,

    /// <summary>criu is older than the library supports.</summary>
    CriuTooOld,

    /// <summary>criu runs but fails (its check, or it cannot start).</summary>
    CriuUnusable,

    /// <summary>This kernel cannot kexec.</summary>
    KexecUnavailable,

    /// <summary>The image store is missing or unusable.</summary>
    StoreUnusable,
}

/// <summary>One readiness check.</summary>
/// <param name="Name">What was checked: root, criu, kexec, store.</param>
/// <param name="Ok">True when it passed.</param>
/// <param name="Detail">What was found, or what is wrong and what to do.</param>
/// <param name="Problem">The problem, when it failed.</param>
public sealed record ReadinessCheck(string Name, bool Ok, string Detail, ReadinessProblem? Problem = null);

/// <summary>The outcome of <see cref="Readiness.CheckAsync"/>.</summary>
/// <param name="Checks">Every check, in the order made.</param>
/// <param name="CriuVersion">criu's version, when it answered.</param>
public sealed record ReadinessReport(IReadOnlyList<ReadinessCheck> Checks, string? CriuVersion)
{
    /// <summary>True when every check passed.</summary>
    public bool IsReady => Checks.All(c => c.Ok);

    /// <summary>The first failed check, if any.</summary>
    public ReadinessCheck? FirstFailure => Checks.FirstOrDefault(c => !c.Ok);
}

/// <summary>Checks that root, criu, kexec and the store allow an update (or a rehearsal).</summary>
public static class Readiness
{
    /// <summary>Runs the checks; never throws for a failed check.</summary>
    /// <param name="criu">The CRIU client to ask.</param>
    /// <param name="store">The store, or null to skip that check.</param>
    /// <param name="needKexec">Check that this kernel can kexec (an update needs it; a rehearsal does not).</param>
    /// <param name="runCriuCheck">Also run <c>criu check</c> (slower; the <c>check</c> command does).</param>
    /// <param name="cancellationToken">Cancels the criu requests.</param>
    public static async Task<ReadinessReport> CheckAsync(CriuClient criu, IImageStore? store, bool needKexec, bool runCriuCheck = false,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(criu);
        var checks = new List<ReadinessCheck>();
        var euid = Syscall.geteuid();
        checks.Add(euid == 0
            ? new ReadinessCheck("root", true, "running as root")
            : new ReadinessCheck("root", false, $"running as uid {euid}: checkpointing other processes and loading a kernel need root; run with sudo", ReadinessProblem.NotRoot));
        string? version = null;
        try
        {
            var v = await criu.GetVersionAsync(cancellationToken).ConfigureAwait(false);
            // In the background from here: the restores after a jump find criu's kernel probe done (see TargetRestore).
            _ = criu.PrimeKernelProbeAsync();
            version = v.ToString();
            checks.Add(v < RebootlessInfo.MinimumCriuVersion
                ? new ReadinessCheck("criu", false, $"criu {v} is too old: {RebootlessInfo.MinimumCriuVersion} or newer is required (older releases fail on current kernels); install a newer criu or pass --criu PATH", ReadinessProblem.CriuTooOld)
                : new ReadinessCheck("criu", true, $"criu {v}"));
            if (runCriuCheck && v >= RebootlessInfo.MinimumCriuVersion)
            {
                await criu.CheckAsync(cancellationToken).ConfigureAwait(false);
                checks.Add(new ReadinessCheck("criu check", true, "criu check passed"));
            }

            checks.Add(new ReadinessCheck("breakpoints", true, Breakpoints(criu)));
        }
        catch (CriuUnavailableException e)
        {
            checks.Add(new ReadinessCheck("criu", false, e.Message, ReadinessProblem.CriuMissing));
        }
        catch (CriuVersionException e)
        {
            checks.Add(new ReadinessCheck("criu", false, e.Message, ReadinessProblem.CriuTooOld));
        }
        catch (CriuException e)
        {
            checks.Add(new ReadinessCheck(runCriuCheck && version is not null ? "criu check" : "criu", false, $"criu does not work here: {e.Message}", ReadinessProblem.CriuUnusable));
        }

        if (needKexec)
        {
            var caps = KexecCapabilities.Probe();
            checks.Add(caps.IsPossible
                ? new ReadinessCheck("kexec", true, $"kexec possible on {caps.KernelRelease}")
                : new ReadinessCheck("kexec", false, $"this kernel ({caps.KernelRelease}) cannot kexec: {string.Join("; ", caps.Reasons)}", ReadinessProblem.KexecUnavailable));
        }

        if (store is not null)
        {
            try
            {
                var c = store.GetCapacity();
                checks.Add(new ReadinessCheck("store", true, $"{store.RootDirectory}: {c.FreeBytes} of {c.TotalBytes} bytes free"));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or ImageStoreException)
            {
                checks.Add(new ReadinessCheck("store", false, $"the store at {store.RootDirectory} is not usable: {e.Message}", ReadinessProblem.StoreUnusable));
            }
        }

        if (needKexec && store is IKexecHandoverStore carried)
        {
            checks.Add(carried.CanHandOver(out var why)
                ? new ReadinessCheck("handover", true, $"the store crosses the jump in the kernel's hands ({carried.GetType().Name})")
                : new ReadinessCheck("handover", false, $"the store at {store.RootDirectory} cannot cross a kexec here: {why}", ReadinessProblem.StoreUnusable));
            if (HandoverJumpCheck() is { } jump)
            {
                checks.Add(jump);
            }
        }

        return new ReadinessReport(checks, version);
    }

    /// <summary>The failed check when this host's jump would end a handed-over store's holder (systemd's kexec); null when it would not.</summary>
    internal static ReadinessCheck? HandoverJumpCheck() => new KexecJump().JumpsThroughSystemd
        ? new ReadinessCheck("handover jump", false, JumpStage.HandoverNeedsDirectJump, ReadinessProblem.StoreUnusable)
        : null;

    /// <summary>Whether criu stops processes with hardware breakpoints here, and why (see <see cref="CriuBreakpoints"/>).</summary>
    private static string Breakpoints(CriuClient criu)
    {
        var choice = HardwareBreakpointProbe.Choose(criu.Options.Breakpoints, criu.UsesService);
        return choice.AddNoBreakpointsFault && criu.UsesService
            ? choice.Description + ". The criu service is not started by this tool: it must run with CRIU_FAULT=130 too, or its dumps hang"
            : choice.Description;
    }
}

/// <summary>Preflight found that the run cannot go ahead; nothing was changed.</summary>
public sealed class PreflightException : Exception
{
    /// <summary>Creates the exception from a failed report.</summary>
    public PreflightException(ReadinessReport report)
        : base("preflight failed: " + string.Join("; ", (report ?? throw new ArgumentNullException(nameof(report))).Checks.Where(c => !c.Ok).Select(c => c.Detail)))
    {
        Report = report;
    }

    /// <summary>Creates the exception.</summary>
    public PreflightException()
        : this(new ReadinessReport([], null))
    {
    }

    /// <summary>Creates the exception.</summary>
    public PreflightException(string message, Exception innerException)
        : base(message, innerException)
    {
        Report = new ReadinessReport([], null);
    }

    /// <summary>The checks.</summary>
    public ReadinessReport Report { get; }

    /// <summary>The first problem found.</summary>
    public ReadinessProblem? Problem => Report.FirstFailure?.Problem;
}
