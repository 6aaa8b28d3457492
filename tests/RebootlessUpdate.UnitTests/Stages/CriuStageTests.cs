using System.Diagnostics;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Criu.Protocol;
using RebootlessUpdate.Images;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;
using RebootlessUpdate.Targets;
using RebootlessUpdate.UnitTests.Criu;
using RebootlessUpdate.UnitTests.Images;

namespace RebootlessUpdate.UnitTests.Stages;

/// <summary>
/// Dump and Restore over a scripted CRIU (the other end of a real socketpair, see <see cref="FakeCriuPeer"/>):
/// what is journaled before each request and notification is answered, and how each of CRIU's answers is judged.
/// The targets are real processes; the host tests drive the real criu.
/// </summary>
[NonParallelizable]
public class CriuStageTests
{
    private StoreFixture _f = null!;
    private readonly List<Process> _started = [];
    private readonly List<Task> _scripts = [];

    [SetUp]
    public void SetUp() => _f = new StoreFixture();

    [TearDown]
    public void TearDown()
    {
        foreach (var p in _started.Where(p => !p.HasExited))
        {
            p.Kill();
            p.WaitForExit();
        }

        _started.Clear();
        _scripts.Clear();
        _f.Dispose();
    }

    private Process Sleeper()
    {
        var p = Process.Start("sleep", "60")!;
        _started.Add(p);
        return p;
    }

    private static criu_resp Failure(criu_req_type type, string message) =>
        new() { Type = type, Success = false, CrErrno = 22, CrErrmsg = message };

    private JournalTarget Journaled(UpdateContext context, int i) =>
        UpdateJournal.Open(_f.StoreRoot, context.SetId!, context.StoreLock!, _f.Clock)!.Record.Targets[i];

    /// <summary>Every connection after the first <paramref name="scripts"/> gets the last script.</summary>
    private CriuClient Scripted(params Func<FakeCriuPeer, Task>[] scripts)
    {
        var next = 0;
        return FakeCriuPeer.Client(peer => scripts[Math.Min(Interlocked.Increment(ref next) - 1, scripts.Length - 1)](peer), _scripts);
    }

    // ---- Dump ----

    private async Task<UpdateContext> Planned(CriuClient criu, int targets, IProgress<UpdateProgress>? progress = null)
    {
        var context = new UpdateContext(UpdateMode.Rehearse, Enumerable.Range(0, targets).Select(_ => UpdateTarget.ProcessTree(Sleeper().Id)))
        {
            Store = _f.Store,
            TimeProvider = _f.Clock,
            Criu = criu,
            Progress = progress,
        };
        context.CriuVersion = "4.1.1";
        await new PlanStage(checkCapacity: false).ExecuteAsync(context, CancellationToken.None);
        return context;
    }

    /// <summary>CRIU dumping one target: post-dump, then the run's decision (commit ends the tree, a veto resumes it).</summary>
    private static Func<FakeCriuPeer, Task> HeldDump(List<bool> decisions, Func<JournalState>? stateAtRequest = null, List<JournalState>? seen = null) => async peer =>
    {
        await peer.ExpectAsync(criu_req_type.Dump);
        if (stateAtRequest is not null)
        {
            seen!.Add(stateAtRequest());
        }

        await HoldAtPostDumpAsync(peer, decisions);
    };

    /// <summary>A dump request already read: CRIU holds the tree at post-dump, then acts on the run's decision.</summary>
    private static async Task HoldAtPostDumpAsync(FakeCriuPeer peer, List<bool> decisions)
    {
        peer.Write(new criu_resp { Type = criu_req_type.Notify, Success = true, Notify = new criu_notify { Script = "post-dump" } });
        var commit = (await peer.ExpectAsync(criu_req_type.Notify)).NotifySuccess;
        lock (decisions)
        {
            decisions.Add(commit);
        }

        peer.Write(commit ? FakeCriuPeer.Ok(criu_req_type.Dump) : Failure(criu_req_type.Dump, "post-dump script failed: resumed"));
    }

    [Test]
    public async Task Dump_journals_dumping_before_criu_is_asked_and_holds_every_target_until_commit()
    {
        var decisions = new List<bool>();
        var seen = new List<JournalState>();
        UpdateContext context = null!;
        context = await Planned(Scripted(HeldDump(decisions, () => UpdateJournal.Open(_f.StoreRoot, context.SetId!, context.StoreLock!, _f.Clock)!.State, seen)), 2);
        try
        {
            await new DumpStage(new DumpStageOptions()).ExecuteAsync(context, CancellationToken.None);

            Assert.That(seen, Is.EqualTo(new[] { JournalState.Dumping, JournalState.Dumping }));
            Assert.That(context.Targets.Select(t => t.Phase), Is.All.EqualTo(TargetPhase.Frozen));
            Assert.That(new[] { Journaled(context, 0).Phase, Journaled(context, 1).Phase }, Is.All.EqualTo(TargetPhase.Frozen), "journaled before any commit");
            Assert.That(decisions, Is.Empty, "CRIU holds both at post-dump");

            await new CommitStage().ExecuteAsync(context, CancellationToken.None);
            await Task.WhenAll(_scripts);

            Assert.That(decisions, Is.EqualTo(new[] { true, true }));
            Assert.That(context.Targets.Select(t => t.Phase), Is.All.EqualTo(TargetPhase.Dumped));
        }
        finally
        {
            context.ReleaseLock();
        }
    }

    private const string Unseizable = "Unseizable non-zombie 4242 found, state D, err -1/4";

    [Test]
    public async Task A_dump_criu_could_not_seize_is_asked_again_and_the_run_goes_on()
    {
        var decisions = new List<bool>();
        var progress = new List<string>();
        var context = await Planned(Scripted(HeldDump(decisions), async peer =>
        {
            await peer.ExpectAsync(criu_req_type.Dump);
            peer.Write(Failure(criu_req_type.Dump, Unseizable));
        }, HeldDump(decisions)), 2, new SyncProgress(p => progress.Add(p.Message ?? string.Empty)));
        try
        {
            await new DumpStage(new DumpStageOptions { SeizeRetryDelay = TimeSpan.Zero }).ExecuteAsync(context, CancellationToken.None);

            Assert.That(context.Targets.Select(t => t.Phase), Is.EqualTo(new[] { TargetPhase.Frozen, TargetPhase.Frozen }));
            Assert.That(progress.Where(m => m.Contains("asking again", StringComparison.Ordinal)).ToList(),
                Has.Count.EqualTo(1).And.Some.Contains(Unseizable).And.Some.Contains("attempt 2 of 3"));
            await TargetDump.CommitAsync(context);
            await Task.WhenAll(_scripts);
            Assert.That(decisions, Is.EqualTo(new[] { true, true }));
        }
        finally
        {
            context.ReleaseLock();
        }
    }

    [Test]
    public async Task A_dump_that_could_not_seize_a_tree_whose_root_is_gone_is_not_asked_again()
    {
        var progress = new List<string>();
        Process? root = null;
        var context = await Planned(Scripted(async peer =>
        {
            await peer.ExpectAsync(criu_req_type.Dump);
            root!.Kill();
            await root.WaitForExitAsync();
            peer.Write(Failure(criu_req_type.Dump, Unseizable));
        }), 1, new SyncProgress(p => progress.Add(p.Message ?? string.Empty)));
        root = _started[0];
        try
        {
            var e = Assert.ThrowsAsync<CriuRequestFailedException>(async () =>
                await new DumpStage(new DumpStageOptions { SeizeRetryDelay = TimeSpan.Zero }).ExecuteAsync(context, CancellationToken.None));

            Assert.That(e!.Message, Does.Contain(Unseizable));
            Assert.That(context.Targets[0].Phase, Is.EqualTo(TargetPhase.Failed));
            Assert.That(progress, Has.None.Contains("asking again"), "a tree that is not the one planned is not dumped");
        }
        finally
        {
            context.ReleaseLock();
        }
    }

    [Test]
    public async Task A_seize_failure_after_criu_announced_more_than_its_pre_dump_is_not_asked_again()
    {
        var progress = new List<string>();
        var context = await Planned(Scripted(async peer =>
        {
            await peer.ExpectAsync(criu_req_type.Dump);
            peer.Write(new criu_resp { Type = criu_req_type.Notify, Success = true, Notify = new criu_notify { Script = "network-lock" } });
            await peer.ExpectAsync(criu_req_type.Notify);
            peer.Write(Failure(criu_req_type.Dump, Unseizable));
        }), 1, new SyncProgress(p => progress.Add(p.Message ?? string.Empty)));
        try
        {
            Assert.ThrowsAsync<CriuRequestFailedException>(async () =>
                await new DumpStage(new DumpStageOptions { SeizeRetryDelay = TimeSpan.Zero }).ExecuteAsync(context, CancellationToken.None));

            Assert.That(context.Targets[0].Phase, Is.EqualTo(TargetPhase.Failed));
            Assert.That(progress, Has.None.Contains("asking again"), "CRIU had the tree stopped: its memory may have been touched");
        }
        finally
        {
            context.ReleaseLock();
        }
    }

    [Test]
    public async Task A_cancel_during_the_pause_before_asking_again_ends_the_stage_as_cancelled()
    {
        var context = await Planned(Scripted(async peer =>
        {
            await peer.ExpectAsync(criu_req_type.Dump);
            peer.Write(Failure(criu_req_type.Dump, Unseizable));
        }), 1);
        using var cancel = new CancellationTokenSource(TimeSpan.FromMilliseconds(300));
        try
        {
            Assert.CatchAsync<OperationCanceledException>(async () =>
                await new DumpStage(new DumpStageOptions { SeizeRetryDelay = TimeSpan.FromMinutes(1) }).ExecuteAsync(context, cancel.Token));

            Assert.That(context.Targets[0].Phase, Is.EqualTo(TargetPhase.Failed));
        }
        finally
        {
            context.ReleaseLock();
        }
    }

    private const string Refused = "(00.056435) Warn  (compel/src/lib/infect.c:133): Unable to interrupt task: 4242 (Operation not permitted)";
    private const string DetachFailed = "(00.056479) Error (compel/src/lib/infect.c:418): Unable to detach from 4242: No such process";

    [TestCase(CriuRequestType.Dump, new[] { "(10.069138) Error (compel/src/lib/infect.c:263): " + Unseizable }, 4242, true)]
    [TestCase(CriuRequestType.Dump, new[] { "(10.068923) Error (criu/cr-dump.c:1791): Timeout reached. Try to interrupt: 0" }, 4242, true)]
    [TestCase(CriuRequestType.Dump, new[] { Refused, DetachFailed }, 4242, true)]
    [TestCase(CriuRequestType.Dump, new[] { Refused, DetachFailed }, 1000, false)]
    [TestCase(CriuRequestType.Dump, new[] { "(00.05) Warn  (compel/src/lib/infect.c:133): Unable to interrupt task: 4243 (No such process)", "(00.09) Error (criu/files.c:1): Can't dump file 7" }, 4243, false)]
    [TestCase(CriuRequestType.Dump, new[] { "(00.09) Error (criu/files.c:1): Can't dump file 7" }, 4242, false)]
    [TestCase(CriuRequestType.Restore, new[] { "(10.069138) Error (compel/src/lib/infect.c:263): " + Unseizable }, 4242, false)]
    public void Only_a_dump_that_failed_at_stopping_its_tree_counts_as_one(CriuRequestType request, string[] log, int root, bool seize)
    {
        var failed = new CriuRequestFailedException(request, 0, null, "/tmp/dump.log", log);

        Assert.Multiple(() =>
        {
            Assert.That(SeizeRetry.Cause(failed, root), seize ? Is.EqualTo(failed.Cause) : Is.Null);
            Assert.That(SeizeRetry.Cause(new CriuRequestFailedException(request, 0, null, "/tmp/dump.log", log, new InvalidOperationException("hook")), root), Is.Null,
                "a failure of the caller's own notification handler is not CRIU's");
            Assert.That(SeizeRetry.Cause(new CriuTimeoutException(request, TimeSpan.FromSeconds(1), 1, "w", null, log, null), root), Is.Null,
                "our own watchdog's timeout is not CRIU's seize timeout");
        });
    }

    [Test]
    public void A_refused_seize_is_the_cause_only_when_criu_then_failed_on_that_task()
    {
        string[] skippedZombie = ["(00.05) Warn  (compel/src/lib/infect.c:133): Unable to interrupt task: 4243 (No such process)", "(00.09) Error (criu/files.c:1): Can't dump file 7"];

        Assert.Multiple(() =>
        {
            Assert.That(new CriuRequestFailedException(CriuRequestType.Dump, 0, null, "/tmp/dump.log", [Refused, DetachFailed]).Cause,
                Is.EqualTo("criu could not seize process 4242 (Operation not permitted: another tracer, such as a debugger, may hold it)"));
            Assert.That(new CriuRequestFailedException(CriuRequestType.Dump, 0, null, "/tmp/dump.log", skippedZombie).Cause, Is.EqualTo("Can't dump file 7"));
        });
    }

    [Test]
    public void Images_written_after_the_seize_forbid_asking_again()
    {
        var images = Directory.CreateTempSubdirectory("rebootless-seize-").FullName;
        try
        {
            File.WriteAllText(Path.Combine(images, "cpuinfo.img"), "");
            File.WriteAllText(Path.Combine(images, "runc-state.json"), "{}");
            Assert.That(SeizeRetry.NothingWritten(images), Is.True, "what criu writes before it seizes, and ours");
            File.WriteAllText(Path.Combine(images, "pagemap-4242.img"), "");
            Assert.That(SeizeRetry.NothingWritten(images), Is.False);
        }
        finally
        {
            Directory.Delete(images, recursive: true);
        }
    }

    private sealed class SyncProgress(Action<UpdateProgress> report) : IProgress<UpdateProgress>
    {
        public void Report(UpdateProgress value) => report(value);
    }

    [Test]
    public async Task A_dump_criu_refuses_fails_the_stage_and_the_rollback_resumes_every_target_in_place()
    {
        var decisions = new List<bool>();
        var context = await Planned(Scripted(HeldDump(decisions), async peer =>
        {
            await peer.ExpectAsync(criu_req_type.Dump);
            peer.Write(Failure(criu_req_type.Dump, "Can't dump task"));
        }), 2);
        try
        {
            var e = Assert.ThrowsAsync<CriuRequestFailedException>(async () => await new DumpStage(new DumpStageOptions()).ExecuteAsync(context, CancellationToken.None));

            Assert.That(e!.Message, Does.Contain("Can't dump task"));
            Assert.That(context.Targets.Select(t => t.Phase), Is.EqualTo(new[] { TargetPhase.Frozen, TargetPhase.Failed }));

            await new DumpStage(new DumpStageOptions()).CompensateAsync(context, CancellationToken.None);
            await Task.WhenAll(_scripts);

            Assert.That(decisions, Is.EqualTo(new[] { false }), "the held one was vetoed: CRIU resumes it");
            Assert.That(context.Targets.Select(t => t.Phase), Is.All.EqualTo(TargetPhase.Resumed), "both originals run on; nothing to restore");
            Assert.That(new[] { Journaled(context, 0).Phase, Journaled(context, 1).Phase }, Is.All.EqualTo(TargetPhase.Resumed));
        }
        finally
        {
            context.ReleaseLock();
        }
    }

    // ---- PreDump ----

    private static Func<FakeCriuPeer, Task> Features(bool memTrack) => async peer =>
    {
        await peer.ExpectAsync(criu_req_type.FeatureCheck);
        peer.Write(new criu_resp { Type = criu_req_type.FeatureCheck, Success = true, Features = new criu_features { MemTrack = memTrack } });
    };

    [TestCase(false)]
    [TestCase(true)]
    public async Task PreDump_without_memory_tracking_is_skipped_with_the_reason_or_refused_when_required(bool required)
    {
        var connections = 0;
        var context = await Planned(Scripted(peer =>
        {
            Interlocked.Increment(ref connections);
            return Features(memTrack: false)(peer);
        }), 1);
        try
        {
            var stage = new PreDumpStage(new PreDumpStageOptions { Required = required });
            if (required)
            {
                Assert.That(async () => await stage.ExecuteAsync(context, CancellationToken.None),
                    Throws.TypeOf<CriuFeatureUnavailableException>().With.Message.Contains("soft-dirty"));
            }
            else
            {
                await stage.ExecuteAsync(context, CancellationToken.None);
                Assert.That(context.TakeSkipReason(), Does.Contain("CONFIG_MEM_SOFT_DIRTY").And.Contain("copies all memory while frozen"));
            }

            Assert.That(connections, Is.EqualTo(1), "no pre-dump was asked for");
            Assert.That(context.Targets[0].PreDumpFolder, Is.Null, "the final dump has no parent to refer to");
        }
        finally
        {
            context.ReleaseLock();
        }
    }

    [Test]
    public async Task PreDump_copies_each_target_with_memory_tracking_into_its_own_folder_that_the_dump_builds_on()
    {
        var requests = new List<criu_req>();
        UpdateContext context = null!;
        context = await Planned(Scripted(async peer =>
        {
            // Each connection asks one thing: the stage's and the client's own feature checks, the client's version
            // check (once), or a target's pre-dump.
            var req = await peer.NextAsync();
            switch (req.Type)
            {
                case criu_req_type.FeatureCheck:
                    peer.Write(new criu_resp { Type = req.Type, Success = true, Features = new criu_features { MemTrack = true } });
                    return;
                case criu_req_type.Version:
                    peer.Write(new criu_resp { Type = req.Type, Success = true, Version = new criu_version { MajorNumber = 4, MinorNumber = 1, Sublevel = 1 } });
                    return;
            }

            Assert.That(req.Type, Is.EqualTo(criu_req_type.SinglePreDump));
            int index;
            lock (requests)
            {
                requests.Add(req);
                index = requests.Count - 1;
            }

            var folder = Path.Combine(context.CheckpointSet!.ImagesDirectory, context.Targets[index].Folder + "-pre");
            await File.WriteAllBytesAsync(Path.Combine(folder, "pages-1.img"), new byte[8192]);
            peer.Write(FakeCriuPeer.Ok(criu_req_type.SinglePreDump));
        }), 2);
        try
        {
            await new PreDumpStage(new PreDumpStageOptions()).ExecuteAsync(context, CancellationToken.None);

            Assert.That(requests.Select(r => (r.Opts.Pid, r.Opts.TrackMem, r.Opts.LogFile)),
                Is.EqualTo(_started.Select(p => (p.Id, true, "pre-dump.log"))), "one pre-dump per target, each tracking memory");
            Assert.That(context.Targets.Select(t => t.PreDumpFolder), Is.EqualTo(context.Targets.Select(t => t.Folder + "-pre")));
            Assert.That(context.Targets.Select(t => t.Phase), Is.All.EqualTo(TargetPhase.PreDumped), "pre-dumped, nothing frozen for long: the targets run on");
        }
        finally
        {
            context.ReleaseLock();
        }
    }

    /// <summary>
    /// A CRIU whose pre-dump of the target with root <paramref name="refusedPid"/> fails (it answers, the tree runs on),
    /// whose other pre-dumps succeed, and whose dumps are held (or, for <paramref name="refusedPid"/> when
    /// <paramref name="dumpFailsToo"/>, refused as well). Records every pre-dump and dump request in order.
    /// </summary>
    private static Func<FakeCriuPeer, Task> PreDumpRefusedFor(Func<UpdateContext> context, int refusedTarget, List<criu_req> requests, List<bool> decisions, bool dumpFailsToo = false) => async peer =>
    {
        var req = await peer.NextAsync();
        switch (req.Type)
        {
            case criu_req_type.FeatureCheck:
                peer.Write(new criu_resp { Type = req.Type, Success = true, Features = new criu_features { MemTrack = true } });
                return;
            case criu_req_type.Version:
                peer.Write(new criu_resp { Type = req.Type, Success = true, Version = new criu_version { MajorNumber = 4, MinorNumber = 1, Sublevel = 1 } });
                return;
        }

        lock (requests)
        {
            requests.Add(req);
        }

        var target = context().Targets.Single(t => t.Resolved!.RootPid == req.Opts.Pid);
        var refused = target == context().Targets[refusedTarget];
        if (req.Type == criu_req_type.SinglePreDump)
        {
            // What CRIU leaves of a pre-dump, even one it gave up on: an image in the folder it was given.
            await File.WriteAllBytesAsync(Path.Combine(context().CheckpointSet!.ImagesDirectory, target.Folder + "-pre", "pages-1.img"), new byte[4096]);
            peer.Write(refused ? Failure(req.Type, "Pre-dumping FAILED.") : FakeCriuPeer.Ok(req.Type));
            return;
        }

        Assert.That(req.Type, Is.EqualTo(criu_req_type.Dump));
        if (refused && dumpFailsToo)
        {
            peer.Write(Failure(req.Type, "Dumping FAILED."));
            return;
        }

        await HoldAtPostDumpAsync(peer, decisions);
    };

    [Test]
    public async Task A_pre_dump_criu_refuses_is_no_failure_that_target_is_dumped_whole_and_first_and_the_other_keeps_its_pre_dump()
    {
        var requests = new List<criu_req>();
        var decisions = new List<bool>();
        var events = new List<UpdateProgress>();
        UpdateContext context = null!;
        context = await Planned(Scripted(PreDumpRefusedFor(() => context, 1, requests, decisions)), 2, new ListProgress(events));
        var (first, second) = (context.Targets[0], context.Targets[1]);
        try
        {
            await new PreDumpStage(new PreDumpStageOptions()).ExecuteAsync(context, CancellationToken.None);

            Assert.Multiple(() =>
            {
                Assert.That(second.PreDumpRefused, Does.Contain("Pre-dumping FAILED."));
                Assert.That(second.PreDumpFolder, Is.Null, "its final dump has no parent");
                Assert.That(Directory.Exists(Path.Combine(context.CheckpointSet!.ImagesDirectory, second.Folder + "-pre")), Is.False, "the partial pre-dump is gone");
                Assert.That(first.PreDumpRefused, Is.Null);
                Assert.That(first.PreDumpFolder, Is.EqualTo(first.Folder + "-pre"), "the other target keeps its pre-dump");
                Assert.That(events.Select(e => (e.Target, e.Message)), Has.Some.Matches<(string? Target, string Message)>(e =>
                    e.Target == second.Target.Id && e.Message.StartsWith("pre-dump refused by CRIU (", StringComparison.Ordinal) && e.Message.Contains("dumped whole inside the freeze")));
            });

            requests.Clear();
            await new DumpStage(new DumpStageOptions()).ExecuteAsync(context, CancellationToken.None);

            Assert.Multiple(() =>
            {
                Assert.That(requests.Select(r => r.Opts.Pid), Is.EqualTo(new[] { second.Resolved!.RootPid, first.Resolved!.RootPid }), "the target without a pre-dump froze first");
                Assert.That(requests[0].Opts.HasParentImg, Is.False, "dumped whole");
                Assert.That(requests[0].Opts.TrackMem, Is.False);
                Assert.That(requests[1].Opts.ParentImg, Is.EqualTo("../" + first.Folder + "-pre"), "the other builds on its pre-dump");
                Assert.That(Journaled(context, 1).PreDumpRefused, Does.Contain("Pre-dumping FAILED."), "journaled: the report after the jump says so too");
                Assert.That(Journaled(context, 0).PreDumpRefused, Is.Null);
                Assert.That(TargetReport.From(second).PreDumpRefused, Is.EqualTo(second.PreDumpRefused));
            });

            await new CommitStage().ExecuteAsync(context, CancellationToken.None);
            await Task.WhenAll(_scripts);
            Assert.That(decisions, Is.EqualTo(new[] { true, true }));
        }
        finally
        {
            context.ReleaseLock();
        }
    }

    [Test]
    public async Task When_the_whole_dump_of_a_target_whose_pre_dump_was_refused_fails_too_no_other_target_was_frozen()
    {
        var requests = new List<criu_req>();
        var decisions = new List<bool>();
        UpdateContext context = null!;
        context = await Planned(Scripted(PreDumpRefusedFor(() => context, 1, requests, decisions, dumpFailsToo: true)), 2);
        try
        {
            await new PreDumpStage(new PreDumpStageOptions()).ExecuteAsync(context, CancellationToken.None);
            requests.Clear();

            var e = Assert.ThrowsAsync<CriuRequestFailedException>(async () => await new DumpStage(new DumpStageOptions()).ExecuteAsync(context, CancellationToken.None));

            Assert.Multiple(() =>
            {
                Assert.That(e!.Message, Does.Contain("Dumping FAILED."), "CRIU's reason");
                Assert.That(requests.Select(r => (r.Type, r.Opts.Pid)), Is.EqualTo(new[] { (criu_req_type.Dump, context.Targets[1].Resolved!.RootPid) }),
                    "the other target was never asked to freeze");
                Assert.That(context.Targets[0].Phase, Is.EqualTo(TargetPhase.PreDumped), "pre-dumped while it ran, never frozen");
                Assert.That(decisions, Is.Empty);
            });
        }
        finally
        {
            context.ReleaseLock();
        }
    }

    private sealed class ListProgress(List<UpdateProgress> events) : IProgress<UpdateProgress>
    {
        public void Report(UpdateProgress value)
        {
            lock (events)
            {
                events.Add(value);
            }
        }
    }

    // ---- Restore ----

    /// <summary>A resume of one dumped target whose images folder exists (nothing in it is read by the scripted CRIU).</summary>
    private UpdateContext Dumped(CriuClient criu)
    {
        var set = _f.Store.CreateSet(["pid:77"]);
        Directory.CreateDirectory(Path.Combine(set.ImagesDirectory, "00-pid-77"));
        var jt = new JournalTarget { Id = "pid:77", Folder = "00-pid-77", Settings = new TargetCriuSettings(), Phase = TargetPhase.Dumped, RootPid = 77, RootStartTime = 1 };
        var context = new UpdateContext(UpdateMode.Resume, []) { Store = _f.Store, TimeProvider = _f.Clock, Criu = criu };
        context.StoreLock = _f.Store.AcquireLock();
        context.Journal = UpdateJournal.Create(_f.StoreRoot, set.Id, UpdateMode.Resume, [jt], context.StoreLock, _f.Clock);
        context.SetId = set.Id;
        context.Targets = [LocateStage.Load(jt, set.ImagesDirectory)];
        return context;
    }

    private static criu_resp PostRestore(int pid) =>
        new() { Type = criu_req_type.Notify, Success = true, Notify = new criu_notify { Script = "post-restore", Pid = pid } };

    private static criu_resp Restored(int pid) =>
        new() { Type = criu_req_type.Restore, Success = true, Restore = new criu_restore_resp { Pid = pid } };

    [Test]
    public async Task Restore_is_journaled_before_criu_is_asked_and_the_root_is_durable_before_it_runs()
    {
        var tree = Sleeper();
        JournalTarget? atRequest = null, atAnswer = null;
        var answered = false;
        UpdateContext context = null!;
        context = Dumped(Scripted(async peer =>
        {
            await peer.ExpectAsync(criu_req_type.Restore);
            atRequest = Journaled(context, 0);
            peer.Write(PostRestore(tree.Id));
            answered = (await peer.ExpectAsync(criu_req_type.Notify)).NotifySuccess;
            atAnswer = Journaled(context, 0); // the tree runs only after CRIU reads this answer
            peer.Write(Restored(tree.Id));
        }));
        try
        {
            await new ResumeRestoreStage(new RestoreStageOptions()).ExecuteAsync(context, CancellationToken.None);
            await Task.WhenAll(_scripts);

            Assert.That(atRequest!.Phase, Is.EqualTo(TargetPhase.Restoring));
            Assert.That(atRequest.RestoredPid, Is.Null);
            Assert.That(answered, Is.True);
            Assert.That((atAnswer!.RestoredPid, atAnswer.RestoredStartTime), Is.EqualTo(((int?)tree.Id, ProcessIdentity.Of(tree.Id)!.Value.StartTime)),
                "a run that dies now finds this tree instead of restoring a second one");
            var t = context.Targets[0];
            Assert.That((t.Phase, t.RestoredPid), Is.EqualTo((TargetPhase.Restored, (int?)tree.Id)));
            Assert.That(Journaled(context, 0).Phase, Is.EqualTo(TargetPhase.Restored));
            Assert.That(File.Exists(Path.Combine(UpdateJournal.LogDirectoryOf(_f.StoreRoot, context.SetId!), "00-pid-77", InterruptedRestore.LogFile)), Is.False,
                "the attempt's log is CRIU's to write: an old one was removed first");
        }
        finally
        {
            context.ReleaseLock();
        }
    }

    [Test]
    public async Task Pages_that_fail_their_check_veto_the_tree_at_post_restore_and_refuse_the_target()
    {
        var tree = Sleeper();
        bool? answered = null;
        var context = Dumped(Scripted(async peer =>
        {
            await peer.ExpectAsync(criu_req_type.Restore);
            peer.Write(PostRestore(tree.Id));
            answered = (await peer.ExpectAsync(criu_req_type.Notify)).NotifySuccess;
            tree.Kill(); // what CRIU does with a tree whose post-restore failed
            await tree.WaitForExitAsync();
            peer.Write(Failure(criu_req_type.Restore, "post-restore script failed"));
        }));
        var issue = new VerificationIssue(VerificationIssueKind.ContentChanged, "00-pid-77/pages-1.img", "hash differs");
        context.Targets[0].CheckPagesWith(Task.FromResult(new VerificationResult(context.SetId!, "", VerificationMode.Full, null, [issue], 0)));
        try
        {
            await new ResumeRestoreStage(new RestoreStageOptions()).ExecuteAsync(context, CancellationToken.None);
            await Task.WhenAll(_scripts);

            Assert.That(answered, Is.False, "CRIU was told no: the tampered memory never ran");
            var t = context.Targets[0];
            Assert.That(t.Phase, Is.EqualTo(TargetPhase.Failed));
            Assert.That(t.Error, Does.StartWith("not restored: its images failed verification").And.Contain("pages-1.img"));
            Assert.That(Journaled(context, 0).Phase, Is.EqualTo(TargetPhase.Failed));
        }
        finally
        {
            context.ReleaseLock();
        }
    }

    [Test]
    public async Task A_restore_criu_refuses_before_post_restore_leaves_the_target_dumped_for_another_attempt()
    {
        var context = Dumped(Scripted(async peer =>
        {
            await peer.ExpectAsync(criu_req_type.Restore);
            peer.Write(Failure(criu_req_type.Restore, "Can't restore"));
        }));
        try
        {
            Assert.That(async () => await new ResumeRestoreStage(new RestoreStageOptions()).ExecuteAsync(context, CancellationToken.None),
                Throws.TypeOf<CriuRequestFailedException>());

            var t = context.Targets[0];
            Assert.That(t.Phase, Is.EqualTo(TargetPhase.Dumped), "CRIU answered: nothing of it runs, so a retry may restore it");
            Assert.That(t.Error, Does.StartWith("restore failed:").And.Contain("Can't restore"));
            Assert.That(Journaled(context, 0).Phase, Is.EqualTo(TargetPhase.Dumped));
        }
        finally
        {
            context.ReleaseLock();
        }
    }

    [Test]
    public async Task A_connection_lost_after_criu_let_the_tree_run_keeps_that_tree_as_the_one_copy()
    {
        var tree = Sleeper();
        var requests = 0;
        var context = Dumped(Scripted(async peer =>
        {
            Interlocked.Increment(ref requests);
            await peer.ExpectAsync(criu_req_type.Restore);
            peer.Write(PostRestore(tree.Id));
            await peer.ExpectAsync(criu_req_type.Notify);
            peer.Close(); // the worker dies before its answer
        }));
        try
        {
            await new ResumeRestoreStage(new RestoreStageOptions()).ExecuteAsync(context, CancellationToken.None);
            await Task.WhenAll(_scripts);

            var t = context.Targets[0];
            Assert.That((t.Phase, t.RestoredPid), Is.EqualTo((TargetPhase.Restored, (int?)tree.Id)), "adopted, not restored again");
            Assert.That(requests, Is.EqualTo(1));
            Assert.That(Journaled(context, 0).Phase, Is.EqualTo(TargetPhase.Restored));
        }
        finally
        {
            context.ReleaseLock();
        }
    }

    [Test]
    public async Task A_connection_lost_after_criu_let_the_tree_run_and_it_exited_is_not_restored_a_second_time()
    {
        var tree = Sleeper();
        var requests = 0;
        UpdateContext context = null!;
        context = Dumped(Scripted(async peer =>
        {
            Interlocked.Increment(ref requests);
            await peer.ExpectAsync(criu_req_type.Restore);
            peer.Write(PostRestore(tree.Id));
            await peer.ExpectAsync(criu_req_type.Notify);
            // CRIU lets the tree go and logs so; the tree finishes its work and exits; the worker dies before its answer.
            var work = Path.Combine(UpdateJournal.LogDirectoryOf(_f.StoreRoot, context.SetId!), "00-pid-77");
            await File.WriteAllTextAsync(Path.Combine(work, InterruptedRestore.LogFile), "(00.04) Restore finished successfully. Tasks resumed.\n");
            tree.Kill();
            await tree.WaitForExitAsync();
            peer.Close();
        }));
        try
        {
            var stage = new ResumeRestoreStage(new RestoreStageOptions());
            Assert.That(async () => await stage.ExecuteAsync(context, CancellationToken.None),
                Throws.InvalidOperationException.With.Message.Contains("not restored a second time"));
            await stage.ExecuteAsync(context, CancellationToken.None); // the stage's retry

            Assert.That(requests, Is.EqualTo(1), "its images are older than what it did: a second restore would be a second life");
            Assert.That(context.Targets[0].Phase, Is.EqualTo(TargetPhase.Ended));
            Assert.That(Journaled(context, 0).Phase, Is.EqualTo(TargetPhase.Ended));
        }
        finally
        {
            context.ReleaseLock();
        }
    }

    [Test]
    public async Task A_target_that_is_restoring_is_never_asked_for_again()
    {
        var requests = 0;
        var context = Dumped(Scripted(_ =>
        {
            Interlocked.Increment(ref requests);
            return Task.CompletedTask;
        }));
        context.Targets[0].MoveTo(TargetPhase.Restoring);
        try
        {
            await new ResumeRestoreStage(new RestoreStageOptions()).ExecuteAsync(context, CancellationToken.None);
            await new RehearsalRestoreStage(new RestoreStageOptions()).CompensateAsync(context, CancellationToken.None);

            Assert.That(requests, Is.Zero);
            Assert.That(context.Targets[0].Phase, Is.EqualTo(TargetPhase.Restoring));
        }
        finally
        {
            context.ReleaseLock();
        }
    }
}
