using System.Text.Json;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.VmTests.Criu;

/// <summary>
/// Iterative pre-dump needs soft-dirty memory tracking, which the host kernel
/// lacks; the VM's 6.12 has it. The C workload (64 MiB, mostly idle memory)
/// must converge: later pre-dumps write fewer pages than the first.
/// </summary>
[NonParallelizable]
public class IterativePreDumpVmTests
{
    [Test]
    public void Single_pre_dump_then_three_pre_dumps_and_the_dump_write_fewer_pages_each_time_and_the_workload_is_restored_intact()
    {
        var testbed = Testbed.Require();
        Testbed.RequireRoot();
        var script = "cp \"$WORKLOAD\" /tmp/workload && dotnet \"$AGENT\" criu-iterative /tmp/workload 64";

        var (job, result) = VmRun.Run(testbed, $"WORKLOAD=/repo/{Path.GetRelativePath(Testbed.RepositoryRoot, StageWorkload())}\n{script}");

        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        using var report = JsonDocument.Parse(File.ReadAllText(Path.Combine(job, "iterative.json")));
        var r = report.RootElement;
        var pages = r.GetProperty("preDumpPagesWritten").EnumerateArray().Select(e => e.GetUInt64()).ToArray();
        Assert.Multiple(() =>
        {
            Assert.That(r.GetProperty("memTrack").GetBoolean(), Is.True);
            Assert.That(r.GetProperty("singlePreDumpPagesWritten").GetUInt64(), Is.GreaterThanOrEqualTo(64UL * 256), "SINGLE_PRE_DUMP copied the memory");
            Assert.That(r.GetProperty("aliveAfterSinglePreDump").GetBoolean(), Is.True, "the tree keeps running through a pre-dump");
            Assert.That(pages, Has.Length.GreaterThanOrEqualTo(3));
            Assert.That(pages[0], Is.GreaterThanOrEqualTo(64UL * 256), "the first pre-dump copies all 64 MiB");
            Assert.That(pages[^1], Is.LessThan(pages[0] / 10), "later pre-dumps copy only what changed");
            Assert.That(r.GetProperty("finalPagesWritten").GetUInt64(), Is.LessThan(pages[0] / 10), "the frozen dump writes only the last changes");
            Assert.That(r.GetProperty("verdict").GetString(), Does.StartWith("ok").And.Contain("mem=" + r.GetProperty("initialChecksum").GetString()));
        });
        TestContext.Out.WriteLine(r.ToString());
    }

    /// <summary>Copies the compiled workload into the repository's ignored artifacts folder, which the guest sees at /repo.</summary>
    private static string StageWorkload()
    {
        var dir = Directory.CreateDirectory(Path.Combine(Testbed.RepositoryRoot, "artifacts", "vm")).FullName;
        var target = Path.Combine(dir, "rebootless-workload");
        File.Copy(WorkloadProgram.Path, target, overwrite: true);
        return target;
    }
}
