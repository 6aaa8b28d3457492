using Mono.Unix.Native;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Images;
using RebootlessUpdate.Kexec;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;
using RebootlessUpdate.Targets;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Pipeline;

/// <summary>Rehearsals and pre-jump updates with real criu on real workloads, including faults at stage boundaries.</summary>
[NonParallelizable]
public class RehearsalTests
{
    private Testbed _testbed = null!;
    private string _dir = null!;
    private readonly StartedWorkloads _workloads = new();
    private string? _tmpfs;

    [SetUp]
    public void SetUp()
    {
        _testbed = Testbed.Require();
        Testbed.RequireRoot();
        _dir = Directory.CreateTempSubdirectory("rebootless-pipeline-it-").FullName;
    }

    [TearDown]
    public void TearDown()
    {
        _workloads.Clear();
        if (_tmpfs is not null)
        {
            ProcessRunner.Run("umount", ["-l", _tmpfs], TimeSpan.FromSeconds(30));
            _tmpfs = null;
        }

        Directory.Delete(_dir, recursive: true);
    }

    private Workload Start(string name, bool program = false) => _workloads.Start(Path.Combine(_dir, name), program ? 16 : null);

    private UpdateContext Context(UpdateMode mode, string? storeRoot, params Workload[] workloads) => new(mode, workloads.Select(w => UpdateTarget.ProcessTree(w.RootPid)))
    {
        Store = new DirectoryImageStore(new DirectoryImageStoreOptions { RootDirectory = storeRoot ?? Path.Combine(_dir, "store") }),
        Criu = new CriuClient(new CriuClientOptions { CriuPath = _testbed.Criu }),
    };

    private void Adopt(UpdateResult result, params Workload[] workloads) => _workloads.Adopt(result, workloads);

    private static void AssertContinues(Workload w, string because)
    {
        var before = w.ReadCounter();
        Workload.WaitFor(() => w.ReadCounter() > before + 2 ? 1 : 0, $"{because}: the workload to count on");
        Assert.That(w.IsAlive, Is.True, because);
    }

    [Test]
    public async Task Rehearsal_of_a_rich_workload_and_a_shell_tree_restores_both_with_state_intact()
    {
        var rich = Start("rich", program: true);
        var shell = Start("shell");
        var richPid = rich.RootPid;
        var context = Context(UpdateMode.Rehearse, null, rich, shell);

        var result = await RebootlessPipelines.Rehearsal().Build().ExecuteAsync(context);
        Adopt(result, rich, shell);

        foreach (var s in result.Stages)
        {
            TestContext.Out.WriteLine($"{s.Name,-10} {s.Status,-10} {s.Duration.TotalMilliseconds,8:0.0} ms {s.Message}");
        }

        foreach (var t in result.Targets)
        {
            TestContext.Out.WriteLine($"{t.Target}: {t.Phase} dump {t.DumpTime?.TotalMilliseconds:0} ms frozen {t.FrozenTime?.TotalMilliseconds:0} ms restore {t.RestoreTime?.TotalMilliseconds:0} ms downtime {t.Downtime?.TotalMilliseconds:0} ms bytes {t.Bytes} pages {t.PagesWritten}");
        }

        Assert.That(result.Outcome, Is.EqualTo(UpdateOutcome.Succeeded), result.Error);
        Assert.That(result.Targets.Select(t => t.Restorable), Is.All.True);
        Assert.That(rich.RootPid, Is.Not.EqualTo(richPid));
        Assert.That(rich.Check(), Does.StartWith("ok"));
        AssertContinues(shell, "restored shell tree");
        Assert.That(result.Downtime, Is.Not.Null);
        Assert.That(result.Stages.Single(s => s.Name == "PreDump").Status, Is.EqualTo(StageStatus.Skipped), "no soft-dirty on this host");
        var journal = UpdateJournal.List(Path.Combine(_dir, "store")).Single();
        Assert.That(journal.State, Is.EqualTo(JournalState.Resumed));
        Assert.That(journal.History.Select(h => h.State), Is.EqualTo(new[] { JournalState.Planned, JournalState.Dumping, JournalState.Sealed, JournalState.Resuming, JournalState.Resumed }));
    }

    [Test]
    public async Task A_post_dump_veto_rolls_back_without_a_restore_and_the_workload_never_stopped_for_good()
    {
        var w = Start("veto");
        var pid = w.RootPid;
        var context = Context(UpdateMode.Rehearse, null, w);
        var dump = new DumpStageOptions
        {
            OnCriuNotification = (n, _) => n.Script == "post-dump" ? throw new InvalidOperationException("load balancer refused") : ValueTask.CompletedTask,
        };

        var result = await RebootlessPipelines.Rehearsal(dump).Build().ExecuteAsync(context);

        Assert.That(result.Outcome, Is.EqualTo(UpdateOutcome.RolledBack));
        Assert.That(result.FailedStage, Is.EqualTo("Dump"));
        Assert.That(result.Targets[0].Phase, Is.EqualTo(TargetPhase.Resumed));
        Assert.That(w.RootPid, Is.EqualTo(pid));
        AssertContinues(w, "vetoed at post-dump");
        Assert.That(UpdateJournal.List(Path.Combine(_dir, "store")).Single().State, Is.EqualTo(JournalState.RolledBack));
        Assert.That(context.Store!.ListSets(), Is.Empty, "a rolled-back set is deleted");
    }

    [Test]
    public async Task Criu_killed_mid_dump_rolls_back_and_the_workload_keeps_running()
    {
        var w = Start("killed");
        var pid = w.RootPid;
        var context = Context(UpdateMode.Rehearse, null, w);
        var killed = 0;
        var dump = new DumpStageOptions
        {
            OnCriuNotification = (n, _) =>
            {
                if (n.Script == "post-dump")
                {
                    try
                    {
                        foreach (var criu in CriuWorkers(Path.Combine(_dir, "store")))
                        {
                            Syscall.kill(criu, Signum.SIGKILL);
                            killed++;
                        }
                    }
                    catch (Exception e)
                    {
                        TestContext.Out.WriteLine("finding the worker failed: " + e);
                        throw;
                    }
                }

                return ValueTask.CompletedTask;
            },
        };

        var result = await RebootlessPipelines.Rehearsal(dump).Build().ExecuteAsync(context);

        TestContext.Out.WriteLine(result.Error);
        Assert.That(killed, Is.GreaterThan(0), "a criu worker was killed");
        Assert.That(result.Outcome, Is.EqualTo(UpdateOutcome.RolledBack));
        Assert.That(w.RootPid, Is.EqualTo(pid));
        AssertContinues(w, "criu killed while holding it");
    }

    [Test]
    public async Task A_store_too_small_is_refused_at_plan_and_a_store_that_fills_during_the_dump_rolls_back()
    {
        _tmpfs = Directory.CreateDirectory(Path.Combine(_dir, "small")).FullName;
        var mount = ProcessRunner.Run("mount", ["-t", "tmpfs", "-o", "size=512k,mode=0700", "rebootless-test", _tmpfs], TimeSpan.FromSeconds(30));
        Assert.That(mount.ExitCode, Is.Zero, mount.ToString());
        var w = Start("full");
        var pid = w.RootPid;

        var refused = await RebootlessPipelines.Rehearsal().Build().ExecuteAsync(Context(UpdateMode.Rehearse, _tmpfs, w));
        Assert.That(refused.FailedStage, Is.EqualTo("Plan"));
        Assert.That(refused.ErrorType, Is.EqualTo(nameof(StoreFullException)));

        // Skip the estimate to make the dump itself run out of space.
        var noPlanCheck = new UpdatePipelineBuilder(UpdateMode.Rehearse).AddPreflight().AddStage(new PlanStage(checkCapacity: false)).AddDump().AddSeal().AddVerify().AddCommit().AddRestore().AddReport().AddCleanup().Build();
        var result = await noPlanCheck.ExecuteAsync(Context(UpdateMode.Rehearse, _tmpfs, w));

        TestContext.Out.WriteLine(result.Error);
        Assert.That(result.Outcome, Is.EqualTo(UpdateOutcome.RolledBack));
        Assert.That(result.FailedStage, Is.AnyOf("Dump", "Seal"));
        Assert.That(result.Stages.Where(s => s.Status == StageStatus.CompensationFailed), Is.Empty, "the rollback was journaled on the full store");
        Assert.That(UpdateJournal.List(_tmpfs).Single().State, Is.EqualTo(JournalState.RolledBack), "so the next resume does not restore a second copy");
        Assert.That(w.RootPid, Is.EqualTo(pid));
        AssertContinues(w, "after the store filled");
    }

    [Test]
    public async Task A_hash_mismatch_at_verify_rolls_back_and_the_workload_resumes_in_place()
    {
        var w = Start("tamper", program: true);
        var pid = w.RootPid;
        var context = Context(UpdateMode.Rehearse, null, w);
        var pipeline = new UpdatePipelineBuilder(UpdateMode.Rehearse).AddPreflight().AddPlan().AddDump().AddSeal()
            .AddStage("tamper", (ctx, _) =>
            {
                var pages = Directory.GetFiles(ctx.CheckpointSet!.ImagesDirectory, "pages-*.img", SearchOption.AllDirectories).OrderByDescending(f => new FileInfo(f).Length).First();
                var bytes = File.ReadAllBytes(pages);
                bytes[bytes.Length / 2] ^= 0x40;
                File.WriteAllBytes(pages, bytes);
                return ValueTask.CompletedTask;
            })
            .AddVerify().AddCommit().AddRestore().AddReport().AddCleanup().Build();

        var result = await pipeline.ExecuteAsync(context);

        TestContext.Out.WriteLine(result.Error);
        Assert.That(result.Outcome, Is.EqualTo(UpdateOutcome.RolledBack));
        Assert.That(result.FailedStage, Is.EqualTo("Verify"));
        Assert.That(result.ErrorType, Is.EqualTo(nameof(CheckpointSetVerificationException)));
        Assert.That(w.RootPid, Is.EqualTo(pid), "never ended: resumed in place, not restored from the damaged images");
        Assert.That(w.Check(), Does.StartWith("ok"));
    }

    [Test]
    public async Task A_failure_after_commit_restores_from_the_images()
    {
        var w = Start("aftercommit", program: true);
        var context = Context(UpdateMode.Rehearse, null, w);
        var pipeline = new UpdatePipelineBuilder(UpdateMode.Rehearse).AddPreflight().AddPlan().AddDump().AddSeal().AddVerify().AddCommit()
            .AddStage("health-gate", (_, _) => throw new InvalidOperationException("platform said no")).Build();

        var result = await pipeline.ExecuteAsync(context);
        Adopt(result, w);

        Assert.That(result.Outcome, Is.EqualTo(UpdateOutcome.RolledBack), result.Error);
        Assert.That(result.Targets[0].Phase, Is.EqualTo(TargetPhase.Restored));
        Assert.That(w.Check(), Does.StartWith("ok"));
        AssertContinues(w, "restored by the rollback");
    }

    [Test]
    public async Task Cancellation_during_the_dump_rolls_back_and_the_workload_keeps_running()
    {
        var w = Start("cancel");
        var pid = w.RootPid;
        using var cts = new CancellationTokenSource();
        var dump = new DumpStageOptions
        {
            OnCriuNotification = (n, _) =>
            {
                if (n.Script == "post-dump")
                {
                    cts.Cancel();
                }

                return ValueTask.CompletedTask;
            },
        };

        var result = await RebootlessPipelines.Rehearsal(dump).Build().ExecuteAsync(Context(UpdateMode.Rehearse, null, w), cts.Token);

        Assert.That(result.Cancelled, Is.True);
        Assert.That(result.Outcome, Is.EqualTo(UpdateOutcome.RolledBack));
        Assert.That(w.RootPid, Is.EqualTo(pid));
        AssertContinues(w, "after cancellation");
    }

    [Test]
    public async Task An_update_whose_kernel_cannot_load_on_this_host_is_refused_before_any_freeze()
    {
        var w = Start("kexec");
        var pid = w.RootPid;
        var kernel = Directory.GetFiles("/boot", "vmlinuz-*").FirstOrDefault() ?? Path.Combine(_testbed.RootFs, "boot", "vmlinuz-" + _testbed.OldKernel);
        // Preflight would refuse (no kexec here); the stages after it are what is under test.
        var pipeline = new UpdatePipelineBuilder(UpdateMode.Update).AddPlan().AddLoadKernel(new LoadKernelStageOptions { KernelPath = kernel, NoInitrd = true })
            .AddPreDump().AddDump().AddSeal().AddJump().Build();

        var result = await pipeline.ExecuteAsync(Context(UpdateMode.Update, null, w));

        TestContext.Out.WriteLine(result.Error);
        Assert.That(result.Outcome, Is.EqualTo(UpdateOutcome.Refused), "no workload was touched");
        Assert.That(result.FailedStage, Is.EqualTo("LoadKernel"));
        Assert.That(result.Exception, Is.TypeOf<KexecException>());
        Assert.That(result.Stages.Any(s => s.Name == "Dump"), Is.False, "nothing was frozen");
        Assert.That(w.RootPid, Is.EqualTo(pid));
        AssertContinues(w, "after the load failure");
    }

    [Test]
    public async Task A_refused_jump_on_this_host_rolls_back_and_restores_from_the_sealed_images()
    {
        var w = Start("jump", program: true);
        // No LoadKernel (the host cannot kexec); the jump must refuse (no kernel loaded, test runner) and roll back.
        var pipeline = new UpdatePipelineBuilder(UpdateMode.Update).AddPlan().AddDump().AddSeal().AddJump().Build();

        var result = await pipeline.ExecuteAsync(Context(UpdateMode.Update, null, w));
        Adopt(result, w);

        TestContext.Out.WriteLine(result.Error);
        Assert.That(result.Outcome, Is.EqualTo(UpdateOutcome.RolledBack));
        Assert.That(result.FailedStage, Is.EqualTo("Jump"));
        Assert.That(result.Error, Does.Contain("refused"));
        Assert.That(w.Check(), Does.StartWith("ok"));
        AssertContinues(w, "after the refused jump");
    }

    private static bool HoldsFileUnder(int pid, string directory)
    {
        try
        {
            return Directory.GetFiles($"/proc/{pid}/fd").Any(fd => new FileInfo(fd).LinkTarget?.StartsWith(directory, StringComparison.Ordinal) == true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    private static IEnumerable<int> CriuWorkers(string testDirectory)
    {
        foreach (var dir in Directory.GetDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out var pid))
            {
                continue;
            }

            // Only a worker of this test: it holds a folder of the test's store open
            // (criu rewrites its process title, so its command line does not say "criu").
            if (pid != Environment.ProcessId && HoldsFileUnder(pid, testDirectory))
            {
                yield return pid;
            }
        }
    }
}
