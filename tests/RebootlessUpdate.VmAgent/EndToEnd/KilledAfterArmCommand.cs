using Microsoft.Win32.SafeHandles;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Images;
using RebootlessUpdate.Kexec;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.VmAgent.EndToEnd;

/// <summary>
/// <c>e2e-update-killed-after-arm --kernel K --initrd I PID...</c>: the real update
/// pipeline (pmem store /dev/pmem0, real kernel load, real CRIU dumps with TCP),
/// whose jump driver kills this very process with SIGKILL at the moment it would
/// call reboot(LINUX_REBOOT_CMD_KEXEC): the jump was armed and CRIU has ended the
/// workloads, but the kernel never switched. The next <c>rebootless resume</c>
/// must roll back on this kernel. Never returns normally.
/// </summary>
internal sealed class KilledAfterArmCommand : IVmCommand
{
    public string Name => "e2e-update-killed-after-arm";

    public async Task<int> RunAsync(IReadOnlyList<string> args)
    {
        var kernel = args[args.ToList().IndexOf("--kernel") + 1];
        var initrd = args[args.ToList().IndexOf("--initrd") + 1];
        var pids = args.Where((a, i) => !a.StartsWith("--", StringComparison.Ordinal) && (i == 0 || !args[i - 1].StartsWith("--", StringComparison.Ordinal))).Select(int.Parse).ToList();
        var store = PmemImageStore.Open(new PmemImageStoreOptions { Device = "/dev/pmem0" });
        var tree = new ProcessTreeOptions { TcpEstablished = true, NetworkLock = CriuNetworkLock.Nftables };
        var jump = new KexecJump(new KexecJumpOptions(), new DieInsteadOfJumping(LinuxKexecSystem.Instance), Environment.GetEnvironmentVariable, () => false);
        var pipeline = RebootlessPipelines.Update(
            new LoadKernelStageOptions { KernelPath = kernel, InitrdPath = initrd, PersistentMemoryRegions = [store.Region.MemmapFragment], SetParameters = [new("rebootless.boot", "2")] },
            jump: new JumpStageOptions { Jump = jump }).Build();
        var context = new UpdateContext(UpdateMode.Update, [.. pids.Select(p => UpdateTarget.ProcessTree(p, tree))])
        {
            Store = store,
            Criu = new CriuClient(new CriuClientOptions { CriuPath = "/usr/sbin/criu" }),
            Progress = new Progress<UpdateProgress>(p => Console.WriteLine($"[{p.Stage}] {p.Kind} {p.Target} {p.Message}")),
        };
        var result = await pipeline.ExecuteAsync(context);
        Console.WriteLine($"the pipeline returned instead of dying: {result.Outcome} at {result.FailedStage}: {result.Error}");
        return 1;
    }

    /// <summary>The real system, except that the jump itself is replaced by SIGKILL of this process.</summary>
    private sealed class DieInsteadOfJumping(IKexecSystem real) : IKexecSystem
    {
        public string Root => real.Root;

        public uint EffectiveUserId => real.EffectiveUserId;

        public int KexecFileLoad(SafeFileHandle? kernel, SafeFileHandle? initrd, string commandLine, ulong flags) =>
            real.KexecFileLoad(kernel, initrd, commandLine, flags);

        public Task<ToolResult> RunAsync(string file, IReadOnlyList<string> args, TimeSpan timeout, CancellationToken cancellationToken) =>
            real.RunAsync(file, args, timeout, cancellationToken);

        public void Sync() => real.Sync();

        public int RebootKexec()
        {
            Console.WriteLine("armed, committed and synced: killing the orchestrator instead of jumping");
            Console.Out.Flush();
            _ = Mono.Unix.Native.Syscall.kill(Environment.ProcessId, Mono.Unix.Native.Signum.SIGKILL);
            Thread.Sleep(Timeout.Infinite);
            return -1;
        }
    }
}
