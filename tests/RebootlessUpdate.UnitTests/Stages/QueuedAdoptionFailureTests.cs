using RebootlessUpdate.Targets;

namespace RebootlessUpdate.UnitTests.Stages;

/// <summary>
/// An adoption that fails while the boot's start of the unit is queued: that start runs the unit's own command once
/// the boot goes on, so the caller must hear "start queued" (and end the restored tree), whatever failed, also when
/// taking rebootless's drop-ins away fails too. Seen in the VM: a daemon-reload that outlasted its bound, then the
/// drop-ins' removal failing the same way, reported as a plain failure, left the restored tree running next to the
/// fresh start. A systemctl script plays systemd here: one start waiting (or none), reloads refused or slow.
/// </summary>
[NonParallelizable] // XDG_RUNTIME_DIR is the process's
public class QueuedAdoptionFailureTests
{
    private string _dir = null!;
    private string? _runtimeBefore;

    [SetUp]
    public void SetUp()
    {
        _dir = Directory.CreateTempSubdirectory("rebootless-systemctl-").FullName;
        _runtimeBefore = Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR");
        Environment.SetEnvironmentVariable("XDG_RUNTIME_DIR", _dir);
    }

    [TearDown]
    public void TearDown()
    {
        Environment.SetEnvironmentVariable("XDG_RUNTIME_DIR", _runtimeBefore);
        Directory.Delete(_dir, recursive: true);
    }

    /// <summary>
    /// A systemctl that logs its calls, shows one start of web.service waiting (unless <paramref name="queued"/> is
    /// false) and runs <paramref name="reload"/> on daemon-reload ($n: the how-manyth reload).
    /// </summary>
    private string Systemctl(string reload, bool queued = true)
    {
        var script = Path.Combine(_dir, "systemctl");
        File.WriteAllText(script, $"""
            #!/bin/sh
            echo "$*" >>"{_dir}/calls"
            case "$*" in
              *list-jobs*) {(queued ? "echo \"7 web.service start waiting\"" : ":")} ;;
              *daemon-reload*) n=$(grep -c daemon-reload "{_dir}/calls"); {reload} ;;
            esac
            exit 0
            """.Replace("\r", "", StringComparison.Ordinal));
        File.SetUnixFileMode(script, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        return script;
    }

    [Test]
    public void A_reload_that_fails_and_a_removal_that_fails_too_still_report_the_queued_start()
    {
        var unit = new ServiceUnit { Name = "web.service", UserManager = true };

        var e = Assert.Throws<ServiceManagerException>(() =>
            new SystemctlServiceManager(Systemctl("echo \"reload $n: Connection timed out\" >&2; exit 1"), TimeSpan.FromSeconds(10), _dir)
                .Adopt(unit, 4242, mayLeaveToQueuedStart: true));

        Assert.That(e!.StartQueued, Is.True, "the queued start will run the unit's own command: the caller must end the tree");
        Assert.That(e.Message, Does.Contain("daemon-reload failed: reload 1: Connection timed out"), "the first failure is the one reported");
        Assert.That(e.Message, Does.Contain("drop-ins of web.service are still loaded").And.Contain("reload 2:"), "and the second is told too");
        var calls = File.ReadAllLines(Path.Combine(_dir, "calls"));
        Assert.That(calls.Count(c => c.Contains("daemon-reload", StringComparison.Ordinal)), Is.EqualTo(2), "the drop-ins' removal was tried too");
        Assert.That(Directory.Exists(SystemctlServiceManager.DropInFolder(unit)), Is.False, "rebootless's drop-ins are gone from the disk");
    }

    [Test]
    public void Without_a_queued_start_a_failed_adoption_is_a_plain_failure_and_the_drop_ins_go()
    {
        var unit = new ServiceUnit { Name = "web.service", UserManager = true };

        var e = Assert.Throws<ServiceManagerException>(() =>
            new SystemctlServiceManager(Systemctl("echo \"reload $n: refused\" >&2; exit 1", queued: false), TimeSpan.FromSeconds(10), _dir)
                .Adopt(unit, 4242, mayLeaveToQueuedStart: true));

        Assert.That(e!.StartQueued, Is.False, "nothing would start the unit's own command: the tree may keep running");
        Assert.That(e.Message, Does.Contain("reload 1: refused").And.Contain("still loaded"));
        Assert.That(Directory.Exists(SystemctlServiceManager.DropInFolder(unit)), Is.False);
    }

    [Test]
    public void A_reload_slower_than_the_managers_own_bound_is_waited_for_once_the_tree_is_restored()
    {
        var unit = new ServiceUnit { Name = "web.service", UserManager = true };
        var manager = new SystemctlServiceManager(Systemctl("sleep 5"), TimeSpan.FromSeconds(2), _dir);

        // The reload ends (5 s > the manager's 2 s, which Release keeps before the dump); the settings read back are
        // then wrong (this systemctl shows nothing), so the adoption stops there: with a start queued, as "start queued".
        var e = Assert.Throws<ServiceManagerException>(() => manager.Adopt(unit, 4242, mayLeaveToQueuedStart: true));

        Assert.That(e!.Message, Does.Contain("drop-in did not take").And.Not.Contains("did not finish"));
        Assert.That(e.StartQueued, Is.True);
    }
}
