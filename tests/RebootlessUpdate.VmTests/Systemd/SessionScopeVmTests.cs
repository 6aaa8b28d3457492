using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.VmTests.Systemd;

/// <summary>
/// A process tree a user left running in a login session (logind's <c>session-N.scope</c> in <c>user-1000.slice</c>),
/// on a host whose PID 1 is systemd, updated across the real jump through <c>systemctl kexec</c> with
/// <c>rebootless update --pid</c>. On the new kernel the shipped resume unit restores it as the user it ran as, and
/// systemd holds it in a scope in the user's slice again, <c>rebootless-session-N.scope</c>: logind's sessions did not
/// cross the jump (its state lives in /run) and it numbers them afresh, so the next login gets <c>session-N.scope</c>
/// and the restored tree stays out of it. <c>systemctl stop</c> of the scope ends the tree. The guest side is
/// jobs/scenario-session.sh, in the boot the systemd host scenarios share (<see cref="SystemdHostBoot"/>).
/// </summary>
[NonParallelizable]
public class SessionScopeVmTests
{
    [Test]
    public void A_tree_left_in_a_login_session_crosses_systemctl_kexec_in_its_scope_as_its_user()
    {
        var testbed = Testbed.Require();
        var (job, result) = SystemdHostBoot.Scenario("session");
        string Read(string name) => GuestTool.Read(job, name);
        var diagnostics = $"\nsu.log:\n{Read("su.log")}\nupdate.log:\n{Read("update.log")}\njournal.log:\n{Read("journal.log")}\n{result}";
        Assert.That(result.ExitCode, Is.Zero, "the guest job failed" + diagnostics);
        var Before = GuestTool.Lookup(job, "before.txt");
        var After = GuestTool.Lookup(job, "after.txt");
        var (token, count) = GuestTool.Counter(Read("counter-before"));
        var (tokenAfter, countAfter) = GuestTool.Counter(After("Counter"));
        var (_, countLater) = GuestTool.Counter(After("CounterLater"));
        TestContext.Out.WriteLine($"before:\n{Read("before.txt")}\nafter:\n{Read("after.txt")}\nupdate:\n{Read("update.log")}\njournal:\n{Read("journal.log")}");
        Assert.Multiple(() =>
        {
            Assert.That(Read("kernel1"), Is.EqualTo(testbed.OldKernel));
            // Before: a real login session, the tree in its scope, the login itself over.
            Assert.That(Before("BeforeCgroup"), Does.Match(@"^/user\.slice/user-1000\.slice/session-c?\d+\.scope$"), "pam_systemd put the login in a session scope" + diagnostics);
            Assert.That(Before("BeforeUid"), Is.EqualTo("1000"));
            Assert.That(Before("BeforeScopeActiveState"), Is.EqualTo("active"));
            Assert.That(Before("BeforeScopeSlice"), Is.EqualTo("user-1000.slice"));
            Assert.That(Before("BeforeSessions"), Does.Contain(":rb"), "logind knows the session");

            Assert.That(After("Kernel"), Is.EqualTo(testbed.NewKernel), "the jump happened" + diagnostics);
            Assert.That(After("Pid1"), Is.EqualTo("systemd"));
            // The resume unit ends failed: the shared boot's services and podman scenarios each make one target unrestorable.
            Assert.That(Read("journal.log"), Does.Contain($"pid:{Before("Pid")}: Restored"), "the resume unit restored it" + diagnostics);

            // The tree runs on: the process checkpointed, not started again, as its user, once.
            Assert.That(After("Running"), Is.EqualTo("yes"), "the tree's root runs again (the same pid, restored in the host's PID namespace)");
            Assert.That(After("AfterUid"), Is.EqualTo("1000"), "as the user it ran as");
            Assert.That(tokenAfter, Is.EqualTo(token), "the process checkpointed (its in-memory token), not a fresh start");
            Assert.That(countAfter, Is.GreaterThanOrEqualTo(count), "its counter continued from where it was");
            Assert.That(countLater, Is.GreaterThan(countAfter), "and keeps counting");
            Assert.That(After("Copies"), Is.EqualTo("1"), "one copy, never two");

            // systemd holds it in a scope of its own in the user's slice: logind's session numbers start afresh after the
            // jump, so the session's name is left free for the next login.
            var moved = Before("BeforeCgroup")[..(Before("BeforeCgroup").LastIndexOf('/') + 1)] + "rebootless-" + Before("BeforeScope");
            Assert.That(After("AfterCgroup"), Is.EqualTo(moved), "moved to rebootless-" + Before("BeforeScope"));
            Assert.That(After("AfterScopeLoadState"), Is.EqualTo("loaded"), "systemd knows the scope again" + diagnostics);
            Assert.That(After("AfterScopeActiveState"), Is.EqualTo("active"));
            Assert.That(After("AfterScopeControlGroup"), Is.EqualTo(moved));
            Assert.That(After("AfterScopeSlice"), Is.EqualTo("user-1000.slice"));
            Assert.That(After("AfterSlice"), Is.EqualTo("active"));
            Assert.That(After("Failed").Trim(), Is.EqualTo("rebootless-resume.service"), "systemctl --failed lists the resume unit only");

            // The next login gets a session of its own, and leaves the restored tree where it is.
            Assert.That(After("Login"), Does.Match(@"^/user\.slice/user-1000\.slice/session-c?\d+\.scope "), "a login after the jump has its session scope" + diagnostics);
            Assert.That(After("LoginSessions"), Does.Contain(":rb"), "logind knows the new login");
            Assert.That(After("LoginCopies"), Does.StartWith("1 "), "the restored tree runs once, in its own scope");

            // systemd holds the tree: stopping the scope ends it.
            Assert.That(After("StopScope"), Is.EqualTo("ok"));
            Assert.That(After("AfterStop"), Is.EqualTo("inactive 0"), "systemctl stop of the scope ended the restored tree");
        });
    }
}
