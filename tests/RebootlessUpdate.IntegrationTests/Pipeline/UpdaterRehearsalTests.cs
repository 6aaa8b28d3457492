using Microsoft.Extensions.DependencyInjection;
using Mono.Unix.Native;
using RebootlessUpdate.Hosting;
using RebootlessUpdate.Images;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Targets;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Pipeline;

/// <summary>The library as an application uses it: services from DI, a rehearsal of a real process with real criu, custom stages placed by name.</summary>
[NonParallelizable]
public class UpdaterRehearsalTests
{
    private Testbed _testbed = null!;
    private string _dir = null!;
    private ServiceProvider _services = null!;
    private Workload? _workload;
    private int? _restored;

    [SetUp]
    public void SetUp()
    {
        _testbed = Testbed.Require();
        Testbed.RequireRoot();
        _dir = Directory.CreateTempSubdirectory("rebootless-updater-it-").FullName;
        var services = new ServiceCollection();
        services.AddRebootlessUpdate(o =>
        {
            o.StoreDirectory = Path.Combine(_dir, "store");
            o.CriuPath = _testbed.Criu;
        });
        _services = services.BuildServiceProvider();
    }

    [TearDown]
    public void TearDown()
    {
        if (_restored is { } pid && Workload.IsRunning(pid))
        {
            Syscall.kill(pid, Signum.SIGKILL);
        }

        _workload?.Dispose();
        _services.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    private RebootlessUpdater Updater => _services.GetRequiredService<RebootlessUpdater>();

    private Workload Start()
    {
        _workload = Workload.Start(Path.Combine(_dir, "shell"));
        return _workload;
    }

    private void Adopt(UpdateResult result, Workload w)
    {
        if (result.Targets[0].RestoredPid is { } pid)
        {
            _restored = pid;
            w.RootPid = pid;
        }
    }

    [Test]
    public async Task Custom_stages_before_Report_see_the_sealed_set_and_the_restored_workload()
    {
        var w = Start();
        var seen = new List<string>();
        async ValueTask Inspect(string stage, UpdateContext ctx, CancellationToken ct)
        {
            var set = ctx.CheckpointSet ?? throw new InvalidOperationException($"{stage}: no set");
            var images = Directory.GetFiles(set.ImagesDirectory, "*.img", SearchOption.AllDirectories);
            var listed = ctx.Store!.ListSets().Single(s => s.SetId == set.Id);
            var verified = await ctx.Store.VerifyAsync(set.Id, cancellationToken: ct);
            var restored = ctx.Targets[0].RestoredPid;
            seen.Add($"{stage}: {images.Length} images, sealed {listed.IsSealed}, valid {verified.IsValid}, restored {restored is not null && Workload.IsRunning(restored.Value)}");
        }

        var pipeline = Updater.CreateRehearsalBuilder()
            .AddStage("audit", StagePosition.Before("Report"), (ctx, ct) => Inspect("audit", ctx, ct))
            .AddStage("health", (ctx, ct) => Inspect("health", ctx, ct))
            .Build();
        var result = await pipeline.ExecuteAsync(Updater.CreateContext(UpdateMode.Rehearse, [UpdateTarget.ProcessTree(w.RootPid)]));
        Adopt(result, w);

        TestContext.Out.WriteLine(string.Join(Environment.NewLine, seen));
        Assert.That(result.Outcome, Is.EqualTo(UpdateOutcome.Succeeded), result.Error);
        Assert.That(pipeline.StageNames.TakeLast(5), Is.EqualTo(new[] { "Restore", "audit", "health", "Report", "Cleanup" }));
        Assert.That(seen, Has.Count.EqualTo(2));
        Assert.That(seen, Has.All.Matches<string>(s => !s.Contains(": 0 images", StringComparison.Ordinal)), "the images were there");
        Assert.That(seen, Has.All.EndsWith("sealed True, valid True, restored True"));
        Assert.That(Updater.Store.ListSets(), Is.Empty, "Cleanup deleted the set after the custom stages");
        var before = w.ReadCounter();
        Workload.WaitFor(() => w.ReadCounter() > before + 2 ? 1 : 0, "the restored workload to count on");
    }

    [Test]
    public async Task RehearseAsync_through_DI_restores_a_real_process_and_reports_every_stage()
    {
        var w = Start();
        var original = w.RootPid;
        var progress = new ListProgress();

        var result = await Updater.RehearseAsync([UpdateTarget.ProcessTree(w.RootPid)], progress);
        Adopt(result, w);

        Assert.That(result.Outcome, Is.EqualTo(UpdateOutcome.Succeeded), result.Error);
        Assert.That(result.Mode, Is.EqualTo(UpdateMode.Rehearse));
        Assert.That(w.RootPid, Is.Not.EqualTo(original), "restored from the images");
        Assert.That(progress.Events.Where(e => e.Kind is UpdateProgressKind.StageCompleted or UpdateProgressKind.StageSkipped).Select(e => e.Stage),
            Is.EqualTo(new[] { "Preflight", "Plan", "PreDump", "Dump", "Seal", "Verify", "Commit", "Restore", "Report", "Cleanup" }));
        Assert.That(UpdateJournal.List(Updater.Store.RootDirectory).Single().State, Is.EqualTo(JournalState.Resumed));
        var before = w.ReadCounter();
        Workload.WaitFor(() => w.ReadCounter() > before + 2 ? 1 : 0, "the restored workload to count on");
    }

    private sealed class ListProgress : IProgress<UpdateProgress>
    {
        public List<UpdateProgress> Events { get; } = [];

        public void Report(UpdateProgress value)
        {
            lock (Events)
            {
                Events.Add(value);
            }
        }
    }
}
