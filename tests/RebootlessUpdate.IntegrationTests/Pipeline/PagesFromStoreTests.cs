using Mono.Unix.Native;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Images;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;
using RebootlessUpdate.Targets;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Pipeline;

/// <summary>
/// Memory served on demand from the store (issue 16): a lazy rehearsal whose daemons get every page from our page
/// server, each 1 MiB chunk checked against the manifest the first time it is needed. The host has no soft-dirty, so
/// pre-dump parents are synthesised from the full dump before the set is sealed (<see cref="CriuImageFiles.MovePagesToParent"/>).
/// </summary>
[NonParallelizable]
public partial class PagesFromStoreTests
{
    private Testbed _testbed = null!;
    private string _dir = null!;
    private readonly List<Workload> _workloads = [];
    private readonly List<int> _restored = [];

    [SetUp]
    public async Task SetUp()
    {
        _testbed = Testbed.Require();
        Testbed.RequireRoot();
        _dir = Directory.CreateTempSubdirectory("rebootless-ondemand-it-").FullName;
        var criu = new CriuClient(new CriuClientOptions { CriuPath = _testbed.Criu });
        if (!(await criu.CheckFeaturesAsync()).LazyPages)
        {
            Testbed.Missing("userfaultfd lazy pages on this kernel");
        }
    }

    [TearDown]
    public void TearDown()
    {
        TargetRestore.RestoreAnswered = null;
        foreach (var pid in _restored.Where(Workload.IsRunning))
        {
            Syscall.kill(pid, Signum.SIGCONT);
            Syscall.kill(pid, Signum.SIGKILL);
        }

        foreach (var w in _workloads)
        {
            w.Dispose();
        }

        _workloads.Clear(); // one fixture instance serves every test
        _restored.Clear();
        Directory.Delete(_dir, recursive: true);
    }

    private Workload Start(string name)
    {
        var w = Workload.StartProgram(Path.Combine(_dir, name), 16);
        _workloads.Add(w);
        return w;
    }

    private UpdateContext Context(params Workload[] workloads) => Context(null, workloads);

    private UpdateContext Context(List<UpdateProgress>? progress, params Workload[] workloads) => new(UpdateMode.Rehearse, workloads.Select(w => UpdateTarget.ProcessTree(w.RootPid)))
    {
        Progress = progress is null ? null : new SyncProgress(progress),
        Store = new DirectoryImageStore(new DirectoryImageStoreOptions { RootDirectory = Path.Combine(_dir, "store") }),
        Criu = new CriuClient(new CriuClientOptions { CriuPath = _testbed.Criu }),
        LazyRestore = true,
    };

    private static RestoreStageOptions FromStore => new() { LazyPages = true, ServePagesFromStore = true };

    private void Adopt(UpdateResult result, params Workload[] workloads)
    {
        foreach (var (w, t) in workloads.Zip(result.Targets))
        {
            if (t.RestoredPid is { } pid)
            {
                _restored.Add(pid);
                w.RootPid = pid;
            }
        }
    }

    [Test]
    public async Task Two_targets_get_all_their_memory_from_the_store_and_hold_it_intact()
    {
        var a = Start("a");
        var b = Start("b");
        var checksums = new[] { a.InitialChecksum, b.InitialChecksum };

        var result = await RebootlessPipelines.Rehearsal(restore: FromStore).Build().ExecuteAsync(Context(a, b));
        Adopt(result, a, b);

        foreach (var t in result.Targets)
        {
            TestContext.Out.WriteLine($"{t.Target}: {t.Phase}, criu restored {t.PagesRestored} pages, {t.PagesServedOnDemand} served from the store, all back after {t.AllMemoryBackAfter?.TotalSeconds:0.###} s; {t.Error}");
        }

        Assert.That(result.Outcome, Is.EqualTo(UpdateOutcome.Succeeded), result.Error);
        var verdicts = new[] { a.Check(), b.Check() };
        Assert.Multiple(() =>
        {
            for (var i = 0; i < 2; i++)
            {
                var t = result.Targets[i];
                Assert.That(verdicts[i], Does.StartWith("ok").And.Contain($"mem={checksums[i]}"), verdicts[i]);
                Assert.That(t.PagesServedOnDemand, Is.GreaterThan(16 * 256), "the 16 MiB buffer came from our server");
                Assert.That(t.PagesRestored, Is.LessThan((t.PagesServedOnDemand ?? 0) / 10), "CRIU itself restored only what cannot be lazy");
                Assert.That(t.AllMemoryBackAfter, Is.Not.Null);
                Assert.That(t.LazyPages, Is.True);
            }
        });
    }

    [Test]
    public void The_tool_rehearses_with_pages_from_the_store_and_reports_what_it_served()
    {
        var w = Start("tool");
        var checksum = w.InitialChecksum;

        var run = Cli.Tool.Run("rehearse", "--pid", w.RootPid.ToString(System.Globalization.CultureInfo.InvariantCulture), "--pages-from-store", "--json",
            "--store", Directory.CreateDirectory(Path.Combine(_dir, "tool-store")).FullName, "--criu", _testbed.Criu);

        TestContext.Out.WriteLine(run.ToString());
        Assert.That(run.ExitCode, Is.Zero, run.ToString());
        var report = System.Text.Json.Nodes.JsonNode.Parse(run.Output)!;
        var target = report["targets"]![0]!;
        if (target["restoredPid"]?.GetValue<int>() is { } pid)
        {
            _restored.Add(pid);
            w.RootPid = pid;
        }

        var verdict = w.Check();
        Assert.Multiple(() =>
        {
            Assert.That(target["pagesServedOnDemand"]!.GetValue<long>(), Is.GreaterThan(16 * 256));
            Assert.That(target["allMemoryBackAfter"]!.GetValue<double>(), Is.GreaterThan(0));
            Assert.That(verdict, Does.StartWith("ok").And.Contain($"mem={checksum}"), verdict);
        });
    }

    [Test]
    public async Task A_flipped_byte_in_a_chunk_ends_that_target_before_it_gets_the_page_and_the_other_runs_on()
    {
        var victim = Start("victim");
        var other = Start("other");
        var otherChecksum = other.InitialChecksum;
        string? flipped = null;
        long at = 0;
        var pipeline = RebootlessPipelines.Rehearsal(restore: FromStore)
            .AddStage("flip", StagePosition.Before("Restore"), (ctx, _) =>
            {
                // After the set was verified whole and the trees ended: a change only the chunk check can see.
                var folder = ctx.Targets[0].Folder!;
                flipped = Directory.GetFiles(Path.Combine(ctx.Restorable!.ImagesDirectory, folder), "pages-*.img").OrderByDescending(f => new FileInfo(f).Length).First();
                at = (new FileInfo(flipped).Length / 2) + 123;
                using var fs = new FileStream(flipped, FileMode.Open, FileAccess.ReadWrite);
                fs.Position = at;
                var v = fs.ReadByte();
                fs.Position = at;
                fs.WriteByte((byte)(v ^ 0x40));
                return ValueTask.CompletedTask;
            })
            .Build();

        var result = await pipeline.ExecuteAsync(Context(victim, other));
        Adopt(result, victim, other);
        var v = result.Targets[0];
        var o = result.Targets[1];
        TestContext.Out.WriteLine($"{result.Outcome}: victim {v.Phase} ({v.PagesServedOnDemand} pages served): {v.Error}\nother {o.Phase} ({o.PagesServedOnDemand} pages served)");

        var chunk = at / (1 << 20) * (1 << 20);
        var verdict = other.Check();
        Assert.Multiple(() =>
        {
            Assert.That(v.Phase, Is.EqualTo(TargetPhase.Ended));
            Assert.That(v.Error, Does.Contain($"{flipped} at offset {chunk}: the chunk's hash is").And.Contain("stopped and killed before it got that page"));
            Assert.That(victim.IsAlive, Is.False, "the victim's restored tree is gone");
            Assert.That(Workload.CopiesOf(victim.Directory), Is.Empty, "no process of it runs anywhere");
            Assert.That(File.Exists(Path.Combine(victim.Directory, "check-result")), Is.False, "it never got to read its memory");
            Assert.That(o.Phase, Is.EqualTo(TargetPhase.Restored));
            Assert.That(verdict, Does.StartWith("ok").And.Contain($"mem={otherChecksum}"), verdict);
            Assert.That(Directory.Exists(Path.GetDirectoryName(Path.GetDirectoryName(flipped))), Is.True, "the victim's images are kept");
        });
    }

    [Test]
    public async Task A_dump_on_two_pre_dumps_is_restored_through_a_restore_view_and_its_parent_pages_come_from_the_store()
    {
        var w = Start("chain");
        var checksum = w.InitialChecksum;
        var (t, said) = await RehearseOneAsync(WithSynthesisedChain(RebootlessPipelines.Rehearsal(restore: FromStore)).Build(), w);
        var verdict = w.Check();
        Assert.Multiple(() =>
        {
            Assert.That(verdict, Does.StartWith("ok").And.Contain($"mem={checksum}"), verdict);
            Assert.That(said, Has.Some.Match("^[0-9]+ pages of its pre-dump served on demand"));
            Assert.That(t.PagesServedOnDemand, Is.GreaterThan(16 * 256), "the 16 MiB buffer, two thirds of it from the pre-dumps, came from our server");
            Assert.That(t.PagesRestored, Is.LessThan((t.PagesServedOnDemand ?? 0) / 10), "CRIU restored no parent page of lazy-capable memory");
        });
    }

    [Test]
    public async Task When_the_restore_view_cannot_be_built_criu_restores_the_parent_pages_after_the_whole_check_and_says_why()
    {
        var w = Start("noview");
        var checksum = w.InitialChecksum;
        var pipeline = WithSynthesisedChain(RebootlessPipelines.Rehearsal(restore: FromStore))
            .AddStage("block-view", StagePosition.Before("Restore"), (ctx, _) =>
            {
                // A file where the view's folder goes: the view cannot be made.
                var work = Directory.CreateDirectory(Path.Combine(UpdateJournal.LogDirectoryOf(ctx.RequireStore().RootDirectory, ctx.SetId!), ctx.Targets[0].Folder!));
                File.WriteAllText(Path.Combine(work.FullName, TargetRestore.RestoreViewFolder), "not a folder");
                return ValueTask.CompletedTask;
            })
            .Build();

        var (t, said) = await RehearseOneAsync(pipeline, w);
        var verdict = w.Check();
        Assert.Multiple(() =>
        {
            Assert.That(verdict, Does.StartWith("ok").And.Contain($"mem={checksum}"), verdict);
            Assert.That(said, Has.Some.Contains("its pre-dumped pages are restored by CRIU after the whole check: no restore view"));
            Assert.That(t.PagesRestored, Is.GreaterThan(16 * 256 / 2), "CRIU read the parent pages itself");
        });
    }

    [Test]
    public async Task A_flipped_byte_in_a_parent_page_that_criu_restores_itself_fails_the_restore_at_post_restore()
    {
        var w = Start("eager-parent");
        string? flipped = null;
        long at = 0;
        var pipeline = WithSynthesisedChain(RebootlessPipelines.Rehearsal(restore: FromStore))
            .AddStage("flip-eager-parent-page", StagePosition.Before("Restore"), async (ctx, ct) =>
            {
                // A page the view keeps PE_PARENT (outside lazy-capable memory): CRIU reads it from a pre-dump itself.
                var final = Path.Combine(ctx.Restorable!.ImagesDirectory, ctx.Targets[0].Folder!);
                var kept = CriuLazyParentRewrite.Rewrite(CriuPagemap.Read(final, 1).Entries, CriuVmas.Read(final, 1)).Entries.First(e => e.Flags == CriuPageState.Parent);
                using var source = new CriuImagesPageSource(final);
                (flipped, at, _) = source.Locate(1, kept.Address, 1).Single();
                at += 17;
                await using var fs = new FileStream(flipped, FileMode.Open, FileAccess.ReadWrite);
                fs.Position = at;
                var v = fs.ReadByte();
                fs.Position = at;
                fs.WriteByte((byte)(v ^ 0x40));
            })
            .Build();

        var result = await pipeline.ExecuteAsync(Context(w));
        Adopt(result, w);
        var t = result.Targets[0];
        TestContext.Out.WriteLine($"{result.Outcome}: {t.Phase}, criu restored {t.PagesRestored}, {t.PagesServedOnDemand} served: {t.Error}");

        var chunk = at / (1 << 20) * (1 << 20);
        Assert.Multiple(() =>
        {
            // Held at post-restore (by the check of the chunk, or by the server that met it first): CRIU killed the restored
            // tree before it ran, and nothing is restored from the damaged images afterwards either.
            Assert.That(t.Phase, Is.EqualTo(TargetPhase.Failed));
            Assert.That(t.Error, Does.StartWith("not restored: its pages failed their check").And.Contain($"{flipped} at offset {chunk}: the chunk's hash is")
                .And.Contain("nothing of it ran"));
            Assert.That(result.Outcome, Is.Not.EqualTo(UpdateOutcome.Succeeded));
            Assert.That(t.RestoredPid, Is.Null);
            Assert.That(Workload.CopiesOf(w.Directory), Is.Empty, "no copy of it runs, none restored from the damaged images");
        });
    }

    /// <summary>Rehearses <paramref name="w"/> alone, which must succeed; returns its report and the progress said of it.</summary>
    private async Task<(TargetReport Target, List<string?> Said)> RehearseOneAsync(UpdatePipeline pipeline, Workload w)
    {
        var progress = new List<UpdateProgress>();
        var result = await pipeline.ExecuteAsync(Context(progress, w));
        Adopt(result, w);
        var t = result.Targets[0];
        var said = progress.Where(p => p.Target == t.Target).Select(p => p.Message).ToList();
        TestContext.Out.WriteLine($"{t.Phase}: criu restored {t.PagesRestored} pages, {t.PagesServedOnDemand} served from the store; {t.Error}\n{string.Join("\n", said)}");
        Assert.That(result.Outcome, Is.EqualTo(UpdateOutcome.Succeeded), result.Error);
        return (t, said);
    }

    /// <summary>Before the seal, turns each target's full dump into a final dump on two synthesised pre-dumps.</summary>
    private static UpdatePipelineBuilder WithSynthesisedChain(UpdatePipelineBuilder builder) =>
        builder.AddStage("synthesise-chain", StagePosition.Before("Seal"), (ctx, _) =>
        {
            foreach (var t in ctx.Targets)
            {
                var (pre, _) = CriuImageFiles.MovePagesToParent(t.ImagesDirectory!, (_, a) => a / ILazyPageSource.PageSize % 3 != 0);
                CriuImageFiles.MovePagesToParent(pre, (_, a) => a / ILazyPageSource.PageSize % 3 == 1);
            }

            return ValueTask.CompletedTask;
        });

    /// <summary>Records progress as it is reported (Progress&lt;T&gt; would post it to the thread pool, out of order).</summary>
    private sealed class SyncProgress(List<UpdateProgress> into) : IProgress<UpdateProgress>
    {
        public void Report(UpdateProgress value)
        {
            lock (into)
            {
                into.Add(value);
            }
        }
    }
}
