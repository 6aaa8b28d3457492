using Mono.Unix.Native;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Pipeline;

/// <summary>
/// Attacks on memory served from the store through the lazy-pages daemon: it dies, it hangs, the operator cancels the
/// run while it waits. Whatever happens, no restored tree may be left running without its daemon.
/// </summary>
public partial class PagesFromStoreTests
{
    /// <summary>At the restore's answer: <paramref name="signals"/> go to the target's lazy-pages daemon, in order.</summary>
    private void AtRestoreAnswer(params Signum[] signals) => TargetRestore.RestoreAnswered = t =>
    {
        var daemon = t.LazyPagesDaemonPid ?? throw new InvalidOperationException("no daemon");
        _restored.Add(daemon);
        if (t.RestoredPid is { } root)
        {
            _restored.Add(root);
        }

        foreach (var s in signals)
        {
            _ = Syscall.kill(daemon, s);
        }
    };

    private static void AssertEndedAndGone(UpdateResult result, Workload w)
    {
        var t = result.Targets[0];
        TestContext.Out.WriteLine($"{result.Outcome}: {t.Phase}, {t.PagesServedOnDemand} pages served; {t.Error}");
        if (t.RestoredPid is { } pid)
        {
            w.RootPid = pid;
        }

        Workload.WaitFor(() => Workload.CopiesOf(w.Directory).Count == 0 ? 1 : 0, "no copy of the target to run");
        Assert.Multiple(() =>
        {
            Assert.That(t.Phase, Is.EqualTo(TargetPhase.Ended), "a tree whose memory could not be served is recorded as ended");
            Assert.That(w.IsAlive, Is.False);
            Assert.That(Workload.CopiesOf(w.Directory), Is.Empty);
        });
    }

    [Test]
    public async Task The_daemon_killed_mid_stream_ends_the_tree_and_the_target()
    {
        var w = Start("killed");
        AtRestoreAnswer(Signum.SIGSTOP, Signum.SIGKILL);

        var result = await RebootlessPipelines.Rehearsal(restore: FromStore)
            .Build().ExecuteAsync(Context(w)).WaitAsync(TimeSpan.FromSeconds(120));

        AssertEndedAndGone(result, w);
        Assert.That(result.Targets[0].Error, Does.Contain("without PS_IOV_CLOSE").Or.Contain("the connection to the daemon broke"));
    }

    [Test]
    public async Task A_stopped_daemon_ends_the_tree_once_the_page_stream_stalls_and_the_run_does_not_hang()
    {
        var w = Start("stopped");
        AtRestoreAnswer(Signum.SIGSTOP);
        var options = FromStore with { PageStreamStallLimit = TimeSpan.FromSeconds(3) };

        var result = await RebootlessPipelines.Rehearsal(restore: options).Build().ExecuteAsync(Context(w)).WaitAsync(TimeSpan.FromSeconds(120));

        AssertEndedAndGone(result, w);
        Assert.That(result.Targets[0].Error, Does.Contain("its daemon asked for no page for 3 s while pages were still missing"));
    }

    [Test]
    public async Task A_slow_stream_that_keeps_moving_is_waited_for_well_past_the_stall_limit()
    {
        var w = Start("slow");
        var checksum = w.InitialChecksum;
        Task throttle = Task.CompletedTask;
        TargetRestore.RestoreAnswered = t =>
        {
            var daemon = t.LazyPagesDaemonPid ?? throw new InvalidOperationException("no daemon");
            _restored.Add(daemon);
            _restored.Add(t.RestoredPid!.Value);
            // The daemon runs 2 ms in every 1.2 s until it is gone, stopped first: each pause well under the limit,
            // the whole over it on any machine (16 MiB took three slices of 10 ms in CI, 3.9 s in all: too close).
            _ = Syscall.kill(daemon, Signum.SIGSTOP);
            throttle = Task.Run(async () =>
            {
                do
                {
                    await Task.Delay(1200);
                    if (Syscall.kill(daemon, Signum.SIGCONT) != 0)
                    {
                        break;
                    }

                    await Task.Delay(2);
                }
                while (Syscall.kill(daemon, Signum.SIGSTOP) == 0);
            });
        };
        var options = FromStore with { PageStreamStallLimit = TimeSpan.FromSeconds(4) };

        var result = await RebootlessPipelines.Rehearsal(restore: options).Build().ExecuteAsync(Context(w)).WaitAsync(TimeSpan.FromSeconds(180));
        var t = result.Targets[0];
        w.RootPid = t.RestoredPid ?? w.RootPid;
        TestContext.Out.WriteLine($"{result.Outcome}: {t.Phase}, {t.PagesServedOnDemand} pages served, all back after {t.AllMemoryBackAfter}; {t.Error}");
        var verdict = w.Check();
        await throttle.WaitAsync(TimeSpan.FromSeconds(10));

        Assert.Multiple(() =>
        {
            Assert.That(t.Phase, Is.EqualTo(TargetPhase.Restored), "a stream that moves is never taken for a stuck one");
            Assert.That(t.AllMemoryBackAfter, Is.GreaterThan(TimeSpan.FromSeconds(4)), "it took longer than the stall limit in all");
            Assert.That(verdict, Does.StartWith("ok").And.Contain($"mem={checksum}"), verdict);
        });
    }

    [Test]
    public async Task Cancelling_the_run_while_a_stopped_daemon_still_needs_pages_ends_the_tree_and_records_it_ended()
    {
        var w = Start("cancelled");
        using var cts = new CancellationTokenSource();
        AtRestoreAnswer(Signum.SIGSTOP);
        var inner = TargetRestore.RestoreAnswered!;
        TargetRestore.RestoreAnswered = t =>
        {
            inner(t);
            cts.CancelAfter(TimeSpan.FromSeconds(1)); // the operator's Ctrl+C while the Restore stage waits for the pages
        };
        var options = FromStore;

        UpdateResult? result = null;
        Exception? thrown = null;
        try
        {
            result = await RebootlessPipelines.Rehearsal(restore: options).Build().ExecuteAsync(Context(w), cts.Token).WaitAsync(TimeSpan.FromSeconds(120));
        }
        catch (OperationCanceledException e)
        {
            thrown = e;
        }

        TestContext.Out.WriteLine($"thrown: {thrown?.GetType().Name}");
        Assert.That(result, Is.Not.Null, "the run reports what it did to each target");
        AssertEndedAndGone(result!, w);
    }

    [Test]
    public async Task A_pstree_damaged_after_the_check_fails_the_restore_cleanly_and_never_ends_a_target_that_never_ran()
    {
        var w = Start("pstree");
        var pipeline = RebootlessPipelines.Rehearsal(restore: FromStore with { PageStreamStallLimit = TimeSpan.FromSeconds(5) })
            .AddStage("damage", StagePosition.Before("Restore"), (ctx, _) =>
            {
                // After the set was verified whole: whoever can write the store's folder rewrites the process tree.
                File.WriteAllBytes(Path.Combine(ctx.Restorable!.ImagesDirectory, ctx.Targets[0].Folder!, "pstree.img"), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
                return ValueTask.CompletedTask;
            })
            .Build();

        var result = await pipeline.ExecuteAsync(Context(w)).WaitAsync(TimeSpan.FromSeconds(120));
        var t = result.Targets[0];
        TestContext.Out.WriteLine($"{result.Outcome}: {t.Phase}, daemon {t.LazyPagesDaemonPid}; {t.Error}\n{result.Error}");

        Assert.Multiple(() =>
        {
            Assert.That(t.Phase, Is.Not.EqualTo(TargetPhase.Ended), "nothing of it ever ran: it is not ended for want of pages");
            Assert.That(t.Error ?? string.Empty, Does.Not.Contain("it ran after its checkpoint"));
            Assert.That(t.LazyPagesDaemonPid, Is.Null, "no daemon is left behind");
        });
    }
}
