using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.VmTests.Images;

/// <summary>
/// The Live Update Orchestrator on the testbed's LUO kernels (built by testbed/provision from Debian's
/// linux-source-7.2): our ioctl layer preserves memfds in a session, the kexec driver jumps with kexec_file_load, and
/// the new kernel hands the same bytes back under the same tokens, seals included. Every refusal the kernel gives
/// on the way is recorded and checked, so the words our layer puts on each errno are the kernel's real answers.
/// The guest side is VmAgent's luo-preserve and luo-retrieve.
/// </summary>
[NonParallelizable]
[Category(Testbed.LuoKernelsCategory)]
public class LuoKexecVmTests
{
    private const int Mib = 64;

    [Test]
    public void Memfds_preserved_in_a_session_cross_kexec_with_their_bytes_and_seals_and_the_session_then_finishes()
    {
        var testbed = Testbed.Require();
        Testbed.RequireRoot();
        var script = $$"""
            set -u
            if grep -q 'rebootless.boot=1' /proc/cmdline; then
              uname -r >/job/boot1-release
              CI=true REBOOTLESS_ALLOW_KEXEC_JUMP=1 dotnet "$AGENT" luo-preserve /job {{testbed.LuoNewKernel}} {{Mib}}
              echo "luo-preserve returned $?" >/job/jump-returned
              exit 11
            fi
            uname -r >/job/boot2-release
            cat /proc/cmdline >/job/boot2-cmdline
            dotnet "$AGENT" luo-retrieve /job
            """;

        var (job, result) = VmRun.Run(testbed, script, kernel: testbed.LuoOldKernel, memmap: "none", timeoutSeconds: 600,
            extraAppend: "kho=on liveupdate=on");
        var before = AgentResults.Results(job, "luo-before");
        var after = AgentResults.Results(job, "luo-after");
        TestContext.Out.WriteLine($"job folder: {job}");
        foreach (var name in new[] { "luo-before", "luo-after" })
        {
            TestContext.Out.WriteLine($"--- {name}.results\n{AgentResults.Read(job, name + ".results")}--- {name}.log\n{AgentResults.Read(job, name + ".log")}");
        }

        Assert.That(result.ExitCode, Is.Zero, result + AgentResults.Read(job, "jump-returned"));
        Assert.Multiple(() =>
        {
            // Before the jump, on the old LUO kernel.
            Assert.That(AgentResults.Read(job, "boot1-release").Trim(), Is.EqualTo(testbed.LuoOldKernel));
            Assert.That(before.GetValueOrDefault("probe"), Is.EqualTo("True"));
            Assert.That(before.GetValueOrDefault("open"), Is.EqualTo("ok"));
            Assert.That(before.GetValueOrDefault("open.second"), Is.EqualTo("errno16"), "one opener at a time");
            Assert.That(before.GetValueOrDefault("create"), Is.EqualTo("ok"));
            Assert.That(before.GetValueOrDefault("create.again"), Is.EqualTo("errno17"), "a session name is unique");
            Assert.That(before.GetValueOrDefault("images.seals"), Is.EqualTo("15"));
            Assert.That(before.GetValueOrDefault("preserve.images"), Is.EqualTo("ok"));
            Assert.That(before.GetValueOrDefault("preserve.images.again"), Is.EqualTo("errno16"), "a file is preserved once");
            Assert.That(before.GetValueOrDefault("preserve.token.taken"), Is.EqualTo("errno17"), "a token names one file");
            Assert.That(before.GetValueOrDefault("preserve.manifest"), Is.EqualTo("ok"));
            Assert.That(before.GetValueOrDefault("preserve.plainfile"), Is.EqualTo("errno2"), "only memfds are preserved");
            Assert.That(before.GetValueOrDefault("preserve.closedfd"), Is.EqualTo("errno9"));
            Assert.That(before.GetValueOrDefault("dropped.preserve"), Is.EqualTo("ok"));
            Assert.That(AgentResults.Read(job, "jump-returned"), Is.EqualTo("(jump-returned missing)"), "the jump happened");

            // After it, on the new LUO kernel.
            Assert.That(AgentResults.Read(job, "boot2-release").Trim(), Is.EqualTo(testbed.LuoNewKernel));
            Assert.That(AgentResults.Read(job, "boot2-cmdline"), Does.Contain("liveupdate=on").And.Contain("rebootless.boot=2"));
            Assert.That(after.GetValueOrDefault("probe"), Is.EqualTo("True"));
            Assert.That(after.GetValueOrDefault("retrieve.dropped"), Is.EqualTo("errno2"), "a session closed before the jump is gone");
            Assert.That(after.GetValueOrDefault("retrieve.unknown"), Is.EqualTo("errno2"));
            Assert.That(after.GetValueOrDefault("retrieve"), Is.EqualTo("ok"));
            Assert.That(after.GetValueOrDefault("retrieve.again"), Is.EqualTo("errno22"), "a session is retrieved once");
            Assert.That(after.GetValueOrDefault("retrieve.fd.unknown"), Is.EqualTo("errno2"));
            Assert.That(after.GetValueOrDefault("images.bytes"), Is.EqualTo(((long)Mib << 20).ToString(System.Globalization.CultureInfo.InvariantCulture)));
            Assert.That(after.GetValueOrDefault("images.sha256"), Is.EqualTo(before.GetValueOrDefault("images.sha256")).And.Not.Null,
                "the same bytes crossed the kexec");
            Assert.That(after.GetValueOrDefault("manifest"), Is.EqualTo("images.sha256=" + before.GetValueOrDefault("images.sha256")));
            Assert.That(after.GetValueOrDefault("images.seals"), Is.EqualTo("15"), "the seals crossed with it");
            Assert.That(after.GetValueOrDefault("images.write"), Is.EqualTo("refused"), "a sealed memfd stays read-only after the jump");
            Assert.That(after.GetValueOrDefault("retrieve.images.again"), Is.EqualTo("ok"), "the kernel hands the same file out again until finish");
            Assert.That(after.GetValueOrDefault("finish"), Is.EqualTo("ok"));
            Assert.That(after.GetValueOrDefault("retrieve.fd.after.finish"), Is.EqualTo("errno2"));
            Assert.That(after.GetValueOrDefault("retrieve.after.finish"), Is.EqualTo("errno2"), "a finished session is gone");
            Assert.That(after.GetValueOrDefault("done"), Is.EqualTo("yes"));
        });

        TestContext.Out.WriteLine($"{Mib} MiB: write {before.GetValueOrDefault("images.write.ms")} ms, preserve {before.GetValueOrDefault("preserve.images.ms")} ms, "
            + $"kexec_file_load {before.GetValueOrDefault("load.ms")} ms, retrieve {after.GetValueOrDefault("retrieve.images.ms")} ms, read {after.GetValueOrDefault("images.read.ms")} ms (TCG)");
    }

    [TestCase("luo", "", "has the Live Update Orchestrator but it is off (boot it with liveupdate=on kho=on)")]
    [TestCase("luo", "kho=on", "has the Live Update Orchestrator but it is off (boot it with liveupdate=on kho=on)")]
    // The testbed unpacks Debian's 7.2 without its /boot/config (and it has no /proc/config.gz): both reasons are given.
    [TestCase("debian", "kho=on liveupdate=on", "has no Live Update Orchestrator, or it is off (its build configuration is not readable); LUO needs Linux 6.19")]
    public void Where_LUO_cannot_be_used_the_probe_says_why(string kernel, string append, string why)
    {
        var testbed = Testbed.Require();
        Testbed.RequireRoot();
        var release = kernel == "luo" ? testbed.LuoOldKernel : testbed.NewKernel;

        var (job, result) = VmRun.Run(testbed, "dotnet \"$AGENT\" luo-probe /job", kernel: release, memmap: "none",
            extraAppend: append.Length > 0 ? append : null);

        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        var probe = AgentResults.Results(job, "luo-probe");
        TestContext.Out.WriteLine(probe.GetValueOrDefault("detail"));
        Assert.That(probe.GetValueOrDefault("usable"), Is.EqualTo("False"));
        Assert.That(probe.GetValueOrDefault("detail"), Does.StartWith($"no /dev/liveupdate: kernel {release} {why}"));
    }
}
