using RebootlessUpdate.Processes;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.UnitTests.Pipeline;

/// <summary>Reading what podman says (<c>container inspect</c>, its errors, the CRIU log it names), and naming a podman target.</summary>
public class PodmanCliTests
{
    [Test]
    public void Reads_what_podman_inspect_writes()
    {
        // Trimmed from podman 5.4's answer for a restored container.
        var s = PodmanState.Parse("""
            [{"Id": "d315bde8a1f0", "Created": "2026-12-03T09:00:00Z", "Name": "pc",
              "State": {"OciVersion": "1.2.0", "Status": "running", "Running": true, "Paused": false, "Pid": 312, "ConmonPid": 300,
                        "StartedAt": "2026-12-03T09:00:05Z", "CheckpointedAt": "2026-12-03T09:01:00.5Z",
                        "RestoredAt": "2026-12-03T09:02:00.25Z", "Checkpointed": false, "Restored": true}}]
            """);
        Assert.That(s, Is.EqualTo(new PodmanState("d315bde8a1f0", "pc", "running", 312, new DateTimeOffset(2026, 12, 3, 9, 2, 0, 250, TimeSpan.Zero))));
        Assert.That(s.Running, Is.True);
    }

    [Test]
    public void A_container_never_restored_has_no_restore_time()
    {
        var s = PodmanState.Parse("""[{"Id": "a", "Name": "/b", "State": {"Status": "exited", "Pid": 0, "RestoredAt": "0001-01-01T00:00:00Z"}}]""");
        Assert.That(s, Is.EqualTo(new PodmanState("a", "b", "exited", 0, null)));
        Assert.That(s.Running, Is.False);
    }

    [TestCase("[]")]
    [TestCase("{}")]
    [TestCase("[{\"Id\": \"a\"}]")]
    [TestCase("not json")]
    public void Anything_else_is_refused_with_a_reason(string json)
    {
        Assert.That(() => PodmanState.Parse(json), Throws.TypeOf<InvalidDataException>().With.Message.StartsWith("podman inspect answered"));
    }

    [Test]
    public void A_podman_target_is_named_by_its_container()
    {
        Assert.That(UpdateTarget.Parse("podman:web").Id, Is.EqualTo("podman:web"));
        Assert.That(UpdateTarget.Podman("d315bde8").Id, Is.EqualTo("podman:d315bde8"));
        Assert.That(() => UpdateTarget.Podman(" "), Throws.ArgumentException);
    }

    [Test]
    public void A_podman_the_host_lacks_is_a_clear_refusal()
    {
        var e = Assert.Throws<TargetNotFoundException>(() => UpdateTarget.Podman("web", new PodmanOptions { Binary = "/nonexistent/podman" }).Resolve());
        Assert.That(e!.Message, Does.StartWith("target podman:web: /nonexistent/podman cannot be run"));
        Assert.That(e.Problem, Is.EqualTo(TargetProblem.ManagerUnavailable));
    }

    [Test]
    public void A_failed_checkpoint_says_podmans_error_and_what_the_criu_log_it_names_says()
    {
        var work = Directory.CreateTempSubdirectory("podman-work-").FullName;
        try
        {
            File.WriteAllLines(Path.Combine(work, "dump.log"),
                ["(00.001) Dumping task", "(00.020) Error (criu/files-reg.c:1): Can't lookup mount=42", "(00.021) Error (criu/cr-dump.c:2): Dumping FAILED."]);
            var run = new ToolRun(125, "", $"time=\"x\" level=warning msg=\"w\"\nError: `/usr/bin/crun checkpoint --image-path {work}/checkpoint --work-path {work} ID` failed: exit status 1\n", false);

            Assert.That(PodmanCli.Why(run), Is.EqualTo($"`/usr/bin/crun checkpoint --image-path {work}/checkpoint --work-path {work} ID` failed: exit status 1"));
            Assert.That(PodmanCli.CriuErrors(run, "dump.log"), Is.EqualTo($"; CRIU's log ({work}/dump.log) says: "
                + "(00.020) Error (criu/files-reg.c:1): Can't lookup mount=42 | (00.021) Error (criu/cr-dump.c:2): Dumping FAILED."));
            Assert.That(PodmanCli.CriuErrors(run, "restore.log"), Is.Empty, "no such log: nothing to add");
            Assert.That(PodmanCli.CriuErrors(new ToolRun(125, "", "Error: no such container x", false), "dump.log"), Is.Empty);
        }
        finally
        {
            Directory.Delete(work, recursive: true);
        }
    }
}
