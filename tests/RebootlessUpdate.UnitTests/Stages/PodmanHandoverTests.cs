using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.UnitTests.Stages;

/// <summary>
/// What a podman target's restore asks podman, and what it decides from podman's answers, over a scripted podman (a
/// shell script answering from files) and a scripted process table. The same restore with the real podman, across a
/// real kexec, is the VM tier's main command with <c>--init systemd</c>.
/// </summary>
public class PodmanHandoverTests
{
    private const string Id = "d315bde8a1f0c0ffee0123456789abcdef0123456789abcdef0123456789abcd";
    private static readonly DateTimeOffset Dumped = new(2026, 12, 3, 10, 0, 0, TimeSpan.Zero);
    private static readonly DateTimeOffset Asked = Dumped.AddSeconds(60); // an interrupted restore's request, journaled
    private string _dir = null!;
    private FakeProcessTable _processes = null!;
    private string? _systemd;

    [SetUp]
    public void SetUp()
    {
        _dir = Directory.CreateTempSubdirectory("podman-handover-").FullName;
        _processes = new FakeProcessTable();
        _systemd = PodmanHandover.SystemdRuntimeDirectory;
        PodmanHandover.SystemdRuntimeDirectory = Path.Combine(_dir, "no-systemd"); // podman is run directly, not through systemd-run
        var script = Path.Combine(_dir, "podman");
        File.WriteAllText(script, """
            #!/bin/sh
            d=$(dirname "$0")
            echo "$*" >>"$d/calls"
            case "$1 $2" in
              "container inspect")
                [ -f "$d/fail" ] && { echo 'Error: cannot open the database' >&2; exit 125; }
                [ -f "$d/state.json" ] || { echo "Error: no such container $6" >&2; exit 125; }
                cat "$d/state.json" ;;
              "container rm") rm "$d/state.json"; echo "$4" ;;
              "container restore")
                [ -f "$d/restore-fails" ] && { echo 'time="x" level=warning msg="a warning first"' >&2; echo 'Error: crun: restore failed' >&2; exit 125; }
                sed "s/@NOW@/$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)/" "$d/restored.json" >"$d/state.json" ;;
            esac
            """);
        File.SetUnixFileMode(script, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        Directory.CreateDirectory(Images);
        File.WriteAllText(Path.Combine(Images, PodmanHandover.ExportFile), "tar");
    }

    [TearDown]
    public void TearDown()
    {
        PodmanHandover.SystemdRuntimeDirectory = _systemd!;
        Directory.Delete(_dir, recursive: true);
    }

    private string Images => Path.Combine(_dir, "images", "00-podman-web");

    private string[] Calls => File.Exists(Path.Combine(_dir, "calls")) ? File.ReadAllLines(Path.Combine(_dir, "calls")) : [];

    private void Podman(string file, string status, int pid, DateTimeOffset? restoredAt) =>
        PodmanSays(file, status, pid, restoredAt?.ToString("O") ?? "0001-01-01T00:00:00Z");

    /// <summary>Podman's answer; <c>@NOW@</c> as the restore time is the time the fake podman restored it.</summary>
    private void PodmanSays(string file, string status, int pid, string restoredAt) =>
        File.WriteAllText(Path.Combine(_dir, file), $$"""
            [{"Id": "{{Id}}", "Name": "web", "State": {"Status": "{{status}}", "Running": {{(status == "running" ? "true" : "false")}},
              "Pid": {{pid}}, "RestoredAt": "{{restoredAt}}", "CheckpointedAt": "2026-12-03T10:00:01Z"} }]
            """);

    private UpdateContext Context() =>
        new(UpdateMode.Resume, []) { Processes = _processes, TimeProvider = TimeProvider.System };

    private TargetRun Run(TargetPhase phase) => LocateStage.Load(Journaled(phase), Path.Combine(_dir, "images"));

    private JournalTarget Journaled(TargetPhase phase) => new()
    {
        Id = "podman:web",
        Folder = "00-podman-web",
        Settings = new TargetCriuSettings { Podman = new PodmanContainer { Id = Id, Name = "web", Binary = Path.Combine(_dir, "podman") } },
        Phase = phase,
        RootPid = 900,
        RootStartTime = 1,
        DumpStartedAt = Dumped,
        RestoreRequestedAt = phase == TargetPhase.Restoring ? Asked : null,
    };

    [Test]
    public async Task Restore_removes_the_record_the_old_kernel_left_then_imports_the_export_and_adopts_the_container()
    {
        Podman("state.json", "exited", 0, null);
        PodmanSays("restored.json", "running", 4242, "@NOW@");
        _processes.Start(4242, startTime: 77);
        var t = Run(TargetPhase.Dumped);

        await PodmanHandover.RestoreAsync(Context(), t, Images, CancellationToken.None);

        Assert.Multiple(() =>
        {
            Assert.That(t.Phase, Is.EqualTo(TargetPhase.Restored));
            Assert.That(t.RestoredRoot, Is.EqualTo(new ProcessIdentity(4242, 77)));
            Assert.That(Calls, Is.EqualTo(new[]
            {
                $"container inspect --format json -- {Id}",
                $"container rm -- {Id}",
                $"container restore --import {Path.Combine(Images, PodmanHandover.ExportFile)} --ignore-volumes",
                $"container inspect --format json -- {Id}",
            }));
        });
    }

    [Test]
    public async Task A_container_podman_does_not_know_is_imported_without_a_removal()
    {
        PodmanSays("restored.json", "running", 4242, "@NOW@");
        _processes.Start(4242);
        var t = Run(TargetPhase.Dumped);

        await PodmanHandover.RestoreAsync(Context(), t, Images, CancellationToken.None);

        Assert.That(t.Phase, Is.EqualTo(TargetPhase.Restored));
        Assert.That(Calls.Where(c => c.StartsWith("container rm", StringComparison.Ordinal)), Is.Empty);
    }

    [Test]
    public void A_container_podman_runs_already_is_never_restored_a_second_time()
    {
        Podman("state.json", "running", 5000, null); // started afresh after the jump, not restored
        _processes.Start(5000);
        var t = Run(TargetPhase.Dumped);

        var e = Assert.ThrowsAsync<InvalidOperationException>(() => PodmanHandover.RestoreAsync(Context(), t, Images, CancellationToken.None));

        Assert.Multiple(() =>
        {
            Assert.That(e!.Message, Does.Contain("podman runs container web (d315bde8a1f0) already, as pid 5000").And.Contain("never restored"));
            Assert.That(t.Phase, Is.EqualTo(TargetPhase.Dumped), "nothing was asked of podman, so nothing is journaled as restoring");
            Assert.That(Calls, Is.EqualTo(new[] { $"container inspect --format json -- {Id}" }));
        });
    }

    [Test]
    public void A_restore_podman_fails_leaves_the_target_dumped_with_podmans_own_error()
    {
        Podman("state.json", "exited", 0, null);
        File.WriteAllText(Path.Combine(_dir, "restore-fails"), "");
        var t = Run(TargetPhase.Dumped);

        var e = Assert.ThrowsAsync<InvalidOperationException>(() => PodmanHandover.RestoreAsync(Context(), t, Images, CancellationToken.None));

        Assert.That(e!.Message, Does.EndWith("failed (exit 125): crun: restore failed"), "podman's error line, not the warning before it");
        Assert.That(t.Phase, Is.EqualTo(TargetPhase.Dumped), "podman does not run it: a later attempt may restore it once");
    }

    [Test]
    public async Task An_interrupted_restore_podman_finished_is_adopted_not_repeated()
    {
        Podman("state.json", "running", 4242, Asked.AddSeconds(20));
        _processes.Start(4242, startTime: 77);
        var t = Run(TargetPhase.Restoring);

        var (outcome, _) = await InterruptedRestore.SettleAsync(t, Images, TimeSpan.FromSeconds(5), TimeProvider.System, _processes, CancellationToken.None);

        Assert.That(outcome, Is.EqualTo(InterruptedRestore.Outcome.Running));
        Assert.That(t.RestoredRoot, Is.EqualTo(new ProcessIdentity(4242, 77)));
    }

    [TestCase("exited", 20, ExpectedResult = "RanAndExited", TestName = "Restored since it was asked and exited: ran and exited")]
    [TestCase("exited", -30, ExpectedResult = "NotRunning", TestName = "Exited, restored only before it was asked (a rehearsal after the dump, say): not running")]
    [TestCase("running", -30, ExpectedResult = "NotRunning", TestName = "Running, restored before it was asked: not this restore's, and the restore then refuses it")]
    [TestCase("configured", null, ExpectedResult = "NotRunning", TestName = "Reset by podman's reboot refresh: not running")]
    [TestCase("running", null, ExpectedResult = "NotRunning", TestName = "Running but started afresh: not ours, and the restore then refuses it")]
    public string An_interrupted_restore_is_judged_by_what_podman_says(string status, int? restoredAfterAskedSeconds)
    {
        Podman("state.json", status, status == "running" ? 4242 : 0, restoredAfterAskedSeconds is { } s ? Asked.AddSeconds(s) : null);
        _processes.Start(4242);
        return PodmanHandover.Judge(Run(TargetPhase.Restoring), _processes).ToString();
    }

    [Test]
    public void An_interrupted_restore_of_a_container_podman_does_not_know_is_not_running()
    {
        Assert.That(PodmanHandover.Judge(Run(TargetPhase.Restoring), _processes), Is.EqualTo(InterruptedRestore.Outcome.NotRunning));
    }

    [Test]
    public void An_interrupted_restore_podman_cannot_judge_is_left_alone()
    {
        File.WriteAllText(Path.Combine(_dir, "fail"), "");
        Assert.That(PodmanHandover.Judge(Run(TargetPhase.Restoring), _processes), Is.EqualTo(InterruptedRestore.Outcome.StillRestoring));
    }

    [TestCase(true, ExpectedResult = TargetPhase.Dumped, TestName = "Killed while podman checkpointed: its export is restored")]
    [TestCase(false, ExpectedResult = TargetPhase.Failed, TestName = "Killed before podman wrote an export: nothing to restore from, said so")]
    public async Task<TargetPhase> A_run_killed_during_the_checkpoint_restores_the_export_podman_finished(bool exported)
    {
        // The journal has the root and the dump's start (written before podman was asked), podman ended the container.
        if (!exported)
        {
            File.Delete(Path.Combine(Images, PodmanHandover.ExportFile));
        }

        var jt = Journaled(TargetPhase.Planned);
        var run = LocateStage.Load(jt, Path.Combine(_dir, "images"));
        var context = new UpdateContext(UpdateMode.Resume, []) { Processes = _processes, Recovery = RecoveryKind.Rollback, TimeProvider = TimeProvider.System };
        await new LocateStage(new LocateStageOptions()).DecideAsync(context, run, jt, CancellationToken.None);
        return run.Phase;
    }

    [Test]
    public void Only_a_regular_nonempty_export_counts_as_images()
    {
        var export = Path.Combine(Images, PodmanHandover.ExportFile);
        Assert.That(PodmanHandover.HasExport(Images), Is.True);
        File.WriteAllText(export, "");
        Assert.That(PodmanHandover.HasExport(Images), Is.False, "empty");
        File.Delete(export);
        File.CreateSymbolicLink(export, "/etc/passwd");
        Assert.That(PodmanHandover.HasExport(Images), Is.False, "a symlink");
    }
}
