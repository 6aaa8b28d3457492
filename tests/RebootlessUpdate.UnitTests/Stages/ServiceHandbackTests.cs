using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;
using RebootlessUpdate.Targets;
using RebootlessUpdate.UnitTests.Images;

namespace RebootlessUpdate.UnitTests.Stages;

/// <summary>
/// What a service target's unit is told, by where the target ended up, against a recording service manager: a restored
/// tree that runs is adopted unless systemd already runs it or runs something else there; every other outcome only
/// takes rebootless's drop-ins away; a manager that fails never fails the run after the restore, only before the dump.
/// </summary>
public class ServiceHandbackTests
{
    private static readonly ServiceUnit Unit = new() { Name = "web.service" };
    private StoreFixture _f = null!;
    private FakeProcessTable _processes = null!;
    private RecordingServiceManager _manager = null!;
    private List<UpdateProgress> _progress = null!;

    [SetUp]
    public void SetUp()
    {
        _f = new StoreFixture();
        _processes = new FakeProcessTable();
        _manager = new RecordingServiceManager();
        _progress = [];
    }

    [TearDown]
    public void TearDown() => _f.Dispose();

    private UpdateContext Context(TimeProvider? clock = null) => new(UpdateMode.Rehearse, [])
    {
        TimeProvider = clock ?? TimeProvider.System,
        Store = _f.Store,
        SetId = "20261202T000000Z-00000001",
        Processes = _processes,
        Services = _manager,
        Progress = new SynchronousProgress<UpdateProgress>(_progress.Add),
    };

    private static TargetRun Run(TargetPhase phase, ServiceUnit? unit = null, int? restored = 4242, ulong? started = 99) => TargetRun.FromJournal(new JournalTarget
    {
        Id = "service:web.service",
        Folder = "00-service-web.service",
        Settings = new TargetCriuSettings { Service = unit ?? Unit },
        Phase = phase,
        RestoredPid = restored,
        RestoredStartTime = started,
    }, "/nonexistent");

    [Test]
    public void A_restored_tree_that_runs_becomes_the_main_process_of_its_failed_unit()
    {
        _processes.Start(4242, startTime: 99);
        _manager.Status = new ServiceStatus("failed", "failed", 0);

        ServiceHandback.HandBack(Context(), Run(TargetPhase.Restored));

        Assert.That(_manager.Calls, Has.Count.EqualTo(2));
        Assert.That(_manager.Calls[0], Is.EqualTo("status web.service"));
        Assert.That(_manager.Calls[1], Is.EqualTo("adopt web.service 4242"));
        Assert.That(_progress.Select(p => p.Message), Has.One.Contains("web.service is active again with the restored main pid 4242"));
    }

    [TestCase(TargetPhase.Resumed, TestName = "Resumed in place: only the drop-ins go")]
    [TestCase(TargetPhase.Failed, TestName = "Failed: only the drop-ins go")]
    [TestCase(TargetPhase.Ended, TestName = "Ended: only the drop-ins go")]
    [TestCase(TargetPhase.Restoring, TestName = "Still restoring: only the drop-ins go")]
    public void A_target_without_a_running_restored_tree_only_gets_its_units_configuration_back(TargetPhase phase)
    {
        _processes.Start(4242, startTime: 99);

        ServiceHandback.HandBack(Context(), Run(phase));

        Assert.That(_manager.Calls, Is.EqualTo(new[] { "return web.service" }));
    }

    [Test]
    public void A_restored_root_whose_pid_was_reused_is_not_adopted()
    {
        _processes.Start(4242, startTime: 100); // another process now has the restored root's pid

        ServiceHandback.HandBack(Context(), Run(TargetPhase.Restored));

        Assert.That(_manager.Calls, Is.EqualTo(new[] { "return web.service" }));
    }

    [Test]
    public void A_unit_that_already_runs_the_restored_root_is_left_as_it_is()
    {
        _processes.Start(4242, startTime: 99);
        _manager.Status = new ServiceStatus("active", "running", 4242);

        ServiceHandback.HandBack(Context(), Run(TargetPhase.Restored));

        Assert.That(_manager.Calls, Is.EqualTo(new[] { "status web.service", "return web.service" }), "handed back by an earlier run: not started again");
    }

    [TestCase("active", TestName = "A unit started meanwhile is not adopted over")]
    [TestCase("activating", TestName = "A unit starting meanwhile is not adopted over")]
    [TestCase("deactivating", TestName = "A unit still stopping is not adopted over")]
    public void A_unit_systemd_runs_something_else_in_is_not_adopted_and_the_two_copies_are_reported(string state)
    {
        _processes.Start(4242, startTime: 99);
        _manager.Status = new ServiceStatus(state, "running", 777);

        ServiceHandback.HandBack(Context(), Run(TargetPhase.Restored));

        Assert.That(_manager.Calls, Is.EqualTo(new[] { "status web.service", "return web.service" }));
        Assert.That(_progress.Select(p => p.Message), Has.One.Contains("systemd runs web.service again (main pid 777").And.Contains("kill 4242"));
    }

    [Test]
    public void An_adoption_systemd_refuses_is_reported_and_does_not_fail_the_run()
    {
        _processes.Start(4242, startTime: 99);
        _manager.Status = new ServiceStatus("failed", "failed", 0);
        _manager.AdoptFails = true;

        var t = Run(TargetPhase.Restored);
        Assert.That(ServiceHandback.HandBack(Context(), t), Is.False, "nothing to journal");
        Assert.That(t.Phase, Is.EqualTo(TargetPhase.Restored), "the tree runs on, unsupervised");
        Assert.That(_progress.Select(p => p.Message), Has.One.Contains("its tree runs (pid 4242) but web.service could not be given it back (no)")
            .And.Contains("systemctl start web.service"));
    }

    [Test]
    public void A_refused_adoption_that_took_the_tree_down_ends_the_target_and_says_so()
    {
        _processes.Start(4242, startTime: 99);
        _manager.Status = new ServiceStatus("failed", "failed", 0);
        _manager.AdoptFails = true;
        _manager.OnAdopt = () => _processes.Exit(4242); // a failed start: systemd cleans up the unit's cgroup
        var t = Run(TargetPhase.Restored);

        Assert.That(ServiceHandback.HandBack(Context(), t), Is.True, "the caller journals the change");
        Assert.That(t.Phase, Is.EqualTo(TargetPhase.Ended));
        Assert.That(t.Error, Does.Contain("systemd did not take the restored tree as web.service's main process (no) and ended it")
            .And.Contains("not restored again").And.Contains("systemctl start web.service"));
    }

    [TestCase("active")]
    [TestCase("activating")]
    [TestCase("reloading")]
    public void A_restore_is_refused_when_systemd_runs_the_unit_again(string state)
    {
        _manager.Status = new ServiceStatus(state, "running", 777);

        var e = Assert.ThrowsAsync<InvalidOperationException>(() => ServiceHandback.WaitSettledAsync(Context(), Run(TargetPhase.Dumped), CancellationToken.None));

        Assert.That(e!.Message, Does.Contain($"systemd runs web.service again ({state}, main pid 777)").And.Contains("would make two copies").And.Contains("images are kept"));
    }

    [Test]
    public async Task A_unit_systemd_is_still_ending_after_the_limit_is_not_restored_into()
    {
        var clock = new Microsoft.Extensions.Time.Testing.FakeTimeProvider();
        _manager.Status = new ServiceStatus("deactivating", "stop-sigterm", 0);

        var wait = ServiceHandback.WaitSettledAsync(Context(clock), Run(TargetPhase.Dumped), CancellationToken.None);
        for (var i = 0; i < 700 && !wait.IsCompleted; i++)
        {
            clock.Advance(TimeSpan.FromMilliseconds(50));
            await Task.Yield();
        }

        Assert.That(async () => await wait.WaitAsync(TimeSpan.FromSeconds(10)), Throws.InvalidOperationException.With.Message.Contains("deactivating"));
    }

    [Test]
    public void A_target_that_is_no_service_is_left_alone()
    {
        var t = TargetRun.FromJournal(new JournalTarget { Id = "pid:7", Folder = "00-pid-7", Settings = new TargetCriuSettings(), Phase = TargetPhase.Restored, RestoredPid = 7 }, "/nonexistent");
        var context = Context();

        ServiceHandback.HandBack(context, t);
        ServiceHandback.Release(context, t);

        Assert.That(_manager.Calls, Is.Empty);
    }

    [Test]
    public void A_release_systemd_refuses_fails_the_target_before_anything_freezes_naming_the_manager()
    {
        _manager.ReleaseFails = true;

        var e = Assert.Throws<TargetNotFoundException>(() => ServiceHandback.Release(Context(), Run(TargetPhase.Planned)));

        Assert.That(e!.Problem, Is.EqualTo(TargetProblem.ManagerUnavailable));
        Assert.That(e.Message, Does.Contain("systemd could not be told to leave web.service alone while it is checkpointed (no); nothing was frozen"));
    }

    [Test]
    public async Task A_restore_waits_while_systemd_is_still_ending_the_unit()
    {
        var clock = new Microsoft.Extensions.Time.Testing.FakeTimeProvider();
        var context = Context(clock);
        _manager.Status = new ServiceStatus("deactivating", "stop-sigterm", 0);

        var wait = ServiceHandback.WaitSettledAsync(context, Run(TargetPhase.Dumped), CancellationToken.None);
        clock.Advance(TimeSpan.FromMilliseconds(200));
        await Task.Delay(100);
        Assert.That(wait.IsCompleted, Is.False, "systemd is still acting on the unit's end");

        _manager.Status = new ServiceStatus("failed", "failed", 0);
        clock.Advance(TimeSpan.FromMilliseconds(100));
        await wait.WaitAsync(TimeSpan.FromSeconds(10));
    }

    /// <summary>Records what it is asked; answers with <see cref="Status"/>; fails on demand.</summary>
    private sealed class RecordingServiceManager : IServiceManager
    {
        public List<string> Calls { get; } = [];

        public ServiceStatus Status { get; set; } = new("inactive", "dead", 0);

        public bool AdoptFails { get; set; }

        public bool ReleaseFails { get; set; }

        public void Release(ServiceUnit unit)
        {
            Calls.Add($"release {unit.Name}");
            if (ReleaseFails)
            {
                throw new ServiceManagerException("no");
            }
        }

        ServiceStatus IServiceManager.Status(ServiceUnit unit)
        {
            Calls.Add($"status {unit.Name}");
            return Status;
        }

        public void Adopt(ServiceUnit unit, int mainPid)
        {
            Calls.Add($"adopt {unit.Name} {mainPid}");
            OnAdopt?.Invoke();
            if (AdoptFails)
            {
                throw new ServiceManagerException("no");
            }
        }

        public Action? OnAdopt { get; set; }

        public void Return(ServiceUnit unit) => Calls.Add($"return {unit.Name}");
    }

    private sealed class SynchronousProgress<T>(Action<T> report) : IProgress<T>
    {
        public void Report(T value) => report(value);
    }
}
