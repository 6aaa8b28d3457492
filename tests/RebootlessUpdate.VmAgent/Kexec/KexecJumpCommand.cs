using System.Diagnostics;
using RebootlessUpdate.Kexec;

namespace RebootlessUpdate.VmAgent.Kexec;

/// <summary>
/// <c>kexec-jump JOBDIR NEWRELEASE SETID</c>: composes the next command line from
/// /proc/cmdline (rebootless.boot=2, resume marker SETID), writes it to
/// JOBDIR/composed-cmdline, loads the new kernel with kexec_file_load, arms
/// (the checkpoint counts as sealed when JOBDIR/sealed exists) and jumps.
/// Returns only if the jump did not happen.
/// </summary>
internal sealed class KexecJumpCommand : IVmCommand
{
    public string Name => "kexec-jump";

    private sealed class FileGuard(string path) : IJumpGuard
    {
        public bool IsCheckpointSealed(out string reason)
        {
            reason = $"{path} does not exist";
            return File.Exists(path);
        }
    }

    public async Task<int> RunAsync(IReadOnlyList<string> args)
    {
        var (dir, release, setId) = (args[0], args[1], args[2]);
        var r = new KexecResults(dir, "jump");
        var next = KexecCommandLine.ComposeNext(KexecCommandLine.ReadCurrent(), new NextCommandLineOptions
        {
            SetParameters = [new("rebootless.boot", "2")],
            ResumeSetId = setId,
        });
        await File.WriteAllTextAsync(Path.Combine(dir, "composed-cmdline"), next.ToString());
        r.Log("next command line: " + next);

        var loader = new KexecLoader();
        var sw = Stopwatch.StartNew();
        var loaded = await loader.LoadAsync(new KexecLoadRequest { KernelPath = $"/boot/vmlinuz-{release}", CommandLine = next.ToString() });
        r.Set("load.ms", sw.ElapsedMilliseconds);
        r.Set("load.initrd", loaded.InitrdPath);
        r.Set("load.sysfs", KexecResults.Loaded());

        var jump = new KexecJump();
        var armed = jump.Arm(new FileGuard(Path.Combine(dir, "sealed")));
        r.Set("armed", armed.IsArmed);
        r.Set("jump.at", DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
        await armed.JumpAsync();
        r.Set("jump.returned", "yes");
        return 3;
    }
}
