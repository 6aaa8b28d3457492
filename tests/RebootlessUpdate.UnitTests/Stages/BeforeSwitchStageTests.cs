using System.Diagnostics;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Criu.Protocol;
using RebootlessUpdate.Images;
using RebootlessUpdate.Kexec;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;
using RebootlessUpdate.Targets;
using RebootlessUpdate.TestSupport;
using RebootlessUpdate.UnitTests.Criu;
using RebootlessUpdate.UnitTests.Images;
using RebootlessUpdate.UnitTests.Kexec;

namespace RebootlessUpdate.UnitTests.Stages;

/// <summary>
/// Plan, LoadKernel, Seal, Commit, Jump and the Dump stage's rollback, each over a real store and journal,
/// real processes as targets, the fake kexec system, and CRIU's held dump requests played by the test.
/// (Dumping itself needs criu: the host tests cover it.)
/// </summary>
[NonParallelizable]
public partial class BeforeSwitchStageTests
{
    private StoreFixture _f = null!;
    private FakeKexecSystem _kexec = null!;
    private readonly List<Process> _started = [];

    [SetUp]
    public void SetUp()
    {
        _f = new StoreFixture();
        _kexec = new FakeKexecSystem().WithKexec();
    }

    [TearDown]
    public void TearDown()
    {
        foreach (var p in _started.Where(p => !p.HasExited))
        {
            p.Kill();
            p.WaitForExit();
        }

        _started.Clear();
        _kexec.Dispose();
        _f.Dispose();
    }

    private Process Sleeper()
    {
        var p = Process.Start("sleep", "60")!;
        _started.Add(p);
        return p;
    }

    private static ProcessIdentity Exited()
    {
        using var p = Process.Start("true")!;
        var identity = ProcessIdentity.Of(p.Id) ?? new ProcessIdentity(p.Id, 1);
        p.WaitForExit();
        return identity;
    }

    private async Task<UpdateContext> Planned(UpdateMode mode = UpdateMode.Update, int targets = 1, IImageStore? store = null)
    {
        var context = new UpdateContext(mode, Enumerable.Range(0, targets).Select(_ => UpdateTarget.ProcessTree(Sleeper().Id))) { Store = store ?? _f.Store, TimeProvider = _f.Clock };
        context.CriuVersion = "4.1.1";
        await new PlanStage(checkCapacity: false).ExecuteAsync(context, CancellationToken.None);
        return context;
    }

    /// <summary>Plays CRIU holding a target frozen at post-dump: the request ends when the run decides (commit: done; veto: resumed in place).</summary>
    private TargetRun.Pending Held(TargetRun t, Exception? commitFails = null, ProcessIdentity? original = null)
    {
        var pending = new TargetRun.Pending();
        pending.Request = pending.Decision.Task.ContinueWith(d => d.Result
            ? commitFails is null ? new CriuDumpResult(null, "dump.log") : throw commitFails
            : throw new InvalidOperationException("vetoed at post-dump: resumed in place"), TaskScheduler.Default);
        DumpRequested(t, original ?? ProcessIdentity.Of(t.Resolved!.RootPid) ?? new ProcessIdentity(t.Resolved.RootPid, 1), pending);
        t.MoveTo(TargetPhase.Frozen);
        return pending;
    }

    /// <summary>As the Dump stage records a target whose dump it asks for.</summary>
    private void DumpRequested(TargetRun t, ProcessIdentity original, TargetRun.Pending pending) =>
        t.DumpRequested(Path.Combine(_f.StoreRoot, "sets", t.Folder!), original, false, _f.Clock.GetTimestamp(), _f.Clock.GetUtcNow(), pending);

    private JournalRecord Reread(UpdateContext context) =>
        UpdateJournal.Open(_f.StoreRoot, context.SetId!, context.StoreLock!, _f.Clock)!.Record;

    /// <summary>A criu that answers every request with success (VERSION with 4.1.1).</summary>
    private static CriuClient WorkingCriu() => FakeCriuPeer.Client(async peer =>
    {
        var req = await peer.NextAsync();
        peer.Write(req.Type == criu_req_type.Version
            ? new criu_resp { Type = req.Type, Success = true, Version = new criu_version { MajorNumber = 4, MinorNumber = 1, Sublevel = 1 } }
            : FakeCriuPeer.Ok(req.Type));
    });

    [Test]
    public async Task Preflight_of_an_update_requires_kexec_and_a_rehearsals_does_not()
    {
        var kexecPossible = KexecCapabilities.Probe().IsPossible; // this machine's own kernel decides the update's outcome
        var rehearsal = new UpdateContext(UpdateMode.Rehearse, []) { Store = _f.Store, Criu = WorkingCriu() };
        await new PreflightStage(requireKexec: false).ExecuteAsync(rehearsal, CancellationToken.None);
        Assert.That(rehearsal.CriuVersion, Is.EqualTo("4.1.1"));

        var update = new UpdateContext(UpdateMode.Update, []) { Store = _f.Store, Criu = WorkingCriu() };
        if (kexecPossible)
        {
            await new PreflightStage(requireKexec: true).ExecuteAsync(update, CancellationToken.None);
        }
        else
        {
            var e = Assert.ThrowsAsync<PreflightException>(async () => await new PreflightStage(requireKexec: true).ExecuteAsync(update, CancellationToken.None));
            Assert.That(e!.Problem, Is.EqualTo(ReadinessProblem.KexecUnavailable));
            Assert.That(e.Report.Checks.Where(c => !c.Ok).Select(c => c.Name), Is.EqualTo(new[] { "kexec" }), "only kexec is missing");
        }
    }

    [Test]
    public void Plan_refuses_a_run_with_no_target_before_touching_the_store()
    {
        var context = new UpdateContext(UpdateMode.Rehearse, []) { Store = _f.Store };

        Assert.That(async () => await new PlanStage().ExecuteAsync(context, CancellationToken.None),
            Throws.ArgumentException.With.Message.Contains("name at least one target"));
        Assert.That(context.StoreLock, Is.Null);
        Assert.That(_f.Store.ListSets(), Is.Empty);
    }

    [Test]
    public async Task Plan_locks_the_store_and_journals_each_root_with_its_start_time_before_anything_is_frozen()
    {
        var context = await Planned(targets: 2);
        try
        {
            var record = Reread(context);
            Assert.That(record.State, Is.EqualTo(JournalState.Planned));
            Assert.That(record.Mode, Is.EqualTo(UpdateMode.Update));
            Assert.That(record.Targets.Select(t => t.Folder), Is.Unique);
            foreach (var (jt, p) in record.Targets.Zip(_started))
            {
                Assert.That(jt.RootPid, Is.EqualTo(p.Id));
                Assert.That(jt.RootStartTime, Is.EqualTo(ProcessIdentity.Of(p.Id)!.Value.StartTime), "tells the original from a reused pid after a crash");
            }

            Assert.That(_f.Store.ListSets().Single().SetId, Is.EqualTo(context.SetId));
            Assert.That(() => _f.Open().AcquireLock(), Throws.InstanceOf<ImageStoreException>(), "a second run is kept out");
        }
        finally
        {
            context.ReleaseLock();
        }
    }

    [Test]
    public async Task Plan_refuses_while_another_run_is_unfinished_and_creates_nothing()
    {
        var first = await Planned();
        first.ReleaseLock();

        var second = new UpdateContext(UpdateMode.Rehearse, [UpdateTarget.ProcessTree(Sleeper().Id)]) { Store = _f.Store, TimeProvider = _f.Clock };
        second.CriuVersion = "4.1.1";
        var e = Assert.ThrowsAsync<JournalException>(async () => await new PlanStage(checkCapacity: false).ExecuteAsync(second, CancellationToken.None));
        second.ReleaseLock();

        Assert.That(e!.Problem, Is.EqualTo(JournalProblem.NeedsAttention));
        Assert.That(e.Message, Does.Contain(first.SetId));
        Assert.That(_f.Store.ListSets().Select(s => s.SetId), Is.EqualTo(new[] { first.SetId }), "no second set");
    }

    [TestCase(TargetPhase.Planned, false)]
    [TestCase(TargetPhase.Failed, true)]
    public async Task Plan_compensation_deletes_the_set_only_when_every_target_runs(TargetPhase phase, bool kept)
    {
        var context = await Planned();
        try
        {
            if (phase == TargetPhase.Failed)
            {
                context.Targets[0].MoveTo(TargetPhase.Failed);
            }

            await new PlanStage().CompensateAsync(context, CancellationToken.None);

            Assert.That(Directory.Exists(context.CheckpointSet!.Directory), Is.EqualTo(kept), "the images are the only copy of a target that is not back");
            Assert.That(context.StoreLock, Is.Not.Null, "the lock stays until the pipeline journaled the rollback");
        }
        finally
        {
            context.ReleaseLock();
        }
    }

    [Test]
    public async Task LoadKernel_journals_the_next_command_line_with_the_resume_marker_and_its_compensation_unloads()
    {
        var testbed = Testbed.Require();
        var cmdline = Path.Combine(_kexec.Root, "cmdline");
        File.WriteAllText(cmdline, "console=ttyS0 root=/dev/vda rebootless.resume=20200101T000000Z-00000000\n");
        var context = await Planned();
        try
        {
            var stage = new LoadKernelStage(new LoadKernelStageOptions
            {
                KernelPath = Path.Combine(testbed.RootFs, "boot", "vmlinuz-" + testbed.NewKernel),
                CurrentCommandLinePath = cmdline,
                Loader = new KexecLoader(new KexecLoaderOptions(), _kexec),
            });

            await stage.ExecuteAsync(context, CancellationToken.None);

            var record = Reread(context);
            Assert.That(record.State, Is.EqualTo(JournalState.KernelLoaded));
            Assert.That(record.NextCommandLine, Does.Contain($"{RebootlessInfo.ResumeParameter}={context.SetId}").And.Contain("console=ttyS0"));
            Assert.That(record.NextCommandLine, Does.Not.Contain("20200101T000000Z-00000000"), "an old marker is replaced, not kept");
            Assert.That(_kexec.KexecFileLoadCalls.Single().CommandLine, Is.EqualTo(record.NextCommandLine));
            Assert.That(_kexec.Loaded, Is.True);

            await stage.CompensateAsync(context, CancellationToken.None);
            Assert.That(_kexec.Loaded, Is.False, "a rolled-back update leaves no kernel for a later `systemctl kexec`");
            await stage.CompensateAsync(context, CancellationToken.None);
            Assert.That(_kexec.KexecFileLoadCalls, Has.Count.EqualTo(2), "unloaded once");
        }
        finally
        {
            context.ReleaseLock();
        }
    }

    [Test]
    public async Task Seal_writes_the_manifest_and_then_journals_sealed_with_the_held_targets_in_the_same_record()
    {
        var context = await Planned(targets: 2);
        try
        {
            var held = Held(context.Targets[0]);
            context.Targets[1].DumpFinished(null); // CRIU ended it without a hold
            var dir = Directory.CreateDirectory(Path.Combine(context.CheckpointSet!.ImagesDirectory, context.Targets[0].Folder!)).FullName;
            File.WriteAllText(Path.Combine(dir, "pstree.img"), "tree");
            File.WriteAllText(Path.Combine(dir, "pages-1.img"), "pages");

            await new SealStage().ExecuteAsync(context, CancellationToken.None);

            Assert.That(Reread(context).State, Is.EqualTo(JournalState.Sealed));
            Assert.That(Reread(context).History[^1].Detail, Does.StartWith("2 files"));
            Assert.That(context.Targets.Select(t => t.Phase), Is.EqualTo(new[] { TargetPhase.Sealed, TargetPhase.Dumped }));
            Assert.That(Reread(context).Targets.Select(t => t.Phase), Is.EqualTo(new[] { TargetPhase.Sealed, TargetPhase.Dumped }),
                "the jump guard reads the targets' phases from the sealed record");
            Assert.That(held.Decision.Task.IsCompleted, Is.False, "sealing decides nothing for a held target");
            Assert.That((await _f.Store.VerifyAsync(context.SetId!)).IsValid, Is.True);
        }
        finally
        {
            context.ReleaseLock();
        }
    }

    [Test]
    public async Task Commit_ends_each_held_target_and_keeps_the_cause_of_a_dump_that_could_not_finish()
    {
        var context = await Planned(UpdateMode.Rehearse, targets: 2);
        try
        {
            var full = new IOException("No space left on device");
            var ok = Held(context.Targets[0]);
            var failing = Held(context.Targets[1], commitFails: full);

            var e = Assert.ThrowsAsync<InvalidOperationException>(async () => await new CommitStage().ExecuteAsync(context, CancellationToken.None));

            Assert.That(ok.Decision.Task.Result && failing.Decision.Task.Result, Is.True, "both were told to finish");
            Assert.That(context.Targets[0].Phase, Is.EqualTo(TargetPhase.Dumped));
            Assert.That(context.Targets[1].Phase, Is.EqualTo(TargetPhase.Failed));
            Assert.That(e!.Message, Does.Contain(context.Targets[1].Target.Id).And.Contain("No space left on device"));
            Assert.That(e.InnerException, Is.SameAs(full), "a script tells a full store or a CRIU timeout by the cause");
            Assert.That(Reread(context).Targets.Select(t => t.Phase), Is.EqualTo(new[] { TargetPhase.Dumped, TargetPhase.Failed }), "journaled");
        }
        finally
        {
            context.ReleaseLock();
        }
    }

    [Test]
    public async Task Dump_rollback_vetoes_held_dumps_and_judges_each_target_by_what_runs()
    {
        var context = await Planned(UpdateMode.Rehearse, targets: 3);
        try
        {
            var (held, gone, restoring) = (context.Targets[0], context.Targets[1], context.Targets[2]);
            var pending = Held(held, original: ProcessIdentity.Of(_started[0].Id));
            gone.DumpRequested(Path.Combine(context.CheckpointSet!.ImagesDirectory, gone.Folder!), Exited(), false, 0, _f.Clock.GetUtcNow(), new TargetRun.Pending());
            gone.MoveTo(TargetPhase.Frozen);
            gone.MoveTo(TargetPhase.Dumped);
            restoring.MoveTo(TargetPhase.Frozen);
            restoring.MoveTo(TargetPhase.Dumped);
            restoring.MoveTo(TargetPhase.Restoring);

            await new DumpStage(new DumpStageOptions()).CompensateAsync(context, CancellationToken.None);

            Assert.That(pending.Decision.Task.Result, Is.False, "vetoed: CRIU resumes it in place");
            Assert.That(held.Phase, Is.EqualTo(TargetPhase.Resumed));
            Assert.That(gone.Phase, Is.EqualTo(TargetPhase.Failed));
            Assert.That(gone.Error, Does.Contain("no complete images to restore from"));
            Assert.That(restoring.Phase, Is.EqualTo(TargetPhase.Restoring), "a CRIU may still bring it up: never asked a second time");
            Assert.That(restoring.Error, Does.Contain($"rebootless resume --set {context.SetId}"));
            Assert.That(Reread(context).Targets.Select(t => t.Phase),
                Is.EqualTo(new[] { TargetPhase.Resumed, TargetPhase.Failed, TargetPhase.Restoring }), "journaled");
        }
        finally
        {
            context.ReleaseLock();
        }
    }

    private JumpStage Jump(bool allowed = true) => new(new JumpStageOptions
    {
        Jump = new KexecJump(new KexecJumpOptions { UseSystemdWhenPid1 = false }, _kexec,
            name => allowed && name == KexecJumpOptions.AllowanceVariable ? "1" : null, () => true),
    });

    [Test]
    public async Task Jump_of_an_unsealed_set_is_refused_before_any_held_target_is_ended()
    {
        var context = await Planned();
        try
        {
            _kexec.Loaded = true;
            var pending = Held(context.Targets[0]);

            var e = Assert.ThrowsAsync<KexecException>(async () => await Jump().ExecuteAsync(context, CancellationToken.None));

            Assert.That(e!.Reason, Is.EqualTo(KexecFailureReason.JumpRefused));
            Assert.That(e.Message, Does.Contain("never reached 'sealed'"));
            Assert.That(pending.Decision.Task.IsCompleted, Is.False, "CRIU still holds it: the rollback resumes it in place");
            Assert.That(context.PointOfNoReturnPassed, Is.False);
            Assert.That(_kexec.RebootCalls, Is.Zero);
        }
        finally
        {
            context.ReleaseLock();
        }
    }

    [Test]
    public async Task Jump_commits_syncs_and_jumps_and_a_failed_jump_is_not_past_the_point_of_no_return()
    {
        var context = await Planned();
        try
        {
            _kexec.Loaded = true;
            var pending = Held(context.Targets[0]);
            context.Targets[0].MarkSealed();
            context.RequireJournal().Transition(JournalState.Sealed, null, context);

            var e = Assert.ThrowsAsync<KexecException>(async () => await Jump().ExecuteAsync(context, CancellationToken.None));

            Assert.That(e!.Reason, Is.EqualTo(KexecFailureReason.JumpFailed), "the fake reboot(2) returns EINVAL");
            Assert.That(pending.Decision.Task.Result, Is.True, "CRIU was let finish the dump before the jump");
            Assert.That(context.Targets[0].Phase, Is.EqualTo(TargetPhase.Dumped));
            Assert.That((_kexec.SyncCalls, _kexec.RebootCalls), Is.EqualTo((1, 1)));
            Assert.That(context.PointOfNoReturnPassed, Is.False, "still on this kernel: the rollback restores the target from its images");
            Assert.That(Reread(context).History.Select(h => h.State), Does.Contain(JournalState.Jumping));
        }
        finally
        {
            context.ReleaseLock();
        }
    }

    [Test]
    public async Task Jump_under_a_test_runner_without_the_allowance_is_refused()
    {
        var context = await Planned();
        try
        {
            _kexec.Loaded = true;
            context.RequireJournal().Transition(JournalState.Sealed);

            Assert.That(async () => await Jump(allowed: false).ExecuteAsync(context, CancellationToken.None),
                Throws.TypeOf<KexecException>().With.Message.Contains(KexecJumpOptions.AllowanceVariable));
            Assert.That(_kexec.RebootCalls, Is.Zero);
        }
        finally
        {
            context.ReleaseLock();
        }
    }
}
