using RebootlessUpdate.Kexec;

namespace RebootlessUpdate.VmAgent.Kexec;

/// <summary>
/// <c>kexec-load-checks JOBDIR NEWRELEASE</c>, on the old kernel: probe, load
/// and unload with kexec_file_load and with kexec-tools, bad images, and that
/// arming without the allowance is refused while a real kernel is loaded.
/// Everything is left unloaded at the end.
/// </summary>
internal sealed class KexecLoadChecksCommand : IVmCommand
{
    public string Name => "kexec-load-checks";

    private sealed class Sealed : IJumpGuard
    {
        public bool IsCheckpointSealed(out string reason)
        {
            reason = "";
            return true;
        }
    }

    public async Task<int> RunAsync(IReadOnlyList<string> args)
    {
        var r = new KexecResults(args[0], "load-checks");
        var release = args[1];
        var kernel = $"/boot/vmlinuz-{release}";
        var loader = new KexecLoader();

        var caps = KexecCapabilities.Probe();
        r.Log(caps.ToString());
        r.Set("caps.possible", caps.IsPossible);
        r.Set("caps.fileLoad", caps.CanUseKexecFileLoad);
        r.Set("caps.config", caps.ConfigSource);
        r.Set("start.loaded", KexecResults.Loaded());

        var image = KernelImage.Probe(kernel);
        r.Set("image.release", image.Release);
        var line = KexecCommandLine.ComposeNext(KexecCommandLine.ReadCurrent(), new NextCommandLineOptions { ResumeSetId = "load-check" }).ToString();

        // 1. kexec_file_load from .NET, then unload.
        await r.Try("syscall.load", () => loader.LoadAsync(new KexecLoadRequest { KernelPath = kernel, CommandLine = line }));
        r.Set("syscall.load.sysfs", KexecResults.Loaded());
        r.Set("syscall.load.isLoaded", loader.IsLoaded);

        // 2. With a real kernel loaded and root, arming must still refuse without the allowance (CI is set by the job).
        try
        {
            using var armed = new KexecJump().Arm(new Sealed());
            r.Set("arm.without.allowance", "ARMED");
        }
        catch (KexecException e)
        {
            r.Set("arm.without.allowance", $"{e.Reason}");
            r.Log($"arm.without.allowance: {e.Message}");
        }

        await r.Try("syscall.unload", () => loader.UnloadAsync());
        r.Set("syscall.unload.sysfs", KexecResults.Loaded());

        // 3. kexec-tools (kexec -s -l), then kexec -u.
        await r.Try("tools.load", () => loader.LoadAsync(new KexecLoadRequest { KernelPath = kernel, CommandLine = line, Method = KexecLoadMethod.KexecTools }));
        r.Set("tools.load.sysfs", KexecResults.Loaded());
        await r.Try("tools.unload", () => loader.UnloadAsync(KexecLoadMethod.KexecTools));
        r.Set("tools.unload.sysfs", KexecResults.Loaded());

        // 4. Bad images: refused by our probe, and - with the probe off - by the running kernel itself.
        var truncated = "/tmp/vmlinuz-truncated";
        await using (var src = File.OpenRead(kernel))
        await using (var dst = File.Create(truncated))
        {
            var buffer = new byte[16384];
            await src.ReadExactlyAsync(buffer);
            await dst.WriteAsync(buffer);
        }

        foreach (var (name, path) in new[] { ("bintrue", "/bin/true"), ("truncated", truncated) })
        {
            await r.Try($"bad.{name}.probe", () => loader.LoadAsync(new KexecLoadRequest { KernelPath = path, NoInitrd = true, CommandLine = line }));
            await r.Try($"bad.{name}.kernel", () => loader.LoadAsync(new KexecLoadRequest { KernelPath = path, NoInitrd = true, CommandLine = line, VerifyImage = false }));
            r.Set($"bad.{name}.sysfs", KexecResults.Loaded());
        }

        // 5. A command line longer than x86's 2048: refused by us, and what the kernel says with our check off.
        var longLine = line + " " + string.Join(' ', Enumerable.Range(0, 300).Select(i => $"pad{i:D3}=x"));
        await r.Try("long.probe", () => loader.LoadAsync(new KexecLoadRequest { KernelPath = kernel, CommandLine = longLine }));
        await r.Try("long.kernel", () => loader.LoadAsync(new KexecLoadRequest { KernelPath = kernel, CommandLine = longLine, VerifyImage = false }));
        r.Set("long.bytes", System.Text.Encoding.UTF8.GetByteCount(longLine) + 1);
        if (loader.IsLoaded)
        {
            await loader.UnloadAsync();
        }

        r.Set("end.sysfs", KexecResults.Loaded());
        r.Set("done", "yes");
        return 0;
    }
}
