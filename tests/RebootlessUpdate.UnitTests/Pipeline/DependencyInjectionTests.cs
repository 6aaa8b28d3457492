using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using Microsoft.Extensions.Time.Testing;
using RebootlessUpdate.Hosting;
using RebootlessUpdate.Images;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.UnitTests.Pipeline;

public class DependencyInjectionTests
{
    private string _dir = null!;

    [SetUp]
    public void SetUp() => _dir = Directory.CreateTempSubdirectory("rebootless-di-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    [Test]
    public void AddRebootlessUpdate_wires_the_configured_store_criu_and_clock_into_contexts()
    {
        var clock = new FakeTimeProvider();
        var services = new ServiceCollection().AddSingleton<TimeProvider>(clock);
        services.AddRebootlessUpdate(o =>
        {
            o.StoreDirectory = _dir;
            o.CriuPath = "/opt/criu/criu";
        });
        using var provider = services.BuildServiceProvider(new ServiceProviderOptions { ValidateOnBuild = true, ValidateScopes = true });

        var updater = provider.GetRequiredService<RebootlessUpdater>();
        var context = updater.CreateContext(UpdateMode.Rehearse, [UpdateTarget.ProcessTree(1234)]);

        Assert.That(updater.Store, Is.SameAs(provider.GetRequiredService<IImageStore>()));
        Assert.That(updater.Store.RootDirectory, Is.EqualTo(_dir));
        Assert.That(context.Store, Is.SameAs(updater.Store));
        Assert.That(context.Criu, Is.SameAs(provider.GetRequiredService<RebootlessUpdate.Criu.CriuClient>()));
        Assert.That(context.TimeProvider, Is.SameAs(clock), "a registered clock wins over the system clock");
        Assert.That(context.Targets.Select(t => t.Target.Id), Is.EqualTo(new[] { "pid:1234" }));
        Assert.That(provider.GetRequiredService<IOptions<RebootlessUpdateOptions>>().Value.CriuPath, Is.EqualTo("/opt/criu/criu"));
    }

    [Test]
    public void The_updater_offers_the_three_standard_pipelines_with_the_registered_clock()
    {
        var clock = new FakeTimeProvider();
        var services = new ServiceCollection().AddSingleton<TimeProvider>(clock);
        services.AddRebootlessUpdate(o => o.StoreDirectory = _dir);
        using var provider = services.BuildServiceProvider();
        var updater = provider.GetRequiredService<RebootlessUpdater>();
        var kernel = Path.Combine(_dir, "vmlinuz");
        File.WriteAllText(kernel, "not a kernel; the loader is not run here");

        var rehearsal = updater.CreateRehearsalBuilder();
        var update = updater.CreateUpdateBuilder(new LoadKernelStageOptions { KernelPath = kernel });
        var resume = updater.CreateResumeBuilder();

        Assert.That(rehearsal.StageNames, Is.EqualTo(RebootlessPipelines.Rehearsal().StageNames));
        Assert.That(update.StageNames, Is.EqualTo(new[] { "Preflight", "Plan", "LoadKernel", "PreDump", "Dump", "Seal", "Jump" }));
        Assert.That(resume.StageNames, Is.EqualTo(RebootlessPipelines.Resume().StageNames));
        Assert.That(new[] { rehearsal.Mode, update.Mode, resume.Mode }, Is.EqualTo(new UpdateMode?[] { UpdateMode.Rehearse, UpdateMode.Update, UpdateMode.Resume }));
        Assert.That(new[] { rehearsal, update, resume }.Select(b => b.TimeProvider), Is.All.SameAs(clock), "retry delays and timeouts use the registered clock");
        Assert.That(rehearsal.AddStage("health", (_, _) => ValueTask.CompletedTask).StageNames.TakeLast(3), Is.EqualTo(new[] { "health", "Report", "Cleanup" }));
    }

    [Test]
    public void UpdateAsync_refuses_a_missing_kernel_before_any_stage_runs()
    {
        var services = new ServiceCollection();
        services.AddRebootlessUpdate(o => o.StoreDirectory = Path.Combine(_dir, "store"));
        using var provider = services.BuildServiceProvider();
        var updater = provider.GetRequiredService<RebootlessUpdater>();

        Assert.That(async () => await updater.UpdateAsync([UpdateTarget.ProcessTree(Environment.ProcessId)], new LoadKernelStageOptions { KernelPath = Path.Combine(_dir, "vmlinuz-missing") }),
            Throws.ArgumentException.With.Message.Contains("does not exist"));
        Assert.That(async () => await updater.UpdateAsync([UpdateTarget.ProcessTree(Environment.ProcessId)], null!), Throws.ArgumentNullException);
        Assert.That(updater.Store.ListSets(), Is.Empty, "nothing ran: no set");
        Assert.That(Directory.Exists(Path.Combine(_dir, "store", "journal")), Is.False, "nothing ran: no journal");
    }

    [Test]
    public void Defaults_are_valid_and_registering_twice_adds_no_second_validator()
    {
        var services = new ServiceCollection();
        services.AddRebootlessUpdate();
        services.AddRebootlessUpdate();
        using var provider = services.BuildServiceProvider();

        var options = provider.GetRequiredService<IOptions<RebootlessUpdateOptions>>().Value;
        Assert.That(options.StoreDirectory, Is.EqualTo(RebootlessUpdateDefaults.StoreDirectory));
        Assert.That(options.RestoreParallelism, Is.EqualTo(4));
        Assert.That(provider.GetServices<IValidateOptions<RebootlessUpdateOptions>>().Count(), Is.EqualTo(1));
    }

    [Test]
    public void The_criu_request_timeout_reaches_the_client_and_a_bad_one_is_named()
    {
        var services = new ServiceCollection();
        services.AddRebootlessUpdate(o => o.CriuRequestTimeout = TimeSpan.FromSeconds(42));
        using (var provider = services.BuildServiceProvider())
        {
            Assert.That(provider.GetRequiredService<RebootlessUpdate.Criu.CriuClient>().Options.RequestTimeout, Is.EqualTo(TimeSpan.FromSeconds(42)));
        }

        using (var defaults = new ServiceCollection().AddRebootlessUpdate().Services.BuildServiceProvider())
        {
            Assert.That(defaults.GetRequiredService<RebootlessUpdate.Criu.CriuClient>().Options.RequestTimeout,
                Is.EqualTo(RebootlessUpdate.Criu.CriuClientOptions.DefaultRequestTimeout));
        }

        foreach (var bad in new[] { TimeSpan.Zero, TimeSpan.FromSeconds(-1), TimeSpan.FromDays(25) })
        {
            var invalid = new ServiceCollection();
            invalid.AddRebootlessUpdate(o => o.CriuRequestTimeout = bad);
            using var provider = invalid.BuildServiceProvider();
            Assert.That(() => provider.GetRequiredService<RebootlessUpdater>(),
                Throws.TypeOf<OptionsValidationException>().With.Message.Contains($"CriuRequestTimeout must be positive and at most 24 days").And.Message.Contains(bad.ToString()));
        }
    }

    [Test]
    public void The_manifest_key_reaches_the_store_and_a_relative_one_is_named()
    {
        var dir = Directory.CreateTempSubdirectory("rebootless-di-key-").FullName;
        try
        {
            var services = new ServiceCollection();
            services.AddRebootlessUpdate(o =>
            {
                o.StoreDirectory = Path.Combine(dir, "store");
                o.ManifestKeyPath = Path.Combine(dir, "keys", "manifest.key");
            });
            using (var provider = services.BuildServiceProvider())
            {
                var store = provider.GetRequiredService<RebootlessUpdate.Images.IImageStore>();
                var set = store.CreateSet(["pid:1"]);
                File.WriteAllText(Path.Combine(set.ImagesDirectory, "pages-1.img"), "pages");
                store.SealAsync(set, new RebootlessUpdate.Images.SealOptions { CriuVersion = "4.1.1" }).GetAwaiter().GetResult();
                Assert.That(File.ReadAllText(Path.Combine(set.Directory, "sealed")), Does.StartWith("hmac-sha256 "), "the seal is keyed");
                Assert.That(new FileInfo(Path.Combine(dir, "keys", "manifest.key")).Length, Is.EqualTo(32));
            }

            var invalid = new ServiceCollection();
            invalid.AddRebootlessUpdate(o => o.ManifestKeyPath = "keys/manifest.key");
            using var bad = invalid.BuildServiceProvider();
            Assert.That(() => bad.GetRequiredService<RebootlessUpdater>(),
                Throws.TypeOf<OptionsValidationException>().With.Message.Contains("ManifestKeyPath must be an absolute file path").And.Message.Contains("keys/manifest.key"));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [TestCase("relative/store", "criu", 4, 2, "StoreDirectory must be an absolute folder path, not 'relative/store'")]
    [TestCase("/var/lib/x", " ", 4, 2, "CriuPath must name the criu binary")]
    [TestCase("/var/lib/x", "criu", 0, 2, "RestoreParallelism must be 1-64, not 0")]
    [TestCase("/var/lib/x", "criu", 4, -1, "KeepSealedSets must be 0-100 (or null to keep all), not -1")]
    public void Invalid_options_fail_the_first_resolve_naming_the_setting(string store, string criu, int parallelism, int keep, string expected)
    {
        var services = new ServiceCollection();
        services.AddRebootlessUpdate(o =>
        {
            o.StoreDirectory = store;
            o.CriuPath = criu;
            o.RestoreParallelism = parallelism;
            o.KeepSealedSets = keep;
        });
        using var provider = services.BuildServiceProvider();

        Assert.That(() => provider.GetRequiredService<RebootlessUpdater>(),
            Throws.TypeOf<OptionsValidationException>().With.Message.Contains(expected));
        Assert.That(Directory.Exists(Path.Combine(Environment.CurrentDirectory, "relative")), Is.False, "nothing was created for an invalid store");
    }
}
