using System.Diagnostics;
using System.Globalization;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Images;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;
using RebootlessUpdate.Targets;
using UpdateWithCustomStages;

// A hosting platform's kernel update: the standard stages plus two of its own,
// "tell the load balancer before freezing" and "health-check after restore".
//
//   rehearse --store DIR [options] PID...                 the whole round trip on this kernel (no kernel loaded)
//   update   --store DIR --kernel PATH [--initrd PATH] [--memmap SIZE!START] [options] PID...
//                                                        first half: checkpoint, load, jump (root, kexec)
//   resume   --store DIR [options]                        second half, after boot: restore, health-check, undrain
// options: --criu PATH, --lb-file FILE (the stand-in load balancer, default DIR/load-balancer),
//          --health-cmd CMD (run with REBOOTLESS_TARGET and REBOOTLESS_PID set; non-zero fails the check)
// Exit: 0 done, 1 failed or rolled back (the output says which and why), 2 usage.
if (args.Length == 0 || args[0] is not ("rehearse" or "update" or "resume"))
{
    return Usage("the first argument is rehearse, update or resume");
}

var mode = args[0];
string? store = null, kernel = null, initrd = null, lbFile = null, healthCmd = null;
var criu = "criu";
var memmap = new List<string>();
var pids = new List<int>();
for (var i = 1; i < args.Length; i++)
{
    var hasValue = i + 1 < args.Length;
    switch (args[i])
    {
        case "--store" when hasValue: store = args[++i]; break;
        case "--criu" when hasValue: criu = args[++i]; break;
        case "--kernel" when hasValue: kernel = args[++i]; break;
        case "--initrd" when hasValue: initrd = args[++i]; break;
        case "--memmap" when hasValue: memmap.Add(args[++i]); break;
        case "--lb-file" when hasValue: lbFile = args[++i]; break;
        case "--health-cmd" when hasValue: healthCmd = args[++i]; break;
        default:
            if (!int.TryParse(args[i], NumberStyles.None, CultureInfo.InvariantCulture, out var pid) || pid <= 0)
            {
                return Usage($"'{args[i]}' is not an option or a pid");
            }

            pids.Add(pid);
            break;
    }
}

if (store is null || (mode != "resume" && pids.Count == 0) || (mode == "update" && kernel is null))
{
    return Usage(mode == "update" ? "update needs --store, --kernel and at least one pid" : $"{mode} needs --store" + (mode == "resume" ? string.Empty : " and at least one pid"));
}

Directory.CreateDirectory(store);
lbFile ??= Path.Combine(store, "load-balancer");
var balancer = new FileLoadBalancer(lbFile);
var drain = new DrainLoadBalancerStage(balancer);
var health = new HealthCheckStage(balancer, healthCmd);
// The platform's stages get their own budget: a hung load balancer must not hold the update.
var platformStage = new StageOptions { Timeout = TimeSpan.FromSeconds(30) };

var runMode = mode switch { "rehearse" => UpdateMode.Rehearse, "update" => UpdateMode.Update, _ => UpdateMode.Resume };
// The builder is made for one kind of run: its standard stages are that run's, and Build refuses a context of another kind.
var builder = new UpdatePipelineBuilder(runMode).AddPreflight();
switch (runMode)
{
    case UpdateMode.Rehearse:
        builder.AddPlan().AddPreDump().AddStage(drain, platformStage).AddDump().AddSeal().AddVerify().AddCommit()
            .AddRestore().AddStage(health, platformStage).AddReport().AddCleanup();
        break;
    case UpdateMode.Update:
        // The load balancer is told after the kernel is loaded (seconds) and right before the freeze.
        builder.AddPlan()
            .AddLoadKernel(new LoadKernelStageOptions { KernelPath = kernel!, InitrdPath = initrd, PersistentMemoryRegions = memmap })
            .AddPreDump().AddStage(drain, platformStage).AddDump().AddSeal().AddJump();
        break;
    default:
        builder.AddLocate().AddVerify().AddRestore().AddStage(health, platformStage).AddReport().AddCleanup();
        break;
}

var pipeline = builder.Build();
Console.WriteLine("stages: " + string.Join(" -> ", pipeline.StageNames));
var context = new UpdateContext(runMode, pids.Select(p => UpdateTarget.ProcessTree(p)))
{
    Store = new DirectoryImageStore(new DirectoryImageStoreOptions { RootDirectory = store }),
    Criu = new CriuClient(new CriuClientOptions { CriuPath = criu }),
};
var result = await pipeline.ExecuteAsync(context);

foreach (var s in result.Stages)
{
    Console.WriteLine($"stage {s.Name}: {s.Status} in {s.Duration.TotalMilliseconds:0} ms{(s.Message is null ? string.Empty : " - " + s.Message)}");
}

foreach (var t in result.Targets)
{
    Console.WriteLine($"target {t.Target}: {t.Phase}{(t.RestoredPid is { } p ? $" as pid {p}" : string.Empty)}{(t.Downtime is { } d ? $", downtime {d.TotalMilliseconds:0} ms" : string.Empty)}{(t.Error is null ? string.Empty : " - " + t.Error)}");
}

Console.WriteLine($"{mode}: {result.Outcome}{(result.FailedStage is null ? string.Empty : $" at {result.FailedStage}: {result.Error}")}");
return result.IsSuccess ? 0 : 1;

static int Usage(string problem)
{
    Console.Error.WriteLine($"UpdateWithCustomStages: {problem}. Usage: UpdateWithCustomStages rehearse|update|resume --store DIR [--kernel PATH] [--criu PATH] [--lb-file FILE] [--health-cmd CMD] [PID...]");
    return 2;
}

namespace UpdateWithCustomStages
{
    /// <summary>
    /// A stand-in for a load balancer's API: one line per change in a file. A real
    /// platform would call its balancer here (and time out, see the stage options).
    /// </summary>
    internal sealed class FileLoadBalancer(string path)
    {
        public void Set(string state, IEnumerable<string> backends) =>
            File.AppendAllText(path, $"{state} {string.Join(' ', backends)}{Environment.NewLine}");
    }

    /// <summary>Takes the targets out of rotation before they are frozen; puts them back if the update rolls back.</summary>
    internal sealed class DrainLoadBalancerStage(FileLoadBalancer balancer) : IUpdateStage
    {
        public string Name => "drain-load-balancer";

        public ValueTask ExecuteAsync(UpdateContext context, CancellationToken cancellationToken)
        {
            balancer.Set("draining", context.Targets.Select(t => t.Target.Id));
            context.ReportProgress(Name, "backends drained");
            return ValueTask.CompletedTask;
        }

        // Runs when anything after it fails before the jump: the workloads run on, so they serve again.
        public ValueTask CompensateAsync(UpdateContext context, CancellationToken cancellationToken)
        {
            balancer.Set("serving", context.Targets.Select(t => t.Target.Id));
            return ValueTask.CompletedTask;
        }
    }

    /// <summary>After the restore: every target's root runs and passes the platform's probe; then it serves again.</summary>
    internal sealed class HealthCheckStage(FileLoadBalancer balancer, string? command) : IUpdateStage
    {
        public string Name => "health-check";

        public async ValueTask ExecuteAsync(UpdateContext context, CancellationToken cancellationToken)
        {
            if (context.NothingToDo)
            {
                context.SkipStage("nothing was restored");
                return;
            }

            foreach (var t in context.Targets)
            {
                var pid = t.RestoredPid ?? throw new InvalidOperationException($"{t.Target.Id} was not restored ({t.Phase})");
                if (!Directory.Exists($"/proc/{pid}"))
                {
                    throw new InvalidOperationException($"{t.Target.Id}: restored pid {pid} is not running");
                }

                if (command is not null)
                {
                    await ProbeAsync(t.Target.Id, pid, cancellationToken).ConfigureAwait(false);
                }
            }

            balancer.Set("serving", context.Targets.Select(t => t.Target.Id));
            context.ReportProgress(Name, "every target healthy; backends serving again");
        }

        private async Task ProbeAsync(string target, int pid, CancellationToken cancellationToken)
        {
            var psi = new ProcessStartInfo("sh") { UseShellExecute = false };
            psi.ArgumentList.Add("-c");
            psi.ArgumentList.Add(command!);
            psi.Environment["REBOOTLESS_TARGET"] = target;
            psi.Environment["REBOOTLESS_PID"] = pid.ToString(CultureInfo.InvariantCulture);
            using var probe = Process.Start(psi) ?? throw new InvalidOperationException("could not start the health command");
            try
            {
                await probe.WaitForExitAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                probe.Kill(entireProcessTree: true);
                throw;
            }

            if (probe.ExitCode != 0)
            {
                throw new InvalidOperationException($"{target}: the health command exited with {probe.ExitCode}");
            }
        }
    }
}
