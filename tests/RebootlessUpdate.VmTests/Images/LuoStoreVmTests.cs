using System.Globalization;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.VmTests.Images;

/// <summary>
/// A folder store on tmpfs carried across a real kexec by the Live Update Orchestrator, on the testbed's LUO kernels
/// and with no memmap= on either command line: criu dumps a workload into it, the store's files are preserved in a
/// LUO session without a copy (unlinked, then preserved), and after the jump they are received into a new tmpfs,
/// verified against the set's manifest and restored; the workload counts on. A byte flipped in a preserved page
/// image between seal and jump is named by the verification and the restore is refused. The guest side is VmAgent's
/// luo-store-dump and luo-store-restore.
/// </summary>
[NonParallelizable]
[Category(Testbed.LuoKernelsCategory)]
public class LuoStoreVmTests
{
    private static (string Job, ProcessResult Result) Run(Testbed testbed, string flip)
    {
        var script = $$"""
            set -u
            mkdir -p /run/luo && mount -t tmpfs -o mode=0700 tmpfs /run/luo
            if grep -q 'rebootless.boot=1' /proc/cmdline; then
              uname -r >/job/boot1-release
              CI=true REBOOTLESS_ALLOW_KEXEC_JUMP=1 dotnet "$AGENT" luo-store-dump /job {{testbed.LuoNewKernel}} {{flip}}
              echo "luo-store-dump returned $?" >/job/jump-returned
              exit 11
            fi
            uname -r >/job/boot2-release
            cat /proc/cmdline >/job/boot2-cmdline
            dotnet "$AGENT" luo-store-restore /job
            """;
        var (job, result) = VmRun.Run(testbed, script, kernel: testbed.LuoOldKernel, memmap: "none", timeoutSeconds: 600, extraAppend: "kho=on liveupdate=on");
        TestContext.Out.WriteLine($"job folder: {job}");
        foreach (var name in new[] { "luo-store", "luo-store-after" })
        {
            TestContext.Out.WriteLine($"--- {name}.results\n{AgentResults.Read(job, name + ".results")}--- {name}.log\n{AgentResults.Read(job, name + ".log")}");
        }

        Assert.That(result.ExitCode, Is.Zero, result + AgentResults.Read(job, "jump-returned"));
        Assert.That(AgentResults.Read(job, "boot1-release").Trim(), Is.EqualTo(testbed.LuoOldKernel));
        Assert.That(AgentResults.Read(job, "boot2-release").Trim(), Is.EqualTo(testbed.LuoNewKernel));
        Assert.That(AgentResults.Read(job, "boot2-cmdline"), Does.Not.Contain("memmap="), "no memory reserved at boot");
        return (job, result);
    }

    [Test]
    public void A_checkpoint_carried_by_LUO_without_reserved_memory_is_verified_and_restored_on_the_new_kernel()
    {
        var testbed = Testbed.Require();
        Testbed.RequireRoot();

        var (job, _) = Run(testbed, "");

        var sent = AgentResults.Results(job, "luo-store");
        var after = AgentResults.Results(job, "luo-store-after");
        var countAtDump = long.Parse(AgentResults.Read(job, "images-count-at-dump").Trim(), CultureInfo.InvariantCulture);
        Assert.Multiple(() =>
        {
            Assert.That(sent.GetValueOrDefault("left.in.store"), Is.EqualTo("0"), "every file went into the session, none copied");
            Assert.That(long.Parse(sent.GetValueOrDefault("send.bytes") ?? "0", CultureInfo.InvariantCulture),
                Is.GreaterThanOrEqualTo(long.Parse(AgentResults.Read(job, "images-total-bytes").Trim(), CultureInfo.InvariantCulture)));
            Assert.That(after.GetValueOrDefault("receive.files"), Is.EqualTo(sent.GetValueOrDefault("send.files")));
            Assert.That(after.GetValueOrDefault("receive.bytes"), Is.EqualTo(sent.GetValueOrDefault("send.bytes")));
            Assert.That(after.GetValueOrDefault("receive.problems"), Is.EqualTo("0"));
            Assert.That(after.GetValueOrDefault("session.after.finish"), Is.EqualTo("errno2"), "the session is finished: its memory is the kernel's again");
            Assert.That(after.GetValueOrDefault("verify.valid"), Is.EqualTo("True"), AgentResults.Read(job, "luo-store-after.log"));
            Assert.That(long.Parse(after.GetValueOrDefault("count.after") ?? "0", CultureInfo.InvariantCulture), Is.GreaterThan(countAtDump + 5), "the workload counts on");
            Assert.That(after.GetValueOrDefault("alive"), Is.EqualTo("True"));
            Assert.That(after.GetValueOrDefault("done"), Is.EqualTo("yes"));
        });
        TestContext.Out.WriteLine($"send {sent.GetValueOrDefault("send.ms")} ms for {sent.GetValueOrDefault("send.bytes")} bytes; receive {after.GetValueOrDefault("receive.ms")} ms (TCG)");
    }

    [Test]
    public void A_byte_flipped_in_a_preserved_page_image_is_named_and_the_restore_is_refused()
    {
        var testbed = Testbed.Require();
        Testbed.RequireRoot();

        var (job, _) = Run(testbed, "flip");

        var sent = AgentResults.Results(job, "luo-store");
        var after = AgentResults.Results(job, "luo-store-after");
        var flipped = sent.GetValueOrDefault("flipped");
        Assert.Multiple(() =>
        {
            Assert.That(flipped, Is.Not.Null.And.Contain("pages-"));
            Assert.That(after.GetValueOrDefault("receive.problems"), Is.EqualTo("0"), "the length is right; only the bytes differ");
            Assert.That(after.GetValueOrDefault("verify.valid"), Is.EqualTo("False"));
            Assert.That(AgentResults.Read(job, "luo-store-after.log"), Does.Contain(Path.GetFileName(flipped ?? "pages-")), "the verification names the file");
            Assert.That(after.GetValueOrDefault("open"), Is.EqualTo("refused"));
            Assert.That(after.ContainsKey("restored.pid"), Is.False, "never restored from a damaged image");
            Assert.That(after.GetValueOrDefault("done"), Is.EqualTo("yes"));
        });
    }
}
