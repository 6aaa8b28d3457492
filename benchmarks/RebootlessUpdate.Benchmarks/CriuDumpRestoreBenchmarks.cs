using System.Globalization;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Engines;
using RebootlessUpdate.Criu;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.Benchmarks;

/// <summary>
/// Dump + restore of the same workload (the C workload with N MiB of touched
/// memory, in its own PID namespace) through the criu command line (baseline)
/// and through <see cref="CriuClient"/>, side by side. Images go to a tmpfs so
/// the disk does not dominate. Needs root and the provisioned testbed.
/// Run: dotnet run -c Release --project benchmarks/RebootlessUpdate.Benchmarks -- --filter '*CriuDumpRestore*'
/// </summary>
[SimpleJob(RunStrategy.Monitoring, launchCount: 1, warmupCount: 1, iterationCount: 7)]
[MemoryDiagnoser]
public class CriuDumpRestoreBenchmarks
{
    private Testbed _testbed = null!;
    private CriuClient _client = null!;
    private string _root = null!;
    private Workload? _workload;
    private string _images = null!;
    private int _iteration;

    [Params(64, 1024)]
    public int MemoryMiB { get; set; }

    [GlobalSetup]
    public void GlobalSetup()
    {
        _testbed = Testbed.Require();
        _client = new CriuClient(new CriuClientOptions { CriuPath = _testbed.Criu });
        _root = Directory.CreateTempSubdirectory("rebootless-bench-").FullName;
        Run("mount", "-t", "tmpfs", "-o", "size=3g", "tmpfs", _root);
    }

    [GlobalCleanup]
    public void GlobalCleanup()
    {
        Run("umount", _root);
        Directory.Delete(_root, recursive: true);
    }

    [IterationSetup]
    public void IterationSetup()
    {
        _iteration++;
        _images = Directory.CreateDirectory(Path.Combine(_root, $"images-{_iteration}")).FullName;
        _workload = Workload.StartProgram(Path.Combine(_root, $"work-{_iteration}"), MemoryMiB);
    }

    [IterationCleanup]
    public void IterationCleanup()
    {
        _workload?.Dispose();
        Directory.Delete(_images, recursive: true);
    }

    [Benchmark(Baseline = true)]
    public int CommandLine()
    {
        var pid = _workload!.RootPid.ToString(CultureInfo.InvariantCulture);
        Run(_testbed.Criu, "dump", "-t", pid, "-D", _images, "-o", "dump.log");
        WaitGone(_workload.RootPid);
        var pidFile = Path.Combine(_images, "restored.pid");
        Run(_testbed.Criu, "restore", "-d", "-D", _images, "-o", "restore.log", "--pidfile", pidFile);
        _workload.RootPid = int.Parse(File.ReadAllText(pidFile).Trim(), CultureInfo.InvariantCulture);
        return _workload.RootPid;
    }

    [Benchmark]
    public async Task<int> Library()
    {
        await _client.DumpAsync(new CriuDumpOptions { ImagesDirectory = _images, Pid = _workload!.RootPid, LogLevel = 2 });
        WaitGone(_workload.RootPid);
        var restore = await _client.RestoreAsync(new CriuRestoreOptions { ImagesDirectory = _images, LogLevel = 2 });
        _workload.RootPid = restore.Pid;
        return restore.Pid;
    }

    private static void WaitGone(int pid) => Workload.WaitFor(() => Workload.IsRunning(pid) ? 0 : 1, "the dumped tree to be gone");

    private static void Run(string file, params string[] args)
    {
        // The command line gets what the library gives its workers, so both stop processes the same way here.
        var environment = HardwareBreakpointProbe.WorkerEnvironment(CriuBreakpoints.Auto, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
        var r = ProcessRunner.Run(file, args, TimeSpan.FromMinutes(5), environment);
        if (r.ExitCode != 0)
        {
            throw new InvalidOperationException($"{file} {string.Join(' ', args)}: {r}");
        }
    }
}
