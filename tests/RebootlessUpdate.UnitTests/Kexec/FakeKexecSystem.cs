using System.IO.Compression;
using Microsoft.Win32.SafeHandles;
using RebootlessUpdate.Kexec;

namespace RebootlessUpdate.UnitTests.Kexec;

/// <summary>
/// A fake machine for the kexec driver: a temp folder holding proc/sys/boot
/// files, and a recorder of every system call the driver makes. Nothing here
/// reaches the real kernel.
/// </summary>
internal sealed class FakeKexecSystem : IKexecSystem, IDisposable
{
    public FakeKexecSystem()
    {
        Root = Directory.CreateTempSubdirectory("rebootless-fakeroot-").FullName;
        Write("proc/sys/kernel/osrelease", "6.12.0-test\n");
    }

    public string Root { get; }

    public uint EffectiveUserId { get; set; }

    public List<(string? Kernel, string? Initrd, string CommandLine, ulong Flags)> KexecFileLoadCalls { get; } = [];

    public List<(string File, IReadOnlyList<string> Args)> ToolRuns { get; } = [];

    public int SyncCalls { get; private set; }

    public int RebootCalls { get; private set; }

    /// <summary>What kexec_file_load returns (0 or an errno); on 0 it marks the kernel loaded.</summary>
    public int KexecFileLoadErrno { get; set; }

    public int RebootErrno { get; set; } = 22;

    public ToolResult ToolResult { get; set; } = new(0, "");

    public void Write(string relative, string content)
    {
        var path = Path.Combine(Root, relative);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllText(path, content);
    }

    public void WriteGzip(string relative, string content)
    {
        var path = Path.Combine(Root, relative);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        using var file = File.Create(path);
        using var gz = new GZipStream(file, CompressionLevel.Fastest);
        using var w = new StreamWriter(gz);
        w.Write(content);
    }

    /// <summary>A kernel with kexec: sysfs present, nothing loaded, no lockdown.</summary>
    public FakeKexecSystem WithKexec(bool loaded = false)
    {
        Write("sys/kernel/kexec_loaded", loaded ? "1\n" : "0\n");
        Write("proc/sys/kernel/kexec_load_disabled", "0\n");
        Write("sys/kernel/security/lockdown", "[none] integrity confidentiality\n");
        Write("boot/config-6.12.0-test", "CONFIG_KEXEC=y\nCONFIG_KEXEC_FILE=y\nCONFIG_KEXEC_SIG=y\n# CONFIG_KEXEC_SIG_FORCE is not set\n");
        return this;
    }

    public bool Loaded
    {
        get => File.ReadAllText(Path.Combine(Root, "sys/kernel/kexec_loaded")).Trim() == "1";
        set => Write("sys/kernel/kexec_loaded", value ? "1\n" : "0\n");
    }

    public int KexecFileLoad(SafeFileHandle? kernel, SafeFileHandle? initrd, string commandLine, ulong flags)
    {
        KexecFileLoadCalls.Add((PathOf(kernel), PathOf(initrd), commandLine, flags));
        if (KexecFileLoadErrno == 0)
        {
            Loaded = (flags & 1) == 0;
        }

        return KexecFileLoadErrno;
    }

    private static string? PathOf(SafeFileHandle? h) =>
        h is null ? null : new FileInfo($"/proc/self/fd/{h.DangerousGetHandle()}").LinkTarget;

    public Task<ToolResult> RunAsync(string file, IReadOnlyList<string> args, TimeSpan timeout, CancellationToken cancellationToken)
    {
        ToolRuns.Add((file, args));
        return Task.FromResult(ToolResult);
    }

    public void Sync() => SyncCalls++;

    public int RebootKexec()
    {
        RebootCalls++;
        return RebootErrno;
    }

    public void Dispose() => Directory.Delete(Root, recursive: true);
}
