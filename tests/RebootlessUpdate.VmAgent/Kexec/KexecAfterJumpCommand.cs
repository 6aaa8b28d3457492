using RebootlessUpdate.Kexec;

namespace RebootlessUpdate.VmAgent.Kexec;

/// <summary>
/// <c>kexec-after-jump JOBDIR NEWRELEASE</c>, on the new kernel: the EPERM paths
/// that only a real kernel can produce, each of them one-way for the boot, so
/// they run last: integrity lockdown (a tampered image; the classic
/// kexec_load), then kexec_load_disabled.
/// </summary>
internal sealed class KexecAfterJumpCommand : IVmCommand
{
    public string Name => "kexec-after-jump";

    public async Task<int> RunAsync(IReadOnlyList<string> args)
    {
        var r = new KexecResults(args[0], "after-jump");
        var kernel = $"/boot/vmlinuz-{args[1]}";
        var loader = new KexecLoader();
        r.Set("start.sysfs", KexecResults.Loaded());

        // A copy with one byte changed past the setup header: its signature no longer matches.
        var tampered = "/tmp/vmlinuz-tampered";
        var bytes = await File.ReadAllBytesAsync(kernel);
        bytes[bytes.Length / 2] ^= 0xFF;
        await File.WriteAllBytesAsync(tampered, bytes);
        var request = new KexecLoadRequest { KernelPath = tampered, InitrdPath = KernelImage.FindInitrd(args[1]), CommandLine = "console=ttyS0" };

        if (!File.Exists("/sys/kernel/security/lockdown"))
        {
            Directory.CreateDirectory("/sys/kernel/security");
            var mount = System.Diagnostics.Process.Start("mount", ["-t", "securityfs", "securityfs", "/sys/kernel/security"]);
            await mount.WaitForExitAsync();
        }

        try
        {
            await File.WriteAllTextAsync("/sys/kernel/security/lockdown", "integrity");
        }
        catch (IOException e)
        {
            r.Log("cannot set lockdown: " + e.Message);
        }

        var caps = KexecCapabilities.Probe();
        r.Log(caps.ToString());
        r.Set("lockdown", caps.Lockdown);
        r.Set("lockdown.signatureRequired", caps.SignatureRequired);
        await r.Try("lockdown.tampered.syscall", () => loader.LoadAsync(request));
        await r.Try("lockdown.tools.classic", () => loader.LoadAsync(request with { KernelPath = kernel, Method = KexecLoadMethod.KexecToolsClassic }));
        await r.Try("lockdown.genuine.syscall", () => loader.LoadAsync(request with { KernelPath = kernel }));
        if (loader.IsLoaded)
        {
            await loader.UnloadAsync();
        }

        await File.WriteAllTextAsync("/proc/sys/kernel/kexec_load_disabled", "1");
        caps = KexecCapabilities.Probe();
        r.Set("disabled.possible", caps.IsPossible);
        await r.Try("disabled.syscall", () => loader.LoadAsync(request with { KernelPath = kernel }));
        r.Set("end.sysfs", KexecResults.Loaded());
        r.Set("done", "yes");
        return 0;
    }
}
