using BenchmarkDotNet.Attributes;
using RebootlessUpdate.Images;

namespace RebootlessUpdate.Benchmarks;

/// <summary>
/// Full verification (re-hash with XxHash128) of a sealed 1 GiB checkpoint set
/// against a plain sequential read of the same files with the same buffer size
/// (the baseline). The files stay in the page cache between iterations, so this
/// measures hashing overhead over memory bandwidth, the case of a store in RAM
/// (tmpfs, pmem). Aim: at most 1.5x the plain read.
/// Run: dotnet run -c Release --project benchmarks/RebootlessUpdate.Benchmarks -- --filter '*ImageVerification*' --job short
/// </summary>
[MemoryDiagnoser]
public class ImageVerificationBenchmarks
{
    private const int FileCount = 16;
    private const int FileSize = 64 << 20; // 16 x 64 MiB = 1 GiB, like a few large pages-N.img
    private readonly byte[] _buffer = new byte[1 << 20];
    private string _dir = null!;
    private DirectoryImageStore _store = null!;
    private string _setId = null!;
    private string[] _files = null!;

    [GlobalSetup]
    public void Setup()
    {
        _dir = Directory.CreateTempSubdirectory("rebootless-bench-").FullName;
        _store = new DirectoryImageStore(new DirectoryImageStoreOptions { RootDirectory = Path.Combine(_dir, "store") });
        var set = _store.CreateSet(["bench"]);
        var rng = new Random(1);
        var chunk = new byte[FileSize];
        for (var i = 0; i < FileCount; i++)
        {
            rng.NextBytes(chunk);
            File.WriteAllBytes(Path.Combine(set.ImagesDirectory, $"pages-{i + 1}.img"), chunk);
        }

        _store.SealAsync(set, new SealOptions { CriuVersion = "4.1.1" }).GetAwaiter().GetResult();
        _setId = set.Id;
        _files = Directory.GetFiles(set.ImagesDirectory).Order(StringComparer.Ordinal).ToArray();
    }

    [GlobalCleanup]
    public void Cleanup() => Directory.Delete(_dir, recursive: true);

    [Benchmark(Baseline = true)]
    public long PlainSequentialRead()
    {
        long total = 0;
        foreach (var file in _files)
        {
            using var handle = File.OpenHandle(file, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.SequentialScan);
            long offset = 0;
            int n;
            while ((n = RandomAccess.Read(handle, _buffer, offset)) > 0)
            {
                offset += n;
            }

            total += offset;
        }

        return total;
    }

    [Benchmark]
    public async Task<long> FullVerification()
    {
        var result = await _store.VerifyAsync(_setId);
        return result.IsValid ? result.BytesHashed : throw new InvalidOperationException(result.Describe());
    }
}
