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

    private UpdateContext Context(TimeProvider? clock = null, UpdateMode mode = UpdateMode.Rehearse) => new(mode, [])
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

    [Test]
    public async Task After_a_jump_a_queued_boot_start_becomes_the_adoption_once_the_boot_goes_on()
    {
        _processes.Start(4242, startTime: 99);
        _manager.QueuedStart = true;
        var boot = new HeldBoot();
        // systemd runs the queued start (the no-op reading the pid file) only once the resume says it is ready.
        boot.OnRelease = () => _manager.Status = new ServiceStatus("active", "running", 4242);
        var context = Context(mode: UpdateMode.Resume);
        context.BootGate = boot;
        var t = Run(TargetPhase.Restored);
        context.Targets = [t];

        ServiceHandback.HandBack(context, t);
        Assert.That(_manager.Calls, Is.EqualTo(new[] { "status web.service", "adopt web.service 4242 left to the queued start" }));
        Assert.That(boot.Holding, Is.True, "nothing released the boot yet");

        var changed = await ServiceHandback.ReleaseBootAsync(context, CancellationToken.None);

        Assert.That(changed, Is.False);
        Assert.That(boot.Holding, Is.False);
        Assert.That(_manager.Calls.Skip(2), Is.EqualTo(new[] { "clear resume order", "status web.service", "return web.service" }));
        Assert.That(t.Phase, Is.EqualTo(TargetPhase.Restored));
        Assert.That(_progress.Select(p => p.Message), Has.One.Contains("web.service is active again with the restored main pid 4242"));
    }

    [Test]
    public async Task A_queued_start_that_fails_and_takes_the_tree_with_it_ends_the_target()
    {
        _processes.Start(4242, startTime: 99);
        _manager.QueuedStart = true;
        var boot = new HeldBoot();
        boot.OnRelease = () =>
        {
            _manager.Status = new ServiceStatus("failed", "failed", 0);
            _processes.Exit(4242);
        };
        var context = Context(mode: UpdateMode.Resume);
        context.BootGate = boot;
        var t = Run(TargetPhase.Restored);
        ServiceHandback.HandBack(context, t);

        var changed = await ServiceHandback.ReleaseBootAsync(context, CancellationToken.None);

        Assert.That(changed, Is.True, "the target's end is journaled");
        Assert.That(t.Phase, Is.EqualTo(TargetPhase.Ended));
        Assert.That(t.Error, Does.Contain("its queued start left it failed"));
        Assert.That(_manager.Calls.Last(), Is.EqualTo("return web.service"));
    }

    [Test]
    public async Task A_queued_start_that_never_runs_is_given_up_after_the_limit_with_the_tree_left_running()
    {
        var clock = new Microsoft.Extensions.Time.Testing.FakeTimeProvider();
        _processes.Start(4242, startTime: 99);
        _manager.QueuedStart = true;
        var context = Context(clock, UpdateMode.Resume);
        context.BootGate = new HeldBoot();
        var t = Run(TargetPhase.Restored);
        ServiceHandback.HandBack(context, t);

        var release = ServiceHandback.ReleaseBootAsync(context, CancellationToken.None);
        for (var i = 0; i < 100 && !release.IsCompleted; i++)
        {
            clock.Advance(TimeSpan.FromSeconds(5));
            await Task.Delay(1);
        }

        Assert.That(await release.WaitAsync(TimeSpan.FromSeconds(10)), Is.False);
        Assert.That(t.Phase, Is.EqualTo(TargetPhase.Restored), "the tree runs; its start has not run yet");
        Assert.That(_progress.Select(p => p.Message), Has.Some.Contains("queued start has not run after 3 minutes"));
        Assert.That(_manager.Calls.Last(), Is.EqualTo("jobs web.service"));
        Assert.That(_manager.Calls, Has.None.EqualTo("return web.service"), "the drop-ins stay while the start waits: it must take the restored pid");

        // The Report stage hands every target back once more: this one is left alone (no adoption again, no kill).
        var calls = _manager.Calls.Count;
        Assert.That(ServiceHandback.HandBack(context, t), Is.False);
        Assert.That(_manager.Calls, Has.Count.EqualTo(calls));
        Assert.That(_processes.Killed, Is.Empty);
    }

    [Test]
    public async Task A_queued_start_gone_without_taking_the_tree_leaves_it_running_unsupervised()
    {
        var clock = new Microsoft.Extensions.Time.Testing.FakeTimeProvider();
        _processes.Start(4242, startTime: 99);
        _manager.QueuedStart = true;
        var boot = new HeldBoot();
        var context = Context(clock, UpdateMode.Resume);
        context.BootGate = boot;
        var t = Run(TargetPhase.Restored);
        ServiceHandback.HandBack(context, t);
        boot.OnRelease = () => _manager.QueuedStart = false; // the job went away (cancelled by someone) and the unit stayed down

        var release = ServiceHandback.ReleaseBootAsync(context, CancellationToken.None);
        for (var i = 0; i < 100 && !release.IsCompleted; i++)
        {
            clock.Advance(TimeSpan.FromSeconds(5));
            await Task.Delay(1);
        }

        Assert.That(await release.WaitAsync(TimeSpan.FromSeconds(10)), Is.False);
        Assert.That(t.Phase, Is.EqualTo(TargetPhase.Restored));
        Assert.That(_manager.Calls.Last(), Is.EqualTo("return web.service"));
        Assert.That(_progress.Select(p => p.Message), Has.Some.Contains("could not be given it back (its queued start left it inactive"));
    }

    [Test]
    public async Task Once_the_boot_goes_on_a_service_whose_tree_is_not_back_is_never_restored_in_this_run()
    {
        var context = Context(mode: UpdateMode.Resume);
        context.BootGate = new HeldBoot();
        var notBack = Run(TargetPhase.Dumped);
        notBack.RestoreFailed("restore failed: criu could not open a file");
        context.Targets = [notBack];

        var changed = await ServiceHandback.ReleaseBootAsync(context, CancellationToken.None);

        Assert.That(changed, Is.True);
        Assert.That(notBack.Phase, Is.EqualTo(TargetPhase.Failed), "a retry of the stage finds nothing to restore");
        Assert.That(notBack.Error, Does.Contain("criu could not open a file").And.Contains("systemd starts web.service afresh"));
    }

    [Test]
    public async Task Without_a_boot_waiting_a_tree_not_back_stays_restorable()
    {
        var context = Context(mode: UpdateMode.Resume);
        context.BootGate = SystemdNotifyGate.None;
        var notBack = Run(TargetPhase.Dumped);
        context.Targets = [notBack];

        Assert.That(await ServiceHandback.ReleaseBootAsync(context, CancellationToken.None), Is.False);
        Assert.That(notBack.Phase, Is.EqualTo(TargetPhase.Dumped));
    }

    [Test]
    public void A_queued_start_that_cannot_be_made_the_adoption_ends_the_restored_tree_so_that_it_starts_afresh_alone()
    {
        _processes.Start(4242, startTime: 99);
        _manager.QueuedStart = true;
        var context = Context(mode: UpdateMode.Resume);
        context.BootGate = SystemdNotifyGate.None; // nobody waits for this run: its start would run the unit's own command
        var t = Run(TargetPhase.Restored);

        var changed = ServiceHandback.HandBack(context, t);

        Assert.That(changed, Is.True);
        Assert.That(_manager.Calls, Does.Contain("adopt web.service 4242"));
        Assert.That(context.QueuedAdoptions, Is.Empty);
        Assert.That(_processes.Killed, Is.EqualTo(new[] { 4242 }), "never two copies");
        Assert.That(t.Phase, Is.EqualTo(TargetPhase.Ended));
        Assert.That(t.Error, Does.Contain("the unit starts afresh"));
    }

    [Test]
    public void While_the_boot_waits_a_unit_systemd_says_nothing_about_does_not_keep_its_tree_next_to_a_start_that_may_be_queued()
    {
        _processes.Start(4242, startTime: 99);
        _manager.StatusFails = true;
        var context = Context(mode: UpdateMode.Resume);
        context.BootGate = new HeldBoot();
        var t = Run(TargetPhase.Restored);

        Assert.That(ServiceHandback.HandBack(context, t), Is.True);

        Assert.That(_processes.Killed, Is.EqualTo(new[] { 4242 }), "the boot's start of the unit may be queued: never two copies");
        Assert.That(t.Phase, Is.EqualTo(TargetPhase.Ended));
        Assert.That(t.Error, Does.Contain("did not finish within 200 s").And.Contain("the unit starts afresh"));
        Assert.That(_manager.Calls, Has.None.StartsWith("adopt"));
    }

    [Test]
    public void Outside_a_held_boot_a_unit_systemd_says_nothing_about_keeps_its_tree_and_is_reported()
    {
        _processes.Start(4242, startTime: 99);
        _manager.StatusFails = true;
        var t = Run(TargetPhase.Restored);

        Assert.That(ServiceHandback.HandBack(Context(), t), Is.False);

        Assert.That(_processes.Killed, Is.Empty);
        Assert.That(t.Phase, Is.EqualTo(TargetPhase.Restored));
        Assert.That(_progress.Select(p => p.Message), Has.Some.Contains("could not be given it back"));
    }

    [Test]
    public void A_users_unit_is_never_left_to_a_queued_start_the_resume_does_not_hold()
    {
        _processes.Start(4242, startTime: 99);
        _manager.QueuedStart = true;
        var context = Context(mode: UpdateMode.Resume);
        context.BootGate = new HeldBoot();

        ServiceHandback.HandBack(context, Run(TargetPhase.Restored, new ServiceUnit { Name = "web.service", UserManager = true }));

        Assert.That(_manager.Calls, Does.Contain("adopt web.service 4242"), "not left to the queued start");
        Assert.That(context.QueuedAdoptions, Is.Empty);
    }

    [Test]
    public void No_run_speaks_for_a_unit_unless_told_to()
    {
        Assert.That(new UpdateContext(UpdateMode.Rehearse, []).BootGate, Is.SameAs(SystemdNotifyGate.None));
        Assert.That(new UpdateContext(UpdateMode.Resume, []).BootGate, Is.SameAs(SystemdNotifyGate.None));
    }

    [Test]
    public void Before_the_jump_the_services_are_ordered_after_the_resume_and_a_failure_to_do_so_stops_the_jump()
    {
        var context = Context();
        context.Targets = [Run(TargetPhase.Sealed)];
        ServiceHandback.OrderResumeFirst(context);
        Assert.That(_manager.Calls, Is.EqualTo(new[] { "order resume before web.service" }));

        _manager.OrderFails = true;
        var e = Assert.Throws<InvalidOperationException>(() => ServiceHandback.OrderResumeFirst(context));
        Assert.That(e!.Message, Does.Contain("read-only file system").And.Contains("nothing jumps"));
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

        /// <summary>systemd does not answer (a query that outlasted its bound).</summary>
        public bool StatusFails { get; set; }

        ServiceStatus IServiceManager.Status(ServiceUnit unit)
        {
            Calls.Add($"status {unit.Name}");
            return StatusFails ? throw new ServiceManagerException("systemctl show did not finish within 200 s") : Status;
        }

        /// <summary>The boot queued a start of the unit that waits for the resume.</summary>
        public bool QueuedStart { get; set; }

        bool IServiceManager.StartQueued(ServiceUnit unit)
        {
            Calls.Add($"jobs {unit.Name}");
            return QueuedStart;
        }

        public bool OrderFails { get; set; }

        public bool Adopt(ServiceUnit unit, int mainPid, bool mayLeaveToQueuedStart)
        {
            var leave = QueuedStart && mayLeaveToQueuedStart;
            Calls.Add($"adopt {unit.Name} {mainPid}" + (leave ? " left to the queued start" : ""));
            OnAdopt?.Invoke();
            if (AdoptFails || (QueuedStart && !mayLeaveToQueuedStart))
            {
                throw new ServiceManagerException("no") { StartQueued = QueuedStart };
            }

            return leave;
        }

        public Action? OnAdopt { get; set; }

        public void Return(ServiceUnit unit) => Calls.Add($"return {unit.Name}");

        public void OrderResumeBefore(IReadOnlyCollection<ServiceUnit> units)
        {
            Calls.Add("order resume before " + string.Join(' ', units.Select(u => u.Name)));
            if (OrderFails)
            {
                throw new ServiceManagerException("read-only file system");
            }
        }

        public void ClearResumeOrder() => Calls.Add("clear resume order");
    }

    /// <summary>A boot that waits until released.</summary>
    private sealed class HeldBoot : IBootGate
    {
        public bool Holding { get; private set; } = true;

        public Action? OnRelease { get; set; }

        public void Release()
        {
            Holding = false;
            OnRelease?.Invoke();
        }
    }

    private sealed class SynchronousProgress<T>(Action<T> report) : IProgress<T>
    {
        public void Report(T value) => report(value);
    }
}
