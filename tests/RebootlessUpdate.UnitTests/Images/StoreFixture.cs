using System.Text;
using RebootlessUpdate.Images;

namespace RebootlessUpdate.UnitTests.Images;

/// <summary>A clock the test moves by hand.</summary>
internal sealed class ManualClock(DateTimeOffset start) : TimeProvider
{
    public DateTimeOffset Now { get; set; } = start;

    public override DateTimeOffset GetUtcNow() => Now;
}

/// <summary>A temp folder with a store, a machine-id file and helpers to fill sets.</summary>
internal sealed class StoreFixture : IDisposable
{
    public StoreFixture()
    {
        Dir = Directory.CreateTempSubdirectory("rebootless-store-unit-").FullName;
        MachineIdFile = Path.Combine(Dir, "machine-id");
        File.WriteAllText(MachineIdFile, "0123456789abcdef0123456789abcdef\n");
        Clock = new ManualClock(new DateTimeOffset(2026, 11, 26, 6, 32, 0, TimeSpan.Zero));
        Store = Open();
    }

    public string Dir { get; }

    public string StoreRoot => Path.Combine(Dir, "store");

    public string MachineIdFile { get; }

    public ManualClock Clock { get; }

    public DirectoryImageStore Store { get; }

    public DirectoryImageStore Open() => new(new DirectoryImageStoreOptions
    {
        RootDirectory = StoreRoot,
        TimeProvider = Clock,
        MachineIdPath = MachineIdFile,
    });

    /// <summary>A set with a few files shaped like CRIU's (one large pages image).</summary>
    public CheckpointSet FillSet(params string[] targets)
    {
        var set = Store.CreateSet(targets.Length > 0 ? targets : ["pid:4242"]);
        var rng = new Random(42);
        var pages = new byte[300_000];
        rng.NextBytes(pages);
        File.WriteAllBytes(Path.Combine(set.ImagesDirectory, "pages-1.img"), pages);
        File.WriteAllText(Path.Combine(set.ImagesDirectory, "core-1.img"), "core image of pid 1");
        File.WriteAllText(Path.Combine(set.ImagesDirectory, "pstree.img"), "tree");
        Directory.CreateDirectory(Path.Combine(set.ImagesDirectory, "sub"));
        File.WriteAllText(Path.Combine(set.ImagesDirectory, "sub", "fdinfo-2.img"), "fds", Encoding.ASCII);
        return set;
    }

    public async Task<CheckpointSet> SealedSet(params string[] targets)
    {
        var set = FillSet(targets);
        await Store.SealAsync(set, new SealOptions { CriuVersion = "4.1.1", KernelRelease = "6.12.117+deb13-amd64" });
        return set;
    }

    /// <summary>Flips one bit of the byte at <paramref name="at"/> in place (same size, other content).</summary>
    public static void FlipByte(string file, long at)
    {
        using var fs = new FileStream(file, FileMode.Open, FileAccess.ReadWrite);
        fs.Position = at;
        var b = fs.ReadByte();
        fs.Position = at;
        fs.WriteByte((byte)(b ^ 0x01));
    }

    public void Dispose() => Directory.Delete(Dir, recursive: true);
}
