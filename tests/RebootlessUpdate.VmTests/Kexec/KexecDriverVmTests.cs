using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.VmTests.Kexec;

/// <summary>
/// The kexec driver against real kernels: one VM boots the old kernel, loads and
/// unloads with kexec_file_load from .NET and with kexec-tools, is refused bad
/// images, then jumps with a composed command line into the new kernel, which
/// checks the EPERM paths (lockdown, kexec_load_disabled).
/// </summary>
[NonParallelizable]
public class KexecDriverVmTests
{
    [Test]
    public void Load_unload_refuse_bad_images_then_jump_into_the_new_kernel_with_the_composed_command_line()
    {
        var testbed = Testbed.Require();
        Testbed.RequireRoot();
        var script = $$"""
            set -u
            new={{testbed.NewKernel}}
            if grep -q 'rebootless.boot=1' /proc/cmdline; then
              uname -r >/job/boot1-release
              CI=true dotnet "$AGENT" kexec-load-checks /job "$new" || echo "exit $?" >/job/load-checks-failed
              echo "$(uname -r)" >/job/after-bad-images
              touch /job/sealed
              CI=true REBOOTLESS_ALLOW_KEXEC_JUMP=1 dotnet "$AGENT" kexec-jump /job "$new" test-set
              echo "jump returned $?" >/job/jump-returned
              exit 11
            fi
            uname -r >/job/boot2-release
            cat /proc/cmdline >/job/boot2-cmdline
            cut -d' ' -f1 /proc/uptime >/job/boot2-uptime
            date +%s%3N >/job/boot2-at
            dotnet "$AGENT" kexec-after-jump /job "$new"
            """;

        var (job, result) = VmRun.Run(testbed, script, kernel: "old", timeoutSeconds: 600);
        TestContext.Out.WriteLine($"job folder: {job}");
        foreach (var name in new[] { "load-checks", "jump", "after-jump" })
        {
            TestContext.Out.WriteLine($"--- {name}.results\n{AgentResults.Read(job, name + ".results")}\n--- {name}.log\n{AgentResults.Read(job, name + ".log")}");
        }

        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        var load = AgentResults.Results(job, "load-checks");
        var jump = AgentResults.Results(job, "jump");
        var after = AgentResults.Results(job, "after-jump");
        Assert.Multiple(() =>
        {
            // Old kernel: probe, kexec_file_load from .NET, unload.
            Assert.That(AgentResults.Read(job, "boot1-release").Trim(), Is.EqualTo(testbed.OldKernel));
            Assert.That(AgentResults.Read(job, "load-checks-failed"), Is.EqualTo("(load-checks-failed missing)"));
            Assert.That(load.GetValueOrDefault("caps.possible"), Is.EqualTo("True"));
            Assert.That(load.GetValueOrDefault("caps.config"), Is.EqualTo($"/boot/config-{testbed.OldKernel}"));
            Assert.That(load.GetValueOrDefault("start.loaded"), Is.EqualTo("0"));
            Assert.That(load.GetValueOrDefault("image.release"), Is.EqualTo(testbed.NewKernel));
            Assert.That(load.GetValueOrDefault("syscall.load"), Is.EqualTo("ok"));
            Assert.That(load.GetValueOrDefault("syscall.load.sysfs"), Is.EqualTo("1"));
            Assert.That(load.GetValueOrDefault("syscall.load.isLoaded"), Is.EqualTo("True"));
            Assert.That(load.GetValueOrDefault("arm.without.allowance"), Is.EqualTo("JumpRefused"), "CI is set and the allowance is not");
            Assert.That(load.GetValueOrDefault("syscall.unload"), Is.EqualTo("ok"));
            Assert.That(load.GetValueOrDefault("syscall.unload.sysfs"), Is.EqualTo("0"));

            // kexec-tools.
            Assert.That(load.GetValueOrDefault("tools.load"), Is.EqualTo("ok"));
            Assert.That(load.GetValueOrDefault("tools.load.sysfs"), Is.EqualTo("1"));
            Assert.That(load.GetValueOrDefault("tools.unload"), Is.EqualTo("ok"));
            Assert.That(load.GetValueOrDefault("tools.unload.sysfs"), Is.EqualTo("0"));

            // Bad images: our probe refuses them; the running kernel refuses them with ENOEXEC; nothing stays loaded.
            Assert.That(load.GetValueOrDefault("bad.bintrue.probe"), Is.EqualTo("NotAKernel/0"));
            Assert.That(load.GetValueOrDefault("bad.bintrue.kernel"), Is.EqualTo("NotExecutable/8"));
            Assert.That(load.GetValueOrDefault("bad.truncated.probe"), Is.EqualTo("NotAKernel/0"));
            Assert.That(load.GetValueOrDefault("bad.truncated.kernel"), Is.EqualTo("NotExecutable/8"));
            Assert.That(load.GetValueOrDefault("bad.bintrue.sysfs"), Is.EqualTo("0"));
            Assert.That(load.GetValueOrDefault("bad.truncated.sysfs"), Is.EqualTo("0"));
            Assert.That(load.GetValueOrDefault("long.probe"), Is.EqualTo("CommandLineTooLong/0"));
            Assert.That(load.GetValueOrDefault("long.kernel"), Is.EqualTo("InvalidArgument/22"), "with our check off, the kernel itself refuses a line over its limit");
            Assert.That(load.GetValueOrDefault("end.sysfs"), Is.EqualTo("0"));
            Assert.That(load.GetValueOrDefault("done"), Is.EqualTo("yes"));
            Assert.That(AgentResults.Read(job, "after-bad-images").Trim(), Is.EqualTo(testbed.OldKernel), "the old kernel keeps running after the refusals");

            // The jump: new kernel, exactly the composed command line.
            var composed = AgentResults.Read(job, "composed-cmdline");
            Assert.That(composed, Is.EqualTo(
                "console=ttyS0 panic=-1 quiet rebootless.testbed=1 rebootless.boot=2 memmap=64M!512M rebootless.resume=test-set"));
            Assert.That(jump.GetValueOrDefault("load.sysfs"), Is.EqualTo("1"));
            Assert.That(jump.GetValueOrDefault("armed"), Is.EqualTo("True"));
            Assert.That(jump.ContainsKey("jump.returned"), Is.False);
            Assert.That(AgentResults.Read(job, "jump-returned"), Is.EqualTo("(jump-returned missing)"));
            Assert.That(AgentResults.Read(job, "boot2-release").Trim(), Is.EqualTo(testbed.NewKernel));
            Assert.That(AgentResults.Read(job, "boot2-cmdline"), Is.EqualTo(composed + "\n"), "/proc/cmdline is exactly the composed line");

            // New kernel: EPERM from the real kernel, under integrity lockdown and with loading disabled.
            var afterLog = AgentResults.Read(job, "after-jump.log");
            Assert.That(after.GetValueOrDefault("start.sysfs"), Is.EqualTo("0"));
            Assert.That(after.GetValueOrDefault("lockdown"), Is.EqualTo("Integrity"));
            Assert.That(after.GetValueOrDefault("lockdown.signatureRequired"), Is.EqualTo("True"));
            Assert.That(after.GetValueOrDefault("lockdown.tampered.syscall"), Is.EqualTo("NotPermitted/1"));
            Assert.That(after.GetValueOrDefault("lockdown.genuine.syscall"), Is.EqualTo("NotPermitted/1"),
                "the running kernel does not trust the Debian signature for kexec here, so lockdown refuses even the genuine image");
            Assert.That(after.GetValueOrDefault("lockdown.tools.classic"), Is.EqualTo("ToolFailed/0"));
            Assert.That(afterLog, Does.Contain("kernel lockdown (integrity) admits only a kernel signed"));
            Assert.That(afterLog, Does.Contain("kexec_load failed: Operation not permitted"));
            Assert.That(after.GetValueOrDefault("disabled.possible"), Is.EqualTo("False"));
            Assert.That(after.GetValueOrDefault("disabled.syscall"), Is.EqualTo("NotPermitted/1"));
            Assert.That(afterLog, Does.Contain("kexec loading is disabled until the next boot"));
            Assert.That(after.GetValueOrDefault("end.sysfs"), Is.EqualTo("0"));
            Assert.That(after.GetValueOrDefault("done"), Is.EqualTo("yes"));
        });

        if (long.TryParse(jump.GetValueOrDefault("jump.at"), out var at) && long.TryParse(AgentResults.Read(job, "boot2-at").Trim(), out var arrived))
        {
            TestContext.Out.WriteLine($"kexec_file_load of the new kernel: {jump.GetValueOrDefault("load.ms")} ms; jump call to the new kernel's job: {arrived - at} ms (guest clock); new kernel uptime at its job: {AgentResults.Read(job, "boot2-uptime").Trim()} s");
        }

        TestContext.Out.WriteLine(string.Join("\n", after.Select(kv => $"after: {kv.Key}={kv.Value}")));
    }
}
