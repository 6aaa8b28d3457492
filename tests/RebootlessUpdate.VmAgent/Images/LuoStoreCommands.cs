using System.Globalization;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Images;
using RebootlessUpdate.Images.Luo;
using RebootlessUpdate.VmAgent.Kexec;

namespace RebootlessUpdate.VmAgent.Images;

/// <summary>
/// <c>luo-store-dump JOBDIR NEWRELEASE [flip]</c>, on a LUO kernel: a folder store on a tmpfs at /run/luo/store,
/// the workload dumped by criu into it and sealed, the store's files carried into a LUO session with
/// <see cref="LuoFolderHandover"/> (no copy: they are unlinked and preserved), then the jump holding the session.
/// With "flip", one byte of a page image is changed through the held descriptor first, as an attacker with root
/// between seal and jump would. Results: JOBDIR/images-* and JOBDIR/luo-store.results.
/// </summary>
internal sealed class LuoStoreDumpCommand : IVmCommand
{
    internal const string Store = "/run/luo/store";
    internal const string Session = "rebootless-store";

    public string Name => "luo-store-dump";

    public async Task<int> RunAsync(IReadOnlyList<string> args)
    {
        var (job, release) = (args[0], args[1]);
        var r = new KexecResults(job, "luo-store");
        var store = new DirectoryImageStore(new DirectoryImageStoreOptions { RootDirectory = Store });
        var (set, manifest, _) = await PmemScenario.DumpAndSealAsync(store, job);
        using var device = LuoDevice.Open();
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var sent = LuoFolderHandover.Send(device, Session, Store);
        r.Set("send.ms", sw.ElapsedMilliseconds);
        r.Set("send.files", sent.Files);
        r.Set("send.bytes", sent.Bytes);
        r.Set("left.in.store", Directory.EnumerateFiles(Store, "*", SearchOption.AllDirectories).Count());
        if (args.Count > 2 && args[2] == "flip")
        {
            // The page image, reopened for writing through the descriptor the session holds (it has no name left).
            var pages = manifest.Files.Select(f => f.Path).First(p => Path.GetFileName(p).StartsWith("pages-", StringComparison.Ordinal));
            var held = Directory.EnumerateFileSystemEntries("/proc/self/fd")
                .First(fd => new FileInfo(fd).LinkTarget is { } t && t.StartsWith(Path.Combine(set.ImagesDirectory, Path.GetFileName(pages)), StringComparison.Ordinal));
            using var w = File.OpenHandle(held, FileMode.Open, FileAccess.ReadWrite);
            var b = new byte[1];
            RandomAccess.Read(w, b, 100);
            b[0] ^= 0xFF;
            RandomAccess.Write(w, b, 100);
            r.Set("flipped", pages);
        }

        await LuoScenario.JumpAsync(r, release);
        r.Set("jump.returned", "yes");
        sent.GiveBack();
        return 3;
    }
}

/// <summary>
/// <c>luo-store-restore JOBDIR</c>, on the kernel luo-store-dump jumped into: the store's files received from the
/// session into a new tmpfs folder, the set verified against its manifest, and (when it passes) restored by criu; the
/// workload must count on. Results: JOBDIR/images-* and JOBDIR/luo-store-after.results.
/// </summary>
internal sealed class LuoStoreRestoreCommand : IVmCommand
{
    public string Name => "luo-store-restore";

    public async Task<int> RunAsync(IReadOnlyList<string> args)
    {
        var job = args[0];
        var r = new KexecResults(job, "luo-store-after");
        using (var device = LuoDevice.Open())
        {
            var sw = System.Diagnostics.Stopwatch.StartNew();
            var received = LuoFolderHandover.Receive(device, LuoStoreDumpCommand.Session, LuoStoreDumpCommand.Store);
            r.Set("receive.ms", sw.ElapsedMilliseconds);
            r.Set("receive.files", received.Files);
            r.Set("receive.bytes", received.Bytes);
            r.Set("receive.problems", received.Problems.Count);
            LuoScenario.Try(r, "session.after.finish", () => device.RetrieveSession(LuoStoreDumpCommand.Session).Dispose());
        }

        var setId = PmemScenario.Read(job, "set-id");
        var countAtDump = long.Parse(PmemScenario.Read(job, "count-at-dump"), CultureInfo.InvariantCulture);
        var counter = Path.Combine(job, "work", "counter");
        var store = new DirectoryImageStore(new DirectoryImageStoreOptions { RootDirectory = LuoStoreDumpCommand.Store });
        var verification = await store.VerifyAsync(setId);
        r.Set("verify.valid", verification.IsValid);
        r.Log("verify: " + verification.Describe());
        if (!verification.IsValid)
        {
            try
            {
                await store.OpenForRestoreAsync(setId);
                r.Set("open", "allowed");
            }
            catch (CheckpointSetVerificationException e)
            {
                r.Set("open", "refused");
                r.Log("open: " + e.Message);
            }

            r.Set("done", "yes");
            return 0;
        }

        var opened = await store.OpenForRestoreAsync(setId);
        var client = new CriuClient(new CriuClientOptions { CriuPath = PmemScenario.CriuPath });
        var restore = await client.RestoreAsync(new CriuRestoreOptions { ImagesDirectory = opened.ImagesDirectory, WorkDirectory = "/tmp" });
        r.Set("restored.pid", restore.Pid);
        GuestWorkload.WaitFor(() => GuestWorkload.ReadCounter(counter) > countAtDump + 5 ? 1 : 0, "the restored workload to count on", 60);
        r.Set("count.at.dump", countAtDump);
        r.Set("count.after", GuestWorkload.ReadCounter(counter));
        r.Set("alive", GuestWorkload.IsRunning(restore.Pid));
        r.Set("done", "yes");
        return 0;
    }
}
