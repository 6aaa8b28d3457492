
namespace RebootlessUpdate.Kexec;

/// <summary>
/// Tells <see cref="KexecJump.Arm"/> whether the workloads' checkpoint is
/// sealed, i.e. whether everything a workload has is safe in the store. The
/// update pipeline answers from its journal.
/// </summary>
public interface IJumpGuard
{
    /// <summary>True when the checkpoint is sealed; otherwise false and <paramref name="reason"/> says what is missing.</summary>
    bool IsCheckpointSealed(out string reason);
}

/// <summary>Settings of <see cref="KexecJump"/>. Immutable.</summary>
public sealed record KexecJumpOptions
{
    /// <summary>
    /// The environment variable that must be <c>1</c> to arm under a test runner or
    /// in CI: <c>REBOOTLESS_ALLOW_KEXEC_JUMP</c>.
    /// </summary>
    public const string AllowanceVariable = "REBOOTLESS_ALLOW_KEXEC_JUMP";

    /// <summary>How long an armed jump stays valid. Default: 60 seconds.</summary>
    public TimeSpan ArmedLifetime { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>Jump with <c>systemctl kexec</c> when systemd is PID 1 (services stop cleanly). Default: true.</summary>
    public bool UseSystemdWhenPid1 { get; init; } = true;

    /// <summary>The systemctl program. Default: <c>systemctl</c>.</summary>
    public string SystemctlPath { get; init; } = "systemctl";

    /// <summary>The clock that expires armed jumps. Default: <see cref="TimeProvider.System"/>.</summary>
    public TimeProvider TimeProvider { get; init; } = TimeProvider.System;
}

/// <summary>
/// The one irreversible step: jumping into the loaded kernel. There is no way
/// to jump except <see cref="Arm"/>, which checks every precondition and
/// refuses with the reasons, then <see cref="ArmedKexecJump.JumpAsync"/> on the token
/// it returns, which checks them again.
/// </summary>
public sealed class KexecJump
{
    private readonly IKexecSystem _system;
    private readonly Func<string, string?> _environment;
    private readonly Func<bool> _underTestRunner;

    /// <summary>Creates the jump driver for this machine.</summary>
    public KexecJump(KexecJumpOptions? options = null)
        : this(options ?? new KexecJumpOptions(), LinuxKexecSystem.Instance, Environment.GetEnvironmentVariable, DetectTestRunner)
    {
    }

    internal KexecJump(KexecJumpOptions options, IKexecSystem system, Func<string, string?> environment, Func<bool> underTestRunner)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(options.ArmedLifetime, TimeSpan.Zero);
        ArgumentException.ThrowIfNullOrEmpty(options.SystemctlPath);
        ArgumentNullException.ThrowIfNull(options.TimeProvider);
        Options = options;
        _system = system;
        _environment = environment;
        _underTestRunner = underTestRunner;
    }

    /// <summary>The settings.</summary>
    public KexecJumpOptions Options { get; }

    /// <summary>
    /// Arms the jump when all hold: running as root, a kernel is loaded,
    /// <paramref name="guard"/> says the checkpoint is sealed, and - under a test
    /// runner or in CI - <c>REBOOTLESS_ALLOW_KEXEC_JUMP=1</c>.
    /// </summary>
    /// <exception cref="KexecException"><see cref="KexecFailureReason.JumpRefused"/>, listing every precondition that failed.</exception>
    public ArmedKexecJump Arm(IJumpGuard guard)
    {
        ArgumentNullException.ThrowIfNull(guard);
        var refusals = Check(guard);
        if (refusals.Count > 0)
        {
            throw Refused("arming the kexec jump was refused", refusals);
        }

        return new ArmedKexecJump(this, guard, Options.TimeProvider.GetTimestamp());
    }

    internal List<string> Check(IJumpGuard guard)
    {
        var refusals = new List<string>();
        if (_system.EffectiveUserId != 0)
        {
            refusals.Add($"not running as root (effective uid {_system.EffectiveUserId}); jumping needs CAP_SYS_BOOT");
        }

        if (KexecCapabilities.ReadTrimmed(Path.Combine(_system.Root, "sys/kernel/kexec_loaded")) != "1")
        {
            refusals.Add("no kernel is loaded (/sys/kernel/kexec_loaded is not 1); load one with KexecLoader first");
        }

        if (!guard.IsCheckpointSealed(out var reason))
        {
            refusals.Add($"the checkpoint is not sealed: {reason}");
        }

        var ci = _environment("CI");
        var inCi = !string.IsNullOrEmpty(ci) && !string.Equals(ci, "false", StringComparison.OrdinalIgnoreCase) && ci != "0";
        if ((inCi || _underTestRunner()) && _environment(KexecJumpOptions.AllowanceVariable) != "1")
        {
            refusals.Add($"running {(inCi ? "in CI (CI is set)" : "under a test runner")} without the explicit allowance {KexecJumpOptions.AllowanceVariable}=1, " +
                "so a test cannot switch kernels by accident; set it only where a jump is intended (inside a VM)");
        }

        return refusals;
    }

    internal async Task JumpAsync(ArmedKexecJump token, CancellationToken cancellationToken)
    {
        var refusals = Check(token.Guard);
        if (Options.TimeProvider.GetElapsedTime(token.ArmedAt) > Options.ArmedLifetime)
        {
            refusals.Add($"the arming expired (armed longer than {Options.ArmedLifetime} ago); arm again");
        }

        if (refusals.Count > 0)
        {
            throw Refused("the kexec jump was refused at the last check", refusals);
        }

        // Flush every filesystem first: the jump does not unmount anything.
        _system.Sync();
        if (Options.UseSystemdWhenPid1 && IsSystemdPid1())
        {
            var result = await _system.RunAsync(Options.SystemctlPath, ["kexec"], TimeSpan.FromMinutes(5), cancellationToken).ConfigureAwait(false);
            if (result.ExitCode != 0)
            {
                throw new KexecException(KexecFailureReason.JumpFailed,
                    $"`{Options.SystemctlPath} kexec` exited with {result.ExitCode}: {result.Output}; the system keeps running on this kernel");
            }

            // systemd now stops services and jumps; this process ends with them.
            await Task.Delay(Timeout.InfiniteTimeSpan, cancellationToken).ConfigureAwait(false);
            return;
        }

        var errno = _system.RebootKexec();
        throw new KexecException(KexecFailureReason.JumpFailed,
            $"reboot(LINUX_REBOOT_CMD_KEXEC) returned {KexecErrno.Describe(errno)}; the system keeps running on this kernel", errno);
    }

    /// <summary>True when the jump goes through <c>systemctl kexec</c> (which ends this process before the kernel jumps).</summary>
    internal bool JumpsThroughSystemd => Options.UseSystemdWhenPid1 && IsSystemdPid1();

    internal bool IsSystemdPid1()
    {
        var comm = KexecCapabilities.ReadTrimmed(Path.Combine(_system.Root, "proc/1/comm"));
        if (comm == "systemd")
        {
            return true;
        }

        try
        {
            var exe = new FileInfo(Path.Combine(_system.Root, "proc/1/exe")).LinkTarget;
            return exe is not null && Path.GetFileName(exe) == "systemd";
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    private static KexecException Refused(string what, List<string> refusals) =>
        new(KexecFailureReason.JumpRefused, $"{what}: {string.Join("; ", refusals)}.");

    /// <summary>True when a test framework or test host is loaded in this process.</summary>
    internal static bool DetectTestRunner()
    {
        if (Environment.GetEnvironmentVariables().Keys.Cast<string>().Any(k =>
                k.StartsWith("VSTEST_", StringComparison.Ordinal) || k.StartsWith("NUNIT", StringComparison.Ordinal)))
        {
            return true;
        }

        var process = Environment.ProcessPath is { } p ? Path.GetFileNameWithoutExtension(p) : "";
        if (process.Contains("testhost", StringComparison.OrdinalIgnoreCase))
        {
            return true;
        }

        string[] frameworks = ["nunit.framework", "xunit", "Microsoft.VisualStudio.TestPlatform", "Microsoft.TestPlatform", "MSTest", "testhost"];
        return AppDomain.CurrentDomain.GetAssemblies().Select(a => a.GetName().Name ?? "")
            .Any(n => frameworks.Any(f => n.StartsWith(f, StringComparison.OrdinalIgnoreCase)));
    }
}

/// <summary>
/// An armed kexec jump, returned by <see cref="KexecJump.Arm"/>. Valid for
/// <see cref="KexecJumpOptions.ArmedLifetime"/> and one <see cref="JumpAsync"/>;
/// <see cref="Dispose"/> disarms it.
/// </summary>
public sealed class ArmedKexecJump : IDisposable
{
    private readonly KexecJump _owner;
    private int _state; // 0 armed, 1 used or disarmed

    internal ArmedKexecJump(KexecJump owner, IJumpGuard guard, long armedAt)
    {
        _owner = owner;
        Guard = guard;
        ArmedAt = armedAt;
    }

    internal IJumpGuard Guard { get; }

    internal long ArmedAt { get; }

    /// <summary>True until the token is used or disarmed.</summary>
    public bool IsArmed => Volatile.Read(ref _state) == 0;

    /// <summary>
    /// Checks every precondition again, syncs the filesystems and jumps: through
    /// <c>systemctl kexec</c> when systemd is PID 1, else reboot(LINUX_REBOOT_CMD_KEXEC).
    /// Does not return when the jump happens.
    /// </summary>
    /// <exception cref="KexecException">
    /// <see cref="KexecFailureReason.JumpRefused"/> when disarmed, used, expired or a precondition
    /// no longer holds; <see cref="KexecFailureReason.JumpFailed"/> when the system stayed on this kernel.
    /// </exception>
    public Task JumpAsync(CancellationToken cancellationToken = default)
    {
        if (Interlocked.Exchange(ref _state, 1) != 0)
        {
            throw new KexecException(KexecFailureReason.JumpRefused, "this kexec jump is not armed (it was disarmed or already used); call KexecJump.Arm again.");
        }

        return _owner.JumpAsync(this, cancellationToken);
    }

    /// <summary>Disarms the jump.</summary>
    public void Dispose() => Volatile.Write(ref _state, 1);
}
