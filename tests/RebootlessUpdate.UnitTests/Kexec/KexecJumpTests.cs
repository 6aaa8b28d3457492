using Microsoft.Extensions.Time.Testing;
using RebootlessUpdate.Kexec;

namespace RebootlessUpdate.UnitTests.Kexec;

public class KexecJumpTests
{
    private FakeKexecSystem _fake = null!;
    private Dictionary<string, string> _env = null!;
    private FakeTimeProvider _time = null!;
    private bool _testRunner;

    [SetUp]
    public void SetUp()
    {
        _fake = new FakeKexecSystem().WithKexec(loaded: true);
        _fake.Write("proc/1/comm", "init\n");
        _env = [];
        _time = new FakeTimeProvider();
        _testRunner = false;
    }

    [TearDown]
    public void TearDown() => _fake.Dispose();

    private KexecJump Jump(KexecJumpOptions? options = null) =>
        new((options ?? new KexecJumpOptions()) with { TimeProvider = _time }, _fake, k => _env.GetValueOrDefault(k), () => _testRunner);

    internal sealed class Guard(bool sealedState, string reason = "journal says: dumping") : IJumpGuard
    {
        public int Calls { get; private set; }

        public bool IsCheckpointSealed(out string why)
        {
            Calls++;
            why = reason;
            return sealedState;
        }
    }

    [Test]
    public async Task Armed_jump_syncs_then_calls_reboot_kexec_when_pid1_is_not_systemd()
    {
        var armed = Jump().Arm(new Guard(true));

        var ex = Assert.ThrowsAsync<KexecException>(() => armed.JumpAsync());

        // The fake's reboot "fails" with EINVAL, so the call returns and reports that the system stayed.
        Assert.That(ex!.Reason, Is.EqualTo(KexecFailureReason.JumpFailed));
        Assert.That(ex.Errno, Is.EqualTo(22));
        Assert.That(_fake.SyncCalls, Is.EqualTo(1));
        Assert.That(_fake.RebootCalls, Is.EqualTo(1));
        Assert.That(_fake.ToolRuns, Is.Empty);
        await Task.CompletedTask;
    }

    [Test]
    public void Armed_jump_uses_systemctl_kexec_when_systemd_is_pid1()
    {
        _fake.Write("proc/1/comm", "systemd\n");
        _fake.ToolResult = new ToolResult(1, "Failed to start kexec.target");
        var armed = Jump().Arm(new Guard(true));

        var ex = Assert.ThrowsAsync<KexecException>(() => armed.JumpAsync());

        Assert.That(ex!.Reason, Is.EqualTo(KexecFailureReason.JumpFailed));
        Assert.That(ex.Message, Does.Contain("systemctl kexec"));
        Assert.That(_fake.ToolRuns.Single(), Is.EqualTo(("systemctl", (IReadOnlyList<string>)["kexec"])).Using<(string, IReadOnlyList<string>)>((a, b) => a.Item1 == b.Item1 && a.Item2.SequenceEqual(b.Item2)));
        Assert.That(_fake.SyncCalls, Is.EqualTo(1));
        Assert.That(_fake.RebootCalls, Is.Zero);
    }

    [Test]
    public void Jump_with_a_disarmed_token_throws_and_calls_nothing()
    {
        var armed = Jump().Arm(new Guard(true));
        armed.Dispose();

        var ex = Assert.ThrowsAsync<KexecException>(() => armed.JumpAsync());

        Assert.That(ex!.Reason, Is.EqualTo(KexecFailureReason.JumpRefused));
        Assert.That(ex.Message, Does.Contain("not armed"));
        Assert.That(armed.IsArmed, Is.False);
        Assert.That(_fake.RebootCalls + _fake.SyncCalls + _fake.ToolRuns.Count, Is.Zero);
    }

    [Test]
    public void A_token_jumps_at_most_once()
    {
        var armed = Jump().Arm(new Guard(true));
        Assert.ThrowsAsync<KexecException>(() => armed.JumpAsync()); // the fake's reboot returns

        var ex = Assert.ThrowsAsync<KexecException>(() => armed.JumpAsync());

        Assert.That(ex!.Reason, Is.EqualTo(KexecFailureReason.JumpRefused));
        Assert.That(_fake.RebootCalls, Is.EqualTo(1));
    }

    [Test]
    public void An_expired_arming_is_refused()
    {
        var armed = Jump(new KexecJumpOptions { ArmedLifetime = TimeSpan.FromSeconds(30) }).Arm(new Guard(true));
        _time.Advance(TimeSpan.FromSeconds(31));

        var ex = Assert.ThrowsAsync<KexecException>(() => armed.JumpAsync());

        Assert.That(ex!.Reason, Is.EqualTo(KexecFailureReason.JumpRefused));
        Assert.That(ex.Message, Does.Contain("expired"));
        Assert.That(_fake.RebootCalls, Is.Zero);
    }

    [Test]
    public void Preconditions_are_checked_again_at_jump_time()
    {
        var armed = Jump().Arm(new Guard(true));
        _fake.Loaded = false; // someone unloaded the kernel after arming

        var ex = Assert.ThrowsAsync<KexecException>(() => armed.JumpAsync());

        Assert.That(ex!.Message, Does.Contain("no kernel is loaded"));
        Assert.That(_fake.RebootCalls + _fake.SyncCalls, Is.Zero);
    }

    [Test]
    public void Arming_lists_every_failed_precondition()
    {
        _fake.EffectiveUserId = 1000;
        _fake.Loaded = false;
        _env["CI"] = "true";

        var ex = Assert.Throws<KexecException>(() => Jump().Arm(new Guard(false)));

        Assert.That(ex!.Reason, Is.EqualTo(KexecFailureReason.JumpRefused));
        Assert.That(ex.Message, Does.Contain("not running as root (effective uid 1000)")
            .And.Contain("no kernel is loaded")
            .And.Contain("the checkpoint is not sealed: journal says: dumping")
            .And.Contain("in CI (CI is set) without the explicit allowance REBOOTLESS_ALLOW_KEXEC_JUMP=1"));
        Assert.That(_fake.RebootCalls + _fake.SyncCalls, Is.Zero);
    }

    [TestCase("true", null, false)]
    [TestCase("1", null, false)]
    [TestCase("true", "0", false)]
    [TestCase("true", "1", true)]
    [TestCase("false", null, true)]
    [TestCase(null, null, true)]
    public void Ci_needs_the_allowance(string? ci, string? allowance, bool arms)
    {
        if (ci is not null)
        {
            _env["CI"] = ci;
        }

        if (allowance is not null)
        {
            _env[KexecJumpOptions.AllowanceVariable] = allowance;
        }

        Assert.That(() => Jump().Arm(new Guard(true)), arms ? Throws.Nothing : Throws.TypeOf<KexecException>().With.Message.Contains("CI"));
    }

    [Test]
    public void A_test_runner_needs_the_allowance()
    {
        _testRunner = true;

        Assert.That(() => Jump().Arm(new Guard(true)), Throws.TypeOf<KexecException>().With.Message.Contains("under a test runner"));

        _env[KexecJumpOptions.AllowanceVariable] = "1";
        Assert.That(() => Jump().Arm(new Guard(true)), Throws.Nothing);
    }

    [Test]
    public void This_test_process_is_detected_as_a_test_runner()
    {
        Assert.That(KexecJump.DetectTestRunner(), Is.True);
    }

    [Test]
    public void Systemd_is_recognised_by_pid1_comm()
    {
        Assert.That(Jump().IsSystemdPid1(), Is.False);
        _fake.Write("proc/1/comm", "systemd\n");
        Assert.That(Jump().IsSystemdPid1(), Is.True);
    }
}
