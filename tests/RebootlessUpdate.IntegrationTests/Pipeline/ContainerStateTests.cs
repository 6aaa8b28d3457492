using System.Text.Json.Nodes;
using Mono.Unix.Native;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;
using RebootlessUpdate.Targets;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Pipeline;

/// <summary>
/// runc's state of a container target, kept with its images and given back after the restore, against a real runc:
/// never two copies of a container, never someone else's state overwritten, never a link or FIFO followed.
/// </summary>
[NonParallelizable]
public class ContainerStateTests
{
    private string _dir = null!;
    private string _id = null!;
    private string _images = null!;
    private readonly List<RuncContainer> _started = [];

    [SetUp]
    public void SetUp()
    {
        Testbed.Require();
        Testbed.RequireRoot();
        RuncContainer.Require();
        _dir = Directory.CreateTempSubdirectory("rebootless-runc-state-it-").FullName;
        _id = "rebootless-it-" + Guid.NewGuid().ToString("N")[..8];
        _images = Directory.CreateDirectory(Path.Combine(_dir, "images")).FullName;
    }

    [TearDown]
    public void TearDown()
    {
        foreach (var c in _started)
        {
            c.Dispose();
        }

        var folder = Path.Combine("/run/runc", _id);
        if (Syscall.lstat(folder, out var st) == 0 && (st.st_mode & FilePermissions.S_IFMT) == FilePermissions.S_IFLNK)
        {
            File.Delete(folder); // a link a test planted
        }

        RuncContainer.Runc("delete", "-f", _id);
        if (Directory.Exists(folder))
        {
            Directory.Delete(folder, recursive: true); // a state a test wrote, which runc cannot load to delete
        }

        Directory.Delete(_dir, recursive: true);
    }

    private RuncContainer Start()
    {
        var c = RuncContainer.Start(_dir, _id);
        _started.Add(c);
        return c;
    }

    /// <summary>A run of the container's target resolved as the plan does, its runc state kept in the images folder as the dump does.</summary>
    private TargetRun Captured(TargetPhase phase = TargetPhase.Planned)
    {
        var target = UpdateTarget.Container(_id);
        var resolved = target.Resolve();
        var t = new TargetRun(target, phase);
        t.Resolve(resolved, resolved.Settings, "t0");
        ContainerHandback.Capture(t, _images);
        return t;
    }

    [Test]
    public void The_kept_state_is_runcs_own_and_a_restore_is_refused_while_runc_runs_a_container_of_that_id_again()
    {
        var first = Start();
        var t = Captured();
        var kept = JsonNode.Parse(File.ReadAllText(Path.Combine(_images, ContainerHandback.StateFile)))!;
        Assert.That(kept["id"]!.GetValue<string>(), Is.EqualTo(_id));
        Assert.That(kept["init_process_pid"]!.GetValue<int>(), Is.EqualTo(first.State()!.Value.Pid));

        // Its own state with its init gone (a rehearsal on the same kernel): free.
        var ownPid = first.State()!.Value.Pid;
        Syscall.kill(ownPid, Signum.SIGKILL);
        Workload.WaitFor(() => Workload.IsRunning(ownPid) ? 0 : 1, "the first container's init to end");
        Assert.That(first.State()?.Status, Is.EqualTo("stopped"));
        Assert.DoesNotThrow(() => ContainerHandback.CheckFree(t, _images));

        // Someone deleted it and ran a container of the same id: restoring next to it would make two.
        first.Stop();
        var second = Start();
        var e = Assert.Throws<InvalidOperationException>(() => ContainerHandback.CheckFree(t, _images));
        TestContext.Out.WriteLine(e!.Message);
        Assert.That(e.Message, Does.Contain($"runc runs a container {_id} again (init pid {second.State()!.Value.Pid})").And.Contain("not restored"));

        // That one stopped, but it is another container under the id: its state is not ours to overwrite.
        var secondPid = second.State()!.Value.Pid;
        Syscall.kill(secondPid, Signum.SIGKILL);
        Workload.WaitFor(() => Workload.IsRunning(secondPid) ? 0 : 1, "the second container's init to end");
        e = Assert.Throws<InvalidOperationException>(() => ContainerHandback.CheckFree(t, _images));
        TestContext.Out.WriteLine(e!.Message);
        Assert.That(e.Message, Does.Contain($"runc holds another container under the id {_id}").And.Contain("runc --root /run/runc delete"));
    }

    [Test]
    public void A_link_planted_as_the_containers_state_folder_is_neither_restored_into_nor_written_through()
    {
        Start();
        var t = Captured(TargetPhase.Restoring);
        _started[0].Stop();
        var folder = Path.Combine("/run/runc", _id);
        if (Directory.Exists(folder))
        {
            Directory.Delete(folder, recursive: true); // (runc's delete now and then leaves it a moment longer)
        }

        var elsewhere = Directory.CreateDirectory(Path.Combine(_dir, "elsewhere")).FullName;
        File.WriteAllText(Path.Combine(elsewhere, "state.json"), "someone else's");
        File.CreateSymbolicLink(folder, elsewhere);

        var e = Assert.Throws<InvalidOperationException>(() => ContainerHandback.CheckFree(t, _images));
        TestContext.Out.WriteLine(e!.Message);
        Assert.That(e.Message, Does.Contain("is a symbolic link").And.Contain("not restored"));

        // Planted after the check, while CRIU restores: the hand-back refuses it too and says so; the tree runs on.
        using var stand = Workload.Start(Path.Combine(_dir, "stand-in"));
        t.MarkRestored(stand.RootPid, null, TimeSpan.Zero, 0, DateTimeOffset.UtcNow, null);
        var progress = new Said();
        var context = new UpdateContext(UpdateMode.Rehearse, [t.Target]) { Progress = progress };
        ContainerHandback.HandBack(context, t, _images);
        TestContext.Out.WriteLine(string.Join("\n", progress.Messages));
        Assert.That(File.ReadAllText(Path.Combine(elsewhere, "state.json")), Is.EqualTo("someone else's"), "nothing written through the link");
        Assert.That(progress.Messages, Has.One.Contains($"runc does not know the restored container {_id}").And.Contains($"it runs as pid {stand.RootPid}"));
        Assert.That(Workload.IsRunning(stand.RootPid), Is.True);
    }

    [Test]
    public void A_link_swapped_in_for_the_state_folder_while_the_hand_back_writes_never_receives_the_write()
    {
        Start();
        var t = Captured(TargetPhase.Restoring);
        _started[0].Stop();
        var folder = Path.Combine("/run/runc", _id);
        if (Directory.Exists(folder))
        {
            Directory.Delete(folder, recursive: true);
        }

        var elsewhere = Directory.CreateDirectory(Path.Combine(_dir, "elsewhere")).FullName;
        File.WriteAllText(Path.Combine(elsewhere, "state.json"), "someone else's");
        using var stand = Workload.Start(Path.Combine(_dir, "stand-in"));
        t.MarkRestored(stand.RootPid, null, TimeSpan.Zero, 0, DateTimeOffset.UtcNow, null);
        var progress = new Said();
        var context = new UpdateContext(UpdateMode.Rehearse, [t.Target]) { Progress = progress };

        // The attacker moves whatever folder is there aside and puts a link to its own folder in its place, over and over.
        var stop = false;
        var moved = 0;
        var random = new Random(7);
        var swapper = new Thread(() =>
        {
            while (!Volatile.Read(ref stop))
            {
                if (Syscall.lstat(folder, out var st) == 0 && (st.st_mode & FilePermissions.S_IFMT) == FilePermissions.S_IFDIR
                    && Syscall.rename(folder, $"{folder}.moved-{moved}") == 0)
                {
                    moved++;
                }

                _ = Syscall.symlink(elsewhere, folder);
                Thread.SpinWait(random.Next(2000));
                if (Syscall.lstat(folder, out st) == 0 && (st.st_mode & FilePermissions.S_IFMT) == FilePermissions.S_IFLNK)
                {
                    _ = Syscall.unlink(folder);
                }

                // Gaps of varying length: the hand-back makes the folder in one, the next swap lands mid-write.
                Thread.SpinWait(random.Next(20000));
            }
        });
        try
        {
            swapper.Start();
            for (var i = 0; i < 400; i++)
            {
                ContainerHandback.HandBack(context, t, _images);
            }
        }
        finally
        {
            Volatile.Write(ref stop, true);
            swapper.Join();
        }

        var written = Enumerable.Range(0, moved).Count(n => File.Exists($"{folder}.moved-{n}/state.json"));
        var refused = progress.Messages.Count(m => m.Contains($"runc does not know the restored container {_id}", StringComparison.Ordinal));
        TestContext.Out.WriteLine($"{moved} folders moved aside, {written} of them written, {refused} hand-backs refused");
        for (var n = 0; n < moved; n++)
        {
            Directory.Delete($"{folder}.moved-{n}", recursive: true);
        }

        Assert.Multiple(() =>
        {
            Assert.That(Directory.GetFileSystemEntries(elsewhere).Select(Path.GetFileName), Is.EqualTo(new[] { "state.json" }), "nothing created through the link");
            Assert.That(File.ReadAllText(Path.Combine(elsewhere, "state.json")), Is.EqualTo("someone else's"), "nothing written through the link");
            Assert.That(written + refused, Is.GreaterThan(0), "the hand-back ran into the swaps");
            Assert.That(Workload.IsRunning(stand.RootPid), Is.True);
        });
    }

    [Test]
    public void A_container_runc_runs_under_the_id_by_the_hand_back_keeps_its_state_and_the_run_says_so()
    {
        var first = Start();
        var t = Captured(TargetPhase.Restoring);
        first.Stop();

        // While the checkpointed one was restored, someone ran a container of the same id.
        var second = Start();
        var state = Path.Combine("/run/runc", _id, "state.json");
        var theirs = File.ReadAllBytes(state);
        using var stand = Workload.Start(Path.Combine(_dir, "stand-in"));
        t.MarkRestored(stand.RootPid, null, TimeSpan.Zero, 0, DateTimeOffset.UtcNow, null);
        var progress = new Said();
        ContainerHandback.HandBack(new UpdateContext(UpdateMode.Rehearse, [t.Target]) { Progress = progress }, t, _images);
        TestContext.Out.WriteLine(string.Join("\n", progress.Messages));

        Assert.That(File.ReadAllBytes(state), Is.EqualTo(theirs), "the other container's state is left as it is");
        Assert.That(second.State(), Is.EqualTo(("running", second.State()!.Value.Pid)), "runc still reaches the other container");
        Assert.That(progress.Messages, Has.One.Contains("runc holds another container under the id by now").And.Contains($"it runs as pid {stand.RootPid}"));
    }

    [Test]
    public void Runcs_state_with_a_duplicate_key_makes_the_hand_back_report_and_the_check_refuse_not_throw_otherwise()
    {
        Start();
        var t = Captured(TargetPhase.Restoring);
        _started[0].Stop();
        var folder = Directory.CreateDirectory(Path.Combine("/run/runc", _id)).FullName;
        File.WriteAllText(Path.Combine(folder, "state.json"), "{\"id\": \"x\", \"init_process_pid\": 1, \"init_process_pid\": 2}");
        using var stand = Workload.Start(Path.Combine(_dir, "stand-in"));
        t.MarkRestored(stand.RootPid, null, TimeSpan.Zero, 0, DateTimeOffset.UtcNow, null);
        var progress = new Said();
        Assert.DoesNotThrow(() => ContainerHandback.AfterRestore(new UpdateContext(UpdateMode.Rehearse, [t.Target]) { Progress = progress }, t, _images));
        TestContext.Out.WriteLine(string.Join("\n", progress.Messages));
        Assert.That(progress.Messages, Has.One.Contains($"runc does not know the restored container {_id}"));
        Assert.That(Workload.IsRunning(stand.RootPid), Is.True);

        // Before a restore the same state refuses it with the check's own error.
        var e = Assert.Throws<InvalidOperationException>(() => ContainerHandback.CheckFree(t, _images));
        Assert.That(e!.Message, Does.Contain($"runc's state of container {_id} cannot be checked").And.Contain("not restored"));
    }

    [Test]
    public void A_fifo_in_place_of_runcs_state_is_refused_at_the_dump_at_once_and_nothing_is_frozen()
    {
        var c = Start();
        var target = UpdateTarget.Container(_id);
        var resolved = target.Resolve();
        var t = new TargetRun(target);
        t.Resolve(resolved, resolved.Settings, "t0");
        var state = Path.Combine("/run/runc", _id, "state.json");
        var saved = File.ReadAllBytes(state);
        File.Delete(state);
        Assert.That(Syscall.mkfifo(state, FilePermissions.S_IRUSR | FilePermissions.S_IWUSR), Is.Zero);
        try
        {
            var started = DateTime.UtcNow;
            var e = Assert.Throws<TargetNotFoundException>(() => ContainerHandback.Capture(t, _images));
            TestContext.Out.WriteLine(e!.Message);
            Assert.That(e.Message, Does.Contain("runc's state of the container cannot be kept").And.Contain("nothing was frozen"));
            Assert.That(DateTime.UtcNow - started, Is.LessThan(TimeSpan.FromSeconds(5)), "the FIFO was not read (a read would block)");
            Assert.That(File.Exists(Path.Combine(_images, ContainerHandback.StateFile)), Is.False);
        }
        finally
        {
            File.Delete(state);
            File.WriteAllBytes(state, saved);
        }

        Assert.That(c.State()?.Status, Is.EqualTo("running"), "the container runs on");
    }

    /// <summary>What a run reported, in order, as it reported it.</summary>
    private sealed class Said : IProgress<UpdateProgress>
    {
        public List<string> Messages { get; } = [];

        public void Report(UpdateProgress value) => Messages.Add(value.Message ?? string.Empty);
    }
}
