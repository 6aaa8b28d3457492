using System.Diagnostics;
using System.Security.Cryptography;
using Microsoft.Win32.SafeHandles;
using RebootlessUpdate.Images.Luo;
using RebootlessUpdate.Kexec;
using RebootlessUpdate.VmAgent.Kexec;

namespace RebootlessUpdate.VmAgent.Images;

/// <summary>What both sides of the LUO scenario share: the session's name and what each token holds.</summary>
internal static class LuoScenario
{
    public const string Session = "rebootless-test";
    public const string DroppedSession = "rebootless-dropped";
    public const ulong ImagesToken = 1;
    public const ulong ManifestToken = 2;

    /// <summary>Runs <paramref name="action"/>; records "ok", or the errno of the LuoException and its message.</summary>
    public static void Try(KexecResults r, string key, Action action)
    {
        try
        {
            action();
            r.Set(key, "ok");
        }
        catch (LuoException e)
        {
            r.Set(key, $"errno{e.Errno}");
            r.Log($"{key}: {e.Message}");
        }
    }

    /// <summary>Loads <paramref name="release"/> with kexec_file_load (this boot's command line, rebootless.boot=2) and jumps; returns only if the jump did not happen.</summary>
    public static async Task JumpAsync(KexecResults r, string release)
    {
        var next = KexecCommandLine.ComposeNext(KexecCommandLine.ReadCurrent(), new NextCommandLineOptions
        {
            SetParameters = [new("rebootless.boot", "2")],
        });
        r.Log("next command line: " + next);
        var sw = Stopwatch.StartNew();
        await new KexecLoader().LoadAsync(new KexecLoadRequest { KernelPath = $"/boot/vmlinuz-{release}", CommandLine = next.ToString() });
        r.Set("load.ms", sw.ElapsedMilliseconds);
        var armed = new KexecJump().Arm(new Always());
        r.Set("jump.at", DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
        await armed.JumpAsync();
    }

    /// <summary>The scenarios arm without a journal: what they jump with is sealed by construction.</summary>
    private sealed class Always : IJumpGuard
    {
        public bool IsCheckpointSealed(out string reason)
        {
            reason = string.Empty;
            return true;
        }
    }

    /// <summary>Closes a descriptor the kernel handed out.</summary>
    public static void Drop(int fd) => new SafeFileHandle(fd, ownsHandle: true).Dispose();

    /// <summary>The SHA-256 of a memfd's first <paramref name="length"/> bytes, read at explicit offsets (its file position is not ours).</summary>
    public static string Sha256(SafeFileHandle memfd, long length)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[1 << 20];
        for (long at = 0; at < length;)
        {
            var n = RandomAccess.Read(memfd, buffer.AsSpan(0, (int)Math.Min(buffer.Length, length - at)), at);
            if (n == 0)
            {
                break;
            }

            hash.AppendData(buffer, 0, n);
            at += n;
        }

        return Convert.ToHexString(hash.GetHashAndReset());
    }
}

/// <summary>
/// <c>luo-preserve JOBDIR NEWRELEASE MIB</c>, on a LUO kernel booted with <c>kho=on liveupdate=on</c>: opens
/// /dev/liveupdate, creates a session, preserves a sealed memfd of MIB MiB of random bytes and a small unsealed one
/// (their hash), records every refusal the kernel gives (a second opener, a second session of that name, a token
/// used twice, a file that is no memfd), creates and closes a second session, then jumps into NEWRELEASE with
/// kexec_file_load holding the session open. Results: JOBDIR/luo-before.results. Returns only if the jump did not happen.
/// </summary>
internal sealed class LuoPreserveCommand : IVmCommand
{
    public string Name => "luo-preserve";

    public async Task<int> RunAsync(IReadOnlyList<string> args)
    {
        var (dir, release, mib) = (args[0], args[1], int.Parse(args[2], System.Globalization.CultureInfo.InvariantCulture));
        var r = new KexecResults(dir, "luo-before");
        var probe = LuoProbe.Check();
        r.Set("probe", probe.Usable);
        r.Log("probe: " + probe.Detail);

        using var device = LuoDevice.Open();
        r.Set("open", "ok");
        LuoScenario.Try(r, "open.second", () => LuoDevice.Open().Dispose());
        var session = device.CreateSession(LuoScenario.Session);
        r.Set("create", "ok");
        LuoScenario.Try(r, "create.again", () => device.CreateSession(LuoScenario.Session).Dispose());

        // The images: MIB MiB of random bytes, sealed read-only before they are preserved.
        using var images = Memfd.Create("rebootless-images");
        var chunk = new byte[1 << 20];
        var sw = Stopwatch.StartNew();
        string written;
        using (var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256))
        {
            for (var i = 0; i < mib; i++)
            {
                Random.Shared.NextBytes(chunk);
                RandomAccess.Write(images, chunk, (long)i << 20);
                hash.AppendData(chunk);
            }

            written = Convert.ToHexString(hash.GetHashAndReset());
            r.Set("images.sha256", written);
        }

        r.Set("images.bytes", (long)mib << 20);
        r.Set("images.write.ms", sw.ElapsedMilliseconds);
        Memfd.SealReadOnly(images);
        r.Set("images.seals", Memfd.Seals(images));
        sw.Restart();
        LuoScenario.Try(r, "preserve.images", () => session.Preserve((int)images.DangerousGetHandle(), LuoScenario.ImagesToken));
        r.Set("preserve.images.ms", sw.ElapsedMilliseconds);
        LuoScenario.Try(r, "preserve.images.again", () => session.Preserve((int)images.DangerousGetHandle(), 7));

        // The manifest: the images' hash, in a memfd left writable.
        using var manifest = Memfd.Create("rebootless-manifest");
        var text = System.Text.Encoding.UTF8.GetBytes("images.sha256=" + written + "\n");
        RandomAccess.Write(manifest, text, 0);
        LuoScenario.Try(r, "preserve.token.taken", () => session.Preserve((int)manifest.DangerousGetHandle(), LuoScenario.ImagesToken));
        LuoScenario.Try(r, "preserve.manifest", () => session.Preserve((int)manifest.DangerousGetHandle(), LuoScenario.ManifestToken));

        // Files LUO must refuse: a file on disk and a pipe's end.
        using (var plain = File.OpenHandle(Path.Combine(dir, "not-a-memfd"), FileMode.Create, FileAccess.ReadWrite))
        {
            LuoScenario.Try(r, "preserve.plainfile", () => session.Preserve((int)plain.DangerousGetHandle(), 3));
        }

        LuoScenario.Try(r, "preserve.closedfd", () => session.Preserve(100_000, 4));

        // A session closed before the jump: the kernel drops it and what it held.
        using (var dropped = device.CreateSession(LuoScenario.DroppedSession))
        using (var held = Memfd.Create("rebootless-dropped"))
        {
            RandomAccess.Write(held, text, 0);
            LuoScenario.Try(r, "dropped.preserve", () => dropped.Preserve((int)held.DangerousGetHandle(), 1));
        }

        r.Set("dropped.closed", "yes");
        await LuoScenario.JumpAsync(r, release);
        GC.KeepAlive(session);
        r.Set("jump.returned", "yes");
        return 3;
    }
}

/// <summary>
/// <c>luo-retrieve JOBDIR</c>, on the kernel luo-preserve jumped into: retrieves the session and both memfds, checks
/// the images against the hash the manifest carried across, that the seals came along (a write is refused), records
/// what the kernel answers for a dropped session, an unknown token and a second retrieval, finishes the session and
/// checks it is gone. Results: JOBDIR/luo-after.results.
/// </summary>
internal sealed class LuoRetrieveCommand : IVmCommand
{
    public string Name => "luo-retrieve";

    public Task<int> RunAsync(IReadOnlyList<string> args)
    {
        var dir = args[0];
        var r = new KexecResults(dir, "luo-after");
        var probe = LuoProbe.Check();
        r.Set("probe", probe.Usable);
        r.Log("probe: " + probe.Detail);
        using var device = LuoDevice.Open();
        LuoScenario.Try(r, "retrieve.dropped", () => device.RetrieveSession(LuoScenario.DroppedSession).Dispose());
        LuoScenario.Try(r, "retrieve.unknown", () => device.RetrieveSession("no-such-session").Dispose());
        var sw = Stopwatch.StartNew();
        var session = device.RetrieveSession(LuoScenario.Session);
        r.Set("retrieve", "ok");
        LuoScenario.Try(r, "retrieve.again", () => device.RetrieveSession(LuoScenario.Session).Dispose());
        LuoScenario.Try(r, "retrieve.fd.unknown", () => LuoScenario.Drop(session.Retrieve(99)));

        using var images = new SafeFileHandle(session.Retrieve(LuoScenario.ImagesToken), ownsHandle: true);
        r.Set("retrieve.images.ms", sw.ElapsedMilliseconds);
        LuoScenario.Try(r, "retrieve.images.again", () => LuoScenario.Drop(session.Retrieve(LuoScenario.ImagesToken)));
        var length = RandomAccess.GetLength(images);
        r.Set("images.bytes", length);
        r.Set("images.seals", Memfd.Seals(images));
        sw.Restart();
        r.Set("images.sha256", LuoScenario.Sha256(images, length));
        r.Set("images.read.ms", sw.ElapsedMilliseconds);
        try
        {
            RandomAccess.Write(images, new byte[] { 1 }, 0);
            r.Set("images.write", "allowed");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            r.Set("images.write", "refused");
            r.Log("images.write: " + e.Message);
        }

        using var manifest = new SafeFileHandle(session.Retrieve(LuoScenario.ManifestToken), ownsHandle: true);
        var text = new byte[RandomAccess.GetLength(manifest)];
        RandomAccess.Read(manifest, text, 0);
        r.Set("manifest", System.Text.Encoding.UTF8.GetString(text).Trim());
        LuoScenario.Try(r, "finish", session.Finish);
        LuoScenario.Try(r, "retrieve.fd.after.finish", () => LuoScenario.Drop(session.Retrieve(LuoScenario.ManifestToken)));
        session.Dispose();
        LuoScenario.Try(r, "retrieve.after.finish", () => device.RetrieveSession(LuoScenario.Session).Dispose());
        r.Set("done", "yes");
        return Task.FromResult(0);
    }
}

/// <summary><c>luo-probe JOBDIR</c>: what the LUO probe says on this kernel, in JOBDIR/luo-probe.results.</summary>
internal sealed class LuoProbeCommand : IVmCommand
{
    public string Name => "luo-probe";

    public Task<int> RunAsync(IReadOnlyList<string> args)
    {
        var r = new KexecResults(args[0], "luo-probe");
        var probe = LuoProbe.Check();
        r.Set("usable", probe.Usable);
        r.Set("detail", probe.Detail);
        return Task.FromResult(0);
    }
}
