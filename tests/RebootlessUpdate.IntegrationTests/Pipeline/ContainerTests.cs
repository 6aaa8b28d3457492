using Mono.Unix.Native;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Images;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;
using RebootlessUpdate.Targets;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Pipeline;

/// <summary>A real runc container (busybox rootfs, a bind mount, its own namespaces) rehearsed with real criu.</summary>
[NonParallelizable]
public class ContainerTests
{
    private Testbed _testbed = null!;
    private string _dir = null!;
    private string _id = null!;
    private int? _restored;

    [SetUp]
    public void SetUp()
    {
        _testbed = Testbed.Require();
        Testbed.RequireRoot();
        RuncContainer.Require();
        _dir = Directory.CreateTempSubdirectory("rebootless-container-it-").FullName;
        _id = "rebootless-it-" + Guid.NewGuid().ToString("N")[..8];
    }

    [TearDown]
    public void TearDown()
    {
        if (_restored is { } pid && Workload.IsRunning(pid))
        {
            Syscall.kill(pid, Signum.SIGKILL);
        }

        RuncContainer.Runc("delete", "-f", _id);
        Directory.Delete(_dir, recursive: true);
    }

    private RuncContainer _container = null!;

    private string StartContainer()
    {
        _container = RuncContainer.Start(_dir, _id);
        return _container.Data;
    }

    [Test]
    public async Task Rehearsal_of_a_runc_container_restores_it_and_it_counts_on_in_its_bind_mount()
    {
        var data = StartContainer();
        var target = UpdateTarget.Container(_id);
        var resolved = target.Resolve();
        TestContext.Out.WriteLine($"init {resolved.RootPid}, root {resolved.Settings.Root}\n  dump: {string.Join(" ", resolved.Settings.External)}\n  restore: {string.Join(" ", resolved.Settings.RestoreExternal)}");
        Assert.That(resolved.Settings.External, Has.Member("mnt[/data]:/data"));
        Assert.That(resolved.Settings.RestoreExternal, Has.Member($"mnt[/data]:{data}"));
        Assert.That(resolved.Settings.Root, Is.EqualTo(Path.Combine(_dir, "bundle", "rootfs")));
        var context = new UpdateContext(UpdateMode.Rehearse, [target])
        {
            Store = new DirectoryImageStore(new DirectoryImageStoreOptions { RootDirectory = Path.Combine(_dir, "store") }),
            Criu = new CriuClient(new CriuClientOptions { CriuPath = _testbed.Criu }),
        };

        var result = await RebootlessPipelines.Rehearsal().Build().ExecuteAsync(context);
        _restored = result.Targets[0].RestoredPid;

        foreach (var s in result.Stages)
        {
            TestContext.Out.WriteLine($"{s.Name,-10} {s.Status,-10} {s.Duration.TotalMilliseconds,8:0.0} ms {s.Message}");
        }

        var t = result.Targets[0];
        TestContext.Out.WriteLine($"{t.Target}: {t.Phase} dump {t.DumpTime?.TotalMilliseconds:0} ms frozen {t.FrozenTime?.TotalMilliseconds:0} ms restore {t.RestoreTime?.TotalMilliseconds:0} ms downtime {t.Downtime?.TotalMilliseconds:0} ms bytes {t.Bytes}");
        Assert.That(result.Outcome, Is.EqualTo(UpdateOutcome.Succeeded), result.Error);
        Assert.That(t.Restorable, Is.True);
        Assert.That(_restored, Is.Not.EqualTo(resolved.RootPid));
        Assert.That(Workload.NamespacePid(_restored!.Value), Is.EqualTo(1), "restored as the init of its own PID namespace");
        var before = _container.Counter();
        Workload.WaitFor(() => _container.Counter() > before + 2 ? 1 : 0, "the restored container to count on");
        Assert.That(File.ReadAllText($"/proc/{_restored}/root/data/counter").Trim(), Is.Not.Empty,
            "its /data is the host folder again");

        // runc knows it again: running, as the restored init; its kill reaches it and its delete forgets it (its exec: RuncContainerVmTests).
        var state = RuncContainer.Runc("state", _id);
        TestContext.Out.WriteLine(state.ToString());
        Assert.That(state.ExitCode, Is.Zero, state.ToString());
        using (var json = System.Text.Json.JsonDocument.Parse(state.Output))
        {
            Assert.That(json.RootElement.GetProperty("status").GetString(), Is.EqualTo("running"));
            Assert.That(json.RootElement.GetProperty("pid").GetInt32(), Is.EqualTo(_restored));
        }

        var kill = RuncContainer.Runc("kill", _id, "KILL");
        Assert.That(kill.ExitCode, Is.Zero, kill.ToString());
        Workload.WaitFor(() => Workload.IsRunning(_restored!.Value) ? 0 : 1, "runc kill to end the restored init");
        var delete = RuncContainer.Runc("delete", _id);
        Assert.That(delete.ExitCode, Is.Zero, delete.ToString());
        Assert.That(Directory.Exists(Path.Combine("/run/runc", _id)), Is.False, "runc delete forgot it");
    }

    [Test]
    public void The_tool_rehearses_a_container_by_id_and_refuses_an_unknown_one_with_exit_6()
    {
        var tool = BuiltTool.Path;
        var data = StartContainer();
        var store = Directory.CreateDirectory(Path.Combine(_dir, "store")).FullName;

        var r = ProcessRunner.Run("dotnet", [tool, "rehearse", "--container", _id, "--store", store, "--criu", _testbed.Criu, "--json"], TimeSpan.FromMinutes(2));
        TestContext.Out.WriteLine(r.ToString());
        Assert.That(r.ExitCode, Is.Zero, r.ToString());
        using (var json = System.Text.Json.JsonDocument.Parse(r.Output))
        {
            var target = json.RootElement.GetProperty("targets")[0];
            Assert.That(target.GetProperty("target").GetString(), Is.EqualTo("container:" + _id));
            _restored = target.GetProperty("restoredPid").GetInt32();
        }

        var before = _container.Counter();
        Workload.WaitFor(() => _container.Counter() > before + 2 ? 1 : 0, "the restored container to count on");

        var unknown = ProcessRunner.Run("dotnet", [tool, "rehearse", "--container", "rebootless-no-such-container", "--store", store, "--criu", _testbed.Criu], TimeSpan.FromMinutes(1));
        Assert.That(unknown.ExitCode, Is.EqualTo(6), unknown.ToString());
        Assert.That(unknown.Error.Trim().Split('\n'), Has.Length.EqualTo(1).And.All.StartsWith("rebootless: target container:rebootless-no-such-container: runc does not know it"));
    }

    [Test]
    public void An_unknown_container_is_refused_with_the_runtimes_reason()
    {
        var e = Assert.Throws<TargetNotFoundException>(() => UpdateTarget.Container("rebootless-no-such-container").Resolve());
        TestContext.Out.WriteLine(e!.Message);
        Assert.That(e.Message, Does.Contain("container:rebootless-no-such-container").And.Contain("runc does not know it"));
    }
}
