using RebootlessUpdate.Targets;

namespace RebootlessUpdate.UnitTests.Stages;

/// <summary>
/// The order a jump leaves for the next boot: the system manager's checkpointed services after the resume unit, in a
/// drop-in of that unit in the host's unit configuration (a temporary folder here), removed again without touching
/// anything else there.
/// </summary>
public class ResumeOrderTests
{
    private string _root = null!;
    private SystemctlServiceManager _manager = null!;

    private string DropIns => Path.Combine(_root, "rebootless-resume.service.d");

    [SetUp]
    public void SetUp()
    {
        _root = Directory.CreateTempSubdirectory("rebootless-units-").FullName;
        _manager = new SystemctlServiceManager("/nonexistent/systemctl", TimeSpan.FromSeconds(1), _root);
    }

    [TearDown]
    public void TearDown() => Directory.Delete(_root, recursive: true);

    [Test]
    public void The_system_services_are_ordered_after_the_resume_and_a_users_are_left_out()
    {
        _manager.OrderResumeBefore([new ServiceUnit { Name = "web" }, new ServiceUnit { Name = "db.service" }, new ServiceUnit { Name = "web.service" },
            new ServiceUnit { Name = "mine.service", UserManager = true }]);

        var text = File.ReadAllText(Path.Combine(DropIns, "zz-rebootless-checkpointed.conf"));
        Assert.That(text.Split('\n'), Has.One.EqualTo("Before=web.service db.service"));
        Assert.That(text, Does.Contain("[Unit]").And.Not.Contains("mine.service"));
        Assert.That(File.GetUnixFileMode(Path.Combine(DropIns, "zz-rebootless-checkpointed.conf")) & UnixFileMode.OtherWrite, Is.EqualTo(UnixFileMode.None));
    }

    [Test]
    public void Only_user_services_write_nothing()
    {
        _manager.OrderResumeBefore([new ServiceUnit { Name = "mine.service", UserManager = true }]);

        Assert.That(Directory.Exists(DropIns), Is.False);
    }

    [Test]
    public void Clearing_removes_the_order_and_an_emptied_folder_but_never_an_operators_drop_in()
    {
        _manager.ClearResumeOrder(); // nothing there: nothing to do
        _manager.OrderResumeBefore([new ServiceUnit { Name = "web.service" }]);
        _manager.ClearResumeOrder();
        Assert.That(Directory.Exists(DropIns), Is.False);

        _manager.OrderResumeBefore([new ServiceUnit { Name = "web.service" }]);
        File.WriteAllText(Path.Combine(DropIns, "10-operator.conf"), "[Service]\nEnvironment=X=1\n");
        _manager.ClearResumeOrder();
        Assert.That(Directory.GetFiles(DropIns).Select(Path.GetFileName), Is.EqualTo(new[] { "10-operator.conf" }));
    }

    [Test]
    public void A_unit_configuration_that_cannot_be_written_is_a_service_manager_error()
    {
        File.WriteAllText(DropIns, "a file where the folder belongs");

        var e = Assert.Throws<ServiceManagerException>(() => _manager.OrderResumeBefore([new ServiceUnit { Name = "web.service" }]));
        Assert.That(e!.Message, Does.Contain("zz-rebootless-checkpointed.conf"));
    }
}
