using System.Text.Json;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.VmTests.Criu;

/// <summary>
/// The real counterpart of the host's synthesised chain (LazyPageServerCriuTests): only the VM's kernel has the
/// soft-dirty tracking a pre-dump chain needs. The C workload (64 MiB) is dumped on two pre-dumps, the upper half of
/// its memory written (with the same values) between them, and restored lazily through a restore view with every
/// lazy page, the pre-dumps' included, served by our page server.
/// </summary>
[NonParallelizable]
public class ChainOnDemandVmTests
{
    private const int MemMiB = 64;
    private const long MemPages = MemMiB * 256L;

    [Test]
    public void A_dump_on_two_real_pre_dumps_restored_through_a_restore_view_gets_every_parent_page_from_our_server()
    {
        var testbed = Testbed.Require();
        Testbed.RequireRoot();
        var workload = "/repo/" + Path.GetRelativePath(Testbed.RepositoryRoot, StageWorkload());
        var script = $"cp '{workload}' /tmp/workload && dotnet \"$AGENT\" criu-chain-on-demand /tmp/workload {MemMiB}";

        var (job, result) = VmRun.Run(testbed, script, timeoutSeconds: 600);

        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        using var report = JsonDocument.Parse(File.ReadAllText(Path.Combine(job, "chain-on-demand.json")));
        var r = report.RootElement;
        TestContext.Out.WriteLine(r.ToString());
        long N(string name) => r.GetProperty(name).GetInt64();
        var preDumps = r.GetProperty("preDumpPagesWritten").EnumerateArray().Select(e => e.GetInt64()).ToArray();
        var served = N("pagesServed");
        Assert.Multiple(() =>
        {
            Assert.That(r.GetProperty("memTrack").GetBoolean(), Is.True, "the VM's kernel tracks memory (soft-dirty)");
            Assert.That(r.GetProperty("lazyPages").GetBoolean(), Is.True, "the VM's kernel has userfaultfd");

            // A real chain: final -> pre-2 -> pre-1, each pre-dump holding its own part of the memory.
            Assert.That(r.GetProperty("finalParentLink").GetString(), Is.EqualTo("../pre-2"));
            Assert.That(r.GetProperty("preDump2ParentLink").GetString(), Is.EqualTo("../pre-1"));
            Assert.That(r.GetProperty("preDump1HasParent").GetBoolean(), Is.False);
            Assert.That(r.GetProperty("touchResult").GetString(), Is.EqualTo($"touched {MemPages / 2} pages"));
            Assert.That(preDumps[0], Is.GreaterThanOrEqualTo(MemPages), "the first pre-dump copies all the memory");
            Assert.That(preDumps[1], Is.InRange(MemPages / 2, MemPages * 3 / 4), "the second copies the half written since, not the rest");
            Assert.That(N("finalPagesWritten"), Is.LessThan(MemPages / 10), "the frozen dump writes only the last changes");
            Assert.That(N("finalPagesSkippedParent"), Is.GreaterThanOrEqualTo(MemPages), "the memory stays in the pre-dumps");

            // The view leaves the parent pages to the daemon, and the daemon got each from our server.
            Assert.That(N("viewPagesMadeLazy"), Is.GreaterThanOrEqualTo(MemPages), "the pre-dumped memory is made lazy");
            Assert.That(served, Is.EqualTo(N("lazyPagesInView")), "every lazy page of the view, parent pages included, came from our server, once");
            Assert.That(N("pagesReadFromPreDump1") + N("pagesReadFromPreDump2") + N("pagesReadFromFinal"), Is.EqualTo(served),
                "every page served was read from the chain's three folders");
            Assert.That(N("pagesReadElsewhere"), Is.Zero);
            Assert.That(N("pagesReadFromPreDump1"), Is.GreaterThanOrEqualTo(MemPages / 2 * 3 / 4), "the lower half from the first pre-dump");
            Assert.That(N("pagesReadFromPreDump2"), Is.GreaterThanOrEqualTo(MemPages / 2), "the upper half from the second");

            // CRIU's restore itself copied only what is not lazy-capable.
            Assert.That(N("criuPagesRestored") + N("criuPagesSkippedCow"), Is.EqualTo(N("eagerPagesInView")), "CRIU restored only the entries the view keeps eager");
            Assert.That(N("criuPagesRestored"), Is.LessThan(served / 10));

            Assert.That(r.GetProperty("failures").GetArrayLength(), Is.Zero, r.GetProperty("failures").ToString());
            Assert.That(r.GetProperty("daemonSummary").GetArrayLength(), Is.GreaterThan(0), "the daemon's own summary");
            Assert.That(r.GetProperty("daemonErrors").GetArrayLength(), Is.Zero, r.GetProperty("daemonErrors").ToString());
            Assert.That(r.GetProperty("verdict").GetString(), Does.StartWith("ok").And.Contain("mem=" + r.GetProperty("initialChecksum").GetString()));
        });
    }

    /// <summary>Copies the compiled workload into the repository's ignored artifacts folder, which the guest sees at /repo.</summary>
    private static string StageWorkload()
    {
        var dir = Directory.CreateDirectory(Path.Combine(Testbed.RepositoryRoot, "artifacts", "vm")).FullName;
        var target = Path.Combine(dir, "rebootless-workload-chain");
        File.Copy(WorkloadProgram.Path, target, overwrite: true);
        return target;
    }
}
