using RebootlessUpdate.Stages;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.UnitTests.Stages;

/// <summary>Which scopes are logind's sessions, and the name a session's restored tree moves to after a jump.</summary>
public class ScopeHandbackTests
{
    private static ScopeUnit Scope(string name, string slice, string parent) =>
        new() { Name = name, Slice = slice, ControlGroup = $"{parent}/{name}", Description = "Session c1 of User rb", Properties = ["TasksMax=100"] };

    [TestCase("session-c1.scope", "user-1000.slice", true)]
    [TestCase("session-12.scope", "user-0.slice", true)]
    [TestCase("session-c1.scope", "system.slice", false)]
    [TestCase("runc-web.scope", "user-1000.slice", false)]
    [TestCase("session-c1.scope.d", "user-1000.slice", false)]
    [TestCase("rebootless-session-c1.scope", "user-1000.slice", false)]
    [TestCase("session-../x.scope", "user-1000.slice", false)]
    public void A_login_session_is_logind_s_session_scope_in_a_user_slice(string name, string slice, bool session)
    {
        Assert.That(ScopeHandback.IsLoginSession(Scope(name, slice, "/user.slice/" + slice)), Is.EqualTo(session));
    }

    [Test]
    public void A_renamed_session_keeps_its_slice_parent_and_limits_under_a_name_logind_never_gives()
    {
        var scope = Scope("session-c1.scope", "user-1000.slice", "/user.slice/user-1000.slice");
        var renamed = ScopeHandback.Renamed(scope);
        Assert.Multiple(() =>
        {
            Assert.That(renamed.Name, Is.EqualTo("rebootless-session-c1.scope"));
            Assert.That(renamed.ControlGroup, Is.EqualTo("/user.slice/user-1000.slice/rebootless-session-c1.scope"));
            Assert.That(renamed.Slice, Is.EqualTo("user-1000.slice"));
            Assert.That(renamed.Description, Is.EqualTo(scope.Description));
            Assert.That(renamed.Properties, Is.EqualTo(scope.Properties));
            Assert.That(ScopeHandback.IsLoginSession(renamed), Is.False, "renamed once, never again");
        });
    }
}
