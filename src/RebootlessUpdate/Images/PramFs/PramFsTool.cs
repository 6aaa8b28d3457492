using System.Diagnostics;
using System.Text;
using RebootlessUpdate.Processes;

namespace RebootlessUpdate.Images.PramFs;

/// <summary>What a region holds, judged from its first 64 KiB (the rule <c>pramfs mkfs</c> applies too).</summary>
internal enum RegionContent
{
    /// <summary>All zero: a fresh pmem region or a new file. Safe to format.</summary>
    Empty,

    /// <summary>A PramFS superblock: ours, never formatted again.</summary>
    PramFs,

    /// <summary>Anything else: someone's data; refused.</summary>
    Foreign,
}

/// <summary>Finds and runs the native <c>pramfs</c> tool.</summary>
internal static class PramFsTool
{
    internal const int FsckClean = 0;
    internal const int FsckRepaired = 1;
    internal const int FsckCorrupt = 2;

    private const int ProbeBytes = 64 * 1024;

    /// <summary>The binary: the option, else the repository build next to this assembly, else PATH.</summary>
    internal static string Locate(string? configured)
    {
        if (configured is not null)
        {
            return File.Exists(configured) ? Path.GetFullPath(configured)
                : throw new ImageStoreException($"the pramfs binary {configured} does not exist; build native-pramfs (cmake -S native-pramfs -B native-pramfs/build && cmake --build native-pramfs/build) or fix PramFsPath");
        }

        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "native-pramfs", "build", "pramfs");
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? string.Empty).Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            var candidate = Path.Combine(dir, "pramfs");
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        throw new ImageStoreException("no pramfs binary found (not in native-pramfs/build above "
            + $"{AppContext.BaseDirectory}, not on PATH); build native-pramfs or set PramFsImageStoreOptions.PramFsPath");
    }

    /// <summary>Classifies the first region of <paramref name="regions"/>.</summary>
    internal static RegionContent Probe(string regions)
    {
        var first = regions.Split(',')[0];
        byte[] head;
        try
        {
            using var stream = new FileStream(first, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            head = new byte[ProbeBytes];
            var read = stream.ReadAtLeast(head, ProbeBytes, throwOnEndOfStream: false);
            head = head[..read];
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ImageStoreException($"cannot read the PramFS region {first}: {e.Message}", e);
        }

        return Classify(head);
    }

    /// <summary>Empty (all zero), ours (a superblock magic in slot 0 or 1), or foreign.</summary>
    internal static RegionContent Classify(ReadOnlySpan<byte> head)
    {
        ReadOnlySpan<byte> magic = "PRAMFSSB"u8;
        if ((head.Length >= 8 && head[..8].SequenceEqual(magic)) || (head.Length >= 4104 && head.Slice(4096, 8).SequenceEqual(magic)))
        {
            return RegionContent.PramFs;
        }

        return head.ContainsAnyExcept((byte)0) ? RegionContent.Foreign : RegionContent.Empty;
    }

    /// <summary>Runs the tool; returns its exit code and its stdout and stderr together.</summary>
    internal static (int ExitCode, string Output) Run(string tool, IEnumerable<string> args, TimeSpan timeout) =>
        Tools.Run(tool, args, timeout);
}

/// <summary>
/// A running <c>pramfs mount -f</c> daemon: started in the foreground so its
/// stderr can be shown when it fails; stopped by unmounting, which ends its loop.
/// </summary>
internal sealed class PramFsDaemon
{
    private readonly Process _process;
    private readonly StringBuilder _stderr = new();

    private PramFsDaemon(Process process, string mountPoint)
    {
        _process = process;
        MountPoint = mountPoint;
    }

    internal string MountPoint { get; }

    internal int Pid => _process.Id;

    internal bool HasExited => _process.HasExited;

    internal string Stderr
    {
        get
        {
            lock (_stderr)
            {
                return _stderr.ToString().Trim();
            }
        }
    }

    /// <summary>Starts the daemon and returns once the mount is live (statfs sees FUSE at the mount point).</summary>
    internal static PramFsDaemon Start(string tool, string regions, string mountPoint, TimeSpan timeout, TimeProvider time)
    {
        Process process;
        try
        {
            process = ProcessRunner.Start(tool, ["mount", "-f", regions, mountPoint]);
        }
        catch (ToolNotStartedException e)
        {
            throw new ImageStoreException($"cannot start the PramFS daemon {tool}: {e.InnerException!.Message}", e);
        }

        var daemon = new PramFsDaemon(process, mountPoint);
        process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is not null)
            {
                lock (daemon._stderr)
                {
                    daemon._stderr.AppendLine(e.Data);
                }
            }
        };
        process.OutputDataReceived += (_, _) => { };
        process.BeginErrorReadLine();
        process.BeginOutputReadLine();

        var deadline = time.GetTimestamp() + (long)(timeout.TotalSeconds * time.TimestampFrequency);
        while (true)
        {
            if (PramFsInterop.FileSystemType(mountPoint) == PramFsInterop.FuseSuperMagic)
            {
                return daemon;
            }

            if (process.HasExited)
            {
                process.WaitForExit();
                throw new ImageStoreException($"the PramFS daemon for {regions} exited with {process.ExitCode} before mounting {mountPoint}: {daemon.Stderr}");
            }

            if (time.GetTimestamp() > deadline)
            {
                process.Kill();
                process.WaitForExit();
                _ = Interop.Libc.Umount2(mountPoint, 2 /* MNT_DETACH */);
                throw new ImageStoreException($"the PramFS daemon for {regions} did not make {mountPoint} live within {timeout}; killed it. It said: {daemon.Stderr}");
            }

            Thread.Sleep(20);
        }
    }

    /// <summary>Unmounts (the daemon commits and exits) and waits for the daemon.</summary>
    /// <exception cref="ImageStoreException">The mount is busy, or the daemon failed or did not exit.</exception>
    internal void Stop(TimeSpan timeout)
    {
        if (!_process.HasExited)
        {
            var (code, output) = Tools.Run("fusermount3", ["-u", MountPoint], TimeSpan.FromSeconds(30), throwOnMissing: false);
            if (code != 0 && Interop.Libc.Umount2(MountPoint, 0) != 0)
            {
                throw new ImageStoreException($"cannot unmount the PramFS store at {MountPoint}: {output.Trim()}"
                    + " (a process still has files open there?)");
            }
        }

        if (!_process.WaitForExit(timeout))
        {
            throw new ImageStoreException($"the PramFS daemon {_process.Id} did not exit within {timeout} after the unmount of {MountPoint}: {Stderr}");
        }

        _process.WaitForExit();
        var exit = _process.ExitCode;
        _process.Dispose();
        if (exit != 0)
        {
            throw new ImageStoreException($"the PramFS daemon for {MountPoint} exited with {exit}: {Stderr}");
        }
    }
}
