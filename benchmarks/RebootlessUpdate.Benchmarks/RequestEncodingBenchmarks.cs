using BenchmarkDotNet.Attributes;
using Google.Protobuf;
using RebootlessUpdate.Criu.Protocol;

namespace RebootlessUpdate.Benchmarks;

/// <summary>
/// Cost of building and encoding CRIU requests: a bare VERSION request (the
/// baseline) against a container-sized DUMP request with a long external list.
/// </summary>
[MemoryDiagnoser]
public class RequestEncodingBenchmarks
{
    private readonly byte[] _buffer = new byte[64 * 1024];

    [Params(0, 256)]
    public int ExternalCount { get; set; }

    [Benchmark(Baseline = true)]
    public int Version() => Encode(new criu_req { Type = criu_req_type.Version });

    [Benchmark]
    public int Dump()
    {
        var opts = new criu_opts
        {
            ImagesDirFd = -1, ImagesDir = "/run/rebootless/store/set-0001/ct1", Pid = 4242, LeaveRunning = false,
            TcpEstablished = true, FileLocks = true, ShellJob = false, LogLevel = 4, LogFile = "dump.log",
            NotifyScripts = true, ManageCgroupsMode = criu_cg_mode.Soft,
        };
        for (var i = 0; i < ExternalCount; i++)
        {
            opts.External.Add($"mnt[/var/lib/containers/ct1/volumes/v{i}]:v{i}");
        }

        return Encode(new criu_req { Type = criu_req_type.Dump, Opts = opts });
    }

    private int Encode(criu_req req)
    {
        var size = req.CalculateSize();
        req.WriteTo(_buffer.AsSpan(0, size));
        return size;
    }
}
