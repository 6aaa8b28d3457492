using Mono.Unix.Native;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Pipeline;

/// <summary>The workloads one test started under a folder, and the pids their trees were restored as; clearing ends them all.</summary>
internal sealed class StartedWorkloads
{
    private readonly List<Workload> _workloads = [];
    private readonly List<int> _restored = [];

    /// <summary>Starts the shell workload, or the C workload with <paramref name="programMiB"/> of patterned memory, in <paramref name="directory"/>.</summary>
    public Workload Start(string directory, int? programMiB = null)
    {
        var w = programMiB is { } mib ? Workload.StartProgram(directory, mib) : Workload.Start(directory);
        _workloads.Add(w);
        return w;
    }

    /// <summary>Follows each workload to the tree its target was restored as (in order), so that it is ended too.</summary>
    public void Adopt(UpdateResult result, params Workload[] workloads)
    {
        foreach (var (w, t) in workloads.Zip(result.Targets))
        {
            if (t.RestoredPid is { } pid)
            {
                _restored.Add(pid);
                w.RootPid = pid;
            }
        }
    }

    /// <summary>Kills the restored trees and the workloads, and forgets them (one fixture instance serves every test).</summary>
    public void Clear()
    {
        foreach (var pid in _restored.Where(Workload.IsRunning))
        {
            Syscall.kill(pid, Signum.SIGKILL);
        }

        foreach (var w in _workloads)
        {
            w.Dispose();
        }

        _workloads.Clear();
        _restored.Clear();
    }
}
