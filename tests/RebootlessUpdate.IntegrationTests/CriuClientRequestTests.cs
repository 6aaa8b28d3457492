using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Mono.Unix.Native;
using RebootlessUpdate.Criu;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests;

/// <summary>Every request type and the harder workloads, against the testbed's real criu 4.1.1.</summary>
[NonParallelizable]
public class CriuClientRequestTests : CriuTestFixture
{
    public CriuClientRequestTests()
        : base("rebootless-req-")
    {
    }

    [Test]
    public async Task A_256_MiB_stateful_workload_is_restored_with_memory_file_offset_socket_pipe_child_and_thread_intact()
    {
        using var workload = Workload.StartProgram(NewDir("work"), 256);
        var checksum = workload.InitialChecksum;
        var images = NewDir("images");

        var dump = await Client.DumpAsync(new CriuDumpOptions { ImagesDirectory = images, Pid = workload.RootPid });
        var countAtDump = workload.ReadCounter();
        Workload.WaitFor(() => workload.IsAlive ? 0 : 1, "the dumped tree to be gone");
        var restore = await Client.RestoreAsync(new CriuRestoreOptions { ImagesDirectory = images });
        workload.RootPid = restore.Pid;

        var verdict = workload.Check();
        Assert.Multiple(() =>
        {
            Assert.That(verdict, Does.StartWith("ok").And.Contain($"mem={checksum}"), verdict);
            Assert.That(workload.ReadCounter(), Is.GreaterThan(countAtDump).And.LessThan(countAtDump + 400));
            Assert.That(dump.Statistics!.PagesWritten, Is.GreaterThanOrEqualTo(256UL * 256), "256 MiB of 4 KiB pages");
        });
    }

    [Test]
    public async Task Lazy_restore_from_a_detached_lazy_pages_daemon_keeps_the_memory_intact_and_leaves_the_images_folder_as_dumped()
    {
        var features = await Client.CheckFeaturesAsync();
        if (!features.LazyPages)
        {
            Testbed.Missing("userfaultfd lazy pages on this kernel");
        }

        using var workload = Workload.StartProgram(NewDir("work"), 64);
        var checksum = workload.InitialChecksum;
        var images = NewDir("images");
        var work = NewDir("criu-work");
        await Client.DumpAsync(new CriuDumpOptions { ImagesDirectory = images, WorkDirectory = work, Pid = workload.RootPid });
        Workload.WaitFor(() => workload.IsAlive ? 0 : 1, "the dumped tree to be gone");
        var dumped = Directory.GetFiles(images).Order().ToList();

        await using var daemon = await Client.StartLazyPagesDaemonAsync(new CriuLazyPagesOptions { ImagesDirectory = images, WorkDirectory = work, LogLevel = 4 });
        Assert.That(CriuLazyPagesDaemon.FindRunning(), Does.Contain(daemon.Pid), "a running daemon is found (the Plan stage refuses to checkpoint meanwhile)");
        var restore = await Client.RestoreAsync(new CriuRestoreOptions { ImagesDirectory = images, WorkDirectory = work, LazyPages = true });
        workload.RootPid = restore.Pid;

        var verdict = workload.Check();
        await daemon.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(60));
        Assert.That(CriuLazyPagesDaemon.FindRunning(), Does.Not.Contain(daemon.Pid));
        TestContext.Out.WriteLine($"daemon {daemon.Pid}; restore statistics {restore.Statistics}; {verdict}");
        Assert.Multiple(() =>
        {
            Assert.That(verdict, Does.StartWith("ok").And.Contain($"mem={checksum}"), verdict);
            Assert.That(File.ReadAllText(daemon.LogFile), Does.Contain("uffd"), "pages went through userfaultfd");
            Assert.That(Path.GetDirectoryName(daemon.LogFile), Is.EqualTo(work));
            Assert.That(File.Exists(Path.Combine(work, CriuLazyPagesDaemon.SocketName)), Is.True, "the socket is in the work folder");
            Assert.That(Directory.GetFiles(images).Order(), Is.EqualTo(dumped), "nothing was added to the images folder");
        });
    }

    [Test]
    public void A_lazy_pages_daemon_over_a_folder_without_images_fails_with_criu_s_reason()
    {
        var empty = NewDir("no-images");
        var e = Assert.ThrowsAsync<CriuTransportException>(() => Client.StartLazyPagesDaemonAsync(new CriuLazyPagesOptions { ImagesDirectory = empty, WorkDirectory = NewDir("w") }));
        TestContext.Out.WriteLine(e!.Message);
        Assert.That(e.Message, Does.StartWith("criu lazy-pages did not get ready"));
    }

    [Test]
    public async Task Notifications_arrive_in_criu_order_for_dump_and_restore()
    {
        using var workload = Workload.Start(NewDir("work"));
        var images = NewDir("images");
        var dumpSeen = new List<string>();
        var restoreSeen = new List<string>();

        await Client.DumpAsync(new CriuDumpOptions { ImagesDirectory = images, Pid = workload.RootPid, OnNotification = (n, _) => { dumpSeen.Add(n.Script); return ValueTask.CompletedTask; } });
        Workload.WaitFor(() => workload.IsAlive ? 0 : 1, "the dumped tree to be gone");
        var restore = await Client.RestoreAsync(new CriuRestoreOptions { ImagesDirectory = images, OnNotification = (n, _) => { restoreSeen.Add(n.Script); return ValueTask.CompletedTask; } });
        workload.RootPid = restore.Pid;

        TestContext.Out.WriteLine($"dump: {string.Join(", ", dumpSeen)}; restore: {string.Join(", ", restoreSeen)}");
        Assert.Multiple(() =>
        {
            Assert.That(dumpSeen, Is.EqualTo(new[] { "pre-dump", "query-ext-files", "post-dump" }));
            Assert.That(restoreSeen, Is.EqualTo(new[] { "pre-restore", "setup-namespaces", "post-setup-namespaces", "post-restore", "pre-resume", "post-resume" }));
        });
    }

    [Test]
    public async Task Restore_with_an_inherited_pipe_writes_into_the_callers_new_pipe()
    {
        // The workload's stdout is a pipe to this process; after the dump, a new
        // pipe of ours takes its place through inherit_fd, and the count goes on in it.
        var psi = new ProcessStartInfo("unshare") { UseShellExecute = false, RedirectStandardOutput = true };
        foreach (var a in new[] { "--pid", "--fork", "setsid", "sh", "-c", "exec </dev/null 2>/dev/null; i=0; while :; do i=$((i+1)); echo $i; sleep 0.05; done" })
        {
            psi.ArgumentList.Add(a);
        }

        using var unshare = Process.Start(psi)!;
        var root = Workload.WaitFor(() => Workload.ChildrenOf(unshare.Id) is [var first, ..] ? first : 0, "the namespace's init");
        var firstLine = await unshare.StandardOutput.ReadLineAsync();
        var pipeKey = Path.GetFileName(new FileInfo($"/proc/{root}/fd/1").LinkTarget!);
        Assert.That(pipeKey, Does.StartWith("pipe:["));
        var images = NewDir("images");
        await Client.DumpAsync(new CriuDumpOptions { ImagesDirectory = images, Pid = root });
        var lastBefore = long.Parse(firstLine!, CultureInfo.InvariantCulture);
        while (await unshare.StandardOutput.ReadLineAsync() is { } line)
        {
            lastBefore = long.Parse(line, CultureInfo.InvariantCulture); // drain to EOF: the old writers are gone
        }

        Assert.That(Syscall.pipe(out var readFd, out var writeFd), Is.Zero);
        int restored;
        try
        {
            var restore = await Client.RestoreAsync(new CriuRestoreOptions
            {
                ImagesDirectory = images,
                InheritFds = new Dictionary<string, int> { [pipeKey] = writeFd },
            });
            restored = restore.Pid;
        }
        finally
        {
            _ = Syscall.close(writeFd);
        }

        try
        {
            using var reader = new StreamReader(new FileStream(new Microsoft.Win32.SafeHandles.SafeFileHandle(readFd, ownsHandle: true), FileAccess.Read));
            var next = long.Parse((await reader.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(30)))!, CultureInfo.InvariantCulture);
            var after = long.Parse((await reader.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(30)))!, CultureInfo.InvariantCulture);

            Assert.Multiple(() =>
            {
                Assert.That(firstLine, Is.EqualTo("1"));
                Assert.That(next, Is.EqualTo(lastBefore + 1), "the count continues in the new pipe exactly where it stopped");
                Assert.That(after, Is.EqualTo(next + 1));
            });
        }
        finally
        {
            _ = Syscall.kill(restored, Signum.SIGKILL);
        }
    }

    [Test]
    public async Task With_a_work_folder_the_log_and_statistics_go_there_and_images_stay_clean()
    {
        using var workload = Workload.Start(NewDir("work"));
        var images = NewDir("images");
        var workDir = NewDir("criu-work");

        var dump = await Client.DumpAsync(new CriuDumpOptions { ImagesDirectory = images, WorkDirectory = workDir, Pid = workload.RootPid, LeaveRunning = true });

        Assert.Multiple(() =>
        {
            Assert.That(dump.LogFile, Is.EqualTo(Path.Combine(workDir, "dump.log")));
            Assert.That(File.Exists(dump.LogFile), Is.True);
            Assert.That(dump.Statistics, Is.Not.Null, "stats-dump read from the work folder");
            Assert.That(File.Exists(Path.Combine(workDir, "stats-dump")), Is.True);
            Assert.That(Directory.GetFiles(images, "*.log"), Is.Empty);
            Assert.That(Directory.GetFiles(images, "pages-*.img"), Is.Not.Empty);
        });
    }

    [Test]
    public async Task Leave_running_dump_keeps_the_workload_running_and_intact()
    {
        using var workload = Workload.StartProgram(NewDir("work"), 16);
        var images = NewDir("images");

        await Client.DumpAsync(new CriuDumpOptions { ImagesDirectory = images, Pid = workload.RootPid, LeaveRunning = true });

        Assert.That(workload.IsAlive, Is.True);
        Assert.That(workload.Check(), Does.StartWith("ok"));
    }

    [Test]
    public async Task Restore_as_sibling_makes_the_tree_a_child_of_the_caller()
    {
        using var workload = Workload.Start(NewDir("work"));
        var images = NewDir("images");
        await Client.DumpAsync(new CriuDumpOptions { ImagesDirectory = images, Pid = workload.RootPid });
        Workload.WaitFor(() => workload.IsAlive ? 0 : 1, "the dumped tree to be gone");

        var restore = await Client.RestoreAsync(new CriuRestoreOptions { ImagesDirectory = images, AsSibling = true });
        workload.RootPid = restore.Pid;

        var ppid = int.Parse(File.ReadAllText($"/proc/{restore.Pid}/stat").Split(')')[1].Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);
        Assert.That(ppid, Is.EqualTo(Environment.ProcessId));
        Syscall.kill(restore.Pid, Signum.SIGKILL);
        Assert.That(Syscall.waitpid(restore.Pid, out _, 0), Is.EqualTo(restore.Pid), "the caller reaps its restored child");
    }

    [Test]
    public async Task Cpuinfo_dump_then_check_passes_on_the_same_host()
    {
        var images = NewDir("cpu");

        await Client.CpuInfoDumpAsync(images);
        await Client.CpuInfoCheckAsync(images);

        Assert.That(File.Exists(Path.Combine(images, "cpuinfo.img")), Is.True);
    }

    [Test]
    public async Task Cpuinfo_check_without_a_dump_fails_clearly()
    {
        var images = NewDir("empty");

        var e = Assert.ThrowsAsync<CriuRequestFailedException>(() => Client.CpuInfoCheckAsync(images));

        Assert.That(e!.Request, Is.EqualTo(CriuRequestType.CpuInfoCheck));
        Assert.That(e.Message, Does.StartWith("criu CPUINFO_CHECK failed"));
        await Task.CompletedTask;
    }

    [Test]
    public async Task Dump_through_a_page_server_and_restore_from_what_it_wrote()
    {
        using var workload = Workload.StartProgram(NewDir("work"), 32);
        var images = NewDir("images");
        var server = await Client.StartPageServerAsync(new CriuPageServerOptions { ImagesDirectory = images, Port = FreePort(), LogFile = "page-server.log" });

        await Client.DumpAsync(new CriuDumpOptions { ImagesDirectory = images, Pid = workload.RootPid, PageServer = server.Endpoint });
        Workload.WaitFor(() => workload.IsAlive ? 0 : 1, "the dumped tree to be gone");
        Workload.WaitFor(() => IsListening(server.Port) ? 0 : 1, "the page server to finish and close its port", 30);
        var restore = await Client.RestoreAsync(new CriuRestoreOptions { ImagesDirectory = images });
        workload.RootPid = restore.Pid;

        Assert.That(server.Port, Is.GreaterThan(0));
        Assert.That(Directory.GetFiles(images, "pages-*.img"), Is.Not.Empty, "pages came through the page server");
        Assert.That(workload.Check(), Does.StartWith("ok"));
    }

    [Test]
    public async Task Page_server_child_is_waited_for_on_the_same_connection()
    {
        using var workload = Workload.Start(NewDir("work"));
        var images = NewDir("images");
        await using var server = await Client.StartPageServerChildAsync(new CriuPageServerOptions { ImagesDirectory = images, Port = FreePort(), LogFile = "page-server.log" });

        await Client.DumpAsync(new CriuDumpOptions { ImagesDirectory = images, Pid = workload.RootPid, PageServer = server.Endpoint, LeaveRunning = true });
        var status = await server.WaitAsync().WaitAsync(TimeSpan.FromSeconds(60));

        Assert.That(status, Is.Zero, "raw wait status of a page server that exited normally");
        Assert.That(Directory.GetFiles(images, "pages-*.img"), Is.Not.Empty);
    }

    [Test]
    public async Task Single_pre_dump_is_refused_up_front_on_a_kernel_without_softScratchDirectoryty_and_the_workload_keeps_running()
    {
        var features = await Client.CheckFeaturesAsync();
        if (features.MemoryTracking)
        {
            Assert.Ignore("this kernel has soft-dirty; the VM tier covers pre-dumps");
        }

        using var workload = Workload.Start(NewDir("work"));
        var images = NewDir("pre");

        Assert.That(() => Client.SinglePreDumpAsync(new CriuDumpOptions { ImagesDirectory = images, Pid = workload.RootPid }),
            Throws.TypeOf<CriuFeatureUnavailableException>().With.Message.Contains("CONFIG_MEM_SOFT_DIRTY"));
        var before = workload.ReadCounter();
        await Task.Delay(300);
        Assert.That(workload.ReadCounter(), Is.GreaterThan(before));
    }

    [Test]
    public async Task Criu_service_transport_dumps_and_restores()
    {
        var socket = Path.Combine(ScratchDirectory, "criu.sock");
        var start = new ProcessStartInfo(TestbedInfo.Criu) { ArgumentList = { "service", "--address", socket, "-o", Path.Combine(ScratchDirectory, "service.log"), "-v4" }, UseShellExecute = false };
        // The client does not start a service: as the README says, where breakpoints do not fire it is started without them.
        foreach (var (name, value) in HardwareBreakpointProbe.WorkerEnvironment(CriuBreakpoints.Auto, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance))
        {
            start.Environment[name] = value;
        }

        using var service = Process.Start(start)!;
        try
        {
            Workload.WaitFor(() => File.Exists(socket) ? 1 : 0, "the criu service socket");
            var client = new CriuClient(new CriuClientOptions { ServiceAddress = socket });
            using var workload = Workload.Start(NewDir("work"));
            var images = NewDir("images");

            var version = await client.GetVersionAsync();
            await client.DumpAsync(new CriuDumpOptions { ImagesDirectory = images, Pid = workload.RootPid });
            Workload.WaitFor(() => workload.IsAlive ? 0 : 1, "the dumped tree to be gone");
            var countAtDump = workload.ReadCounter();
            var restore = await client.RestoreAsync(new CriuRestoreOptions { ImagesDirectory = images });
            workload.RootPid = restore.Pid;
            Workload.WaitFor(() => workload.ReadCounter() > countAtDump + 3 ? 1 : 0, "the restored tree to count on");

            Assert.That(version.Major, Is.GreaterThanOrEqualTo(4));
            Assert.That(() => client.RestoreAsync(new CriuRestoreOptions { ImagesDirectory = images, AsSibling = true }),
                Throws.ArgumentException.With.Message.Contains("criu service rejects AsSibling"));
        }
        finally
        {
            service.Kill();
            service.WaitForExit(5000);
        }
    }

    [Test]
    public void Connecting_to_a_service_that_is_not_running_says_so()
    {
        var client = new CriuClient(new CriuClientOptions { ServiceAddress = Path.Combine(ScratchDirectory, "nobody.sock") });

        Assert.That(() => client.GetVersionAsync(), Throws.TypeOf<CriuTransportException>().With.Message.Contains("Is `criu service --address"));
    }

    [Test]
    public async Task Statistics_agree_with_crit_decode()
    {
        using var workload = Workload.StartProgram(NewDir("work"), 8);
        var images = NewDir("images");

        var dump = await Client.DumpAsync(new CriuDumpOptions { ImagesDirectory = images, Pid = workload.RootPid, LeaveRunning = true });
        var crit = ProcessRunner.Run(TestbedInfo.Crit, ["decode", "-i", Path.Combine(images, "stats-dump")], TimeSpan.FromMinutes(1));

        Assert.That(crit.ExitCode, Is.Zero, crit.ToString());
        var d = JsonDocument.Parse(crit.Output).RootElement.GetProperty("entries")[0].GetProperty("dump");
        Assert.Multiple(() =>
        {
            Assert.That(dump.Statistics!.PagesWritten, Is.EqualTo(d.GetProperty("pages_written").GetUInt64()));
            Assert.That(dump.Statistics.PagesScanned, Is.EqualTo(d.GetProperty("pages_scanned").GetUInt64()));
            Assert.That(dump.Statistics.Frozen, Is.EqualTo(TimeSpan.FromMicroseconds(d.GetProperty("frozen_time").GetUInt32())));
            Assert.That(dump.Statistics.Freezing, Is.EqualTo(TimeSpan.FromMicroseconds(d.GetProperty("freezing_time").GetUInt32())));
            Assert.That(dump.Statistics.MemoryWrite, Is.EqualTo(TimeSpan.FromMicroseconds(d.GetProperty("memwrite_time").GetUInt32())));
        });
    }

    [Test]
    public async Task A_criu_that_reports_version_3_10_is_refused_for_options_it_lacks()
    {
        // A fake criu: answers any swrk request with VERSION 3.10 (the golden bytes
        // of criu_resp{type=VERSION, success, version{3, 10}}) through the given fd.
        var fake = Path.Combine(ScratchDirectory, "criu-3.10");
        await File.WriteAllTextAsync(fake, "#!/bin/sh\n[ \"$1\" = swrk ] || exit 1\nprintf '\\010\\012\\020\\001\\122\\004\\010\\003\\020\\012' >&$2\nsleep 1\n");
        File.SetUnixFileMode(fake, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        var client = new CriuClient(new CriuClientOptions { CriuPath = fake });

        var version = await client.GetVersionAsync();

        Assert.That(version, Is.EqualTo(new CriuVersion(3, 10)));
        Assert.That(() => client.DumpAsync(new CriuDumpOptions { ImagesDirectory = ScratchDirectory, Pid = 1, NetworkLock = CriuNetworkLock.Skip }),
            Throws.TypeOf<CriuVersionException>().With.Message.EqualTo(
                "NetworkLock = Skip needs criu 3.19 or newer, but the installed criu is 3.10. Install a newer CRIU (4.0 or later is recommended) or do without NetworkLock = Skip."));
    }

    [Test]
    public async Task A_read_only_images_folder_fails_clearly_and_nothing_is_left_frozen()
    {
        using var workload = Workload.Start(NewDir("work"));
        var images = NewDir("readonly");
        var mount = ProcessRunner.Run("mount", ["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", images], TimeSpan.FromSeconds(30));
        Assert.That(mount.ExitCode, Is.Zero, mount.ToString());
        try
        {
            var e = Assert.ThrowsAsync<CriuRequestFailedException>(() => Client.DumpAsync(new CriuDumpOptions { ImagesDirectory = images, Pid = workload.RootPid }));

            TestContext.Out.WriteLine(e!.Message);
            Assert.That(e.Cause, Does.Contain("Read-only file system").Or.Contain("Permission denied"), e.Message);
            Assert.That(e.Message, Does.StartWith($"criu DUMP failed: {e.Cause}; errno"), "the cause CRIU printed comes before the errno");
            var before = workload.ReadCounter();
            await Task.Delay(300);
            Assert.That(workload.ReadCounter(), Is.GreaterThan(before), "the workload is not frozen");
        }
        finally
        {
            ProcessRunner.Run("umount", [images], TimeSpan.FromSeconds(30));
        }
    }

    [Test]
    public async Task A_listening_socket_this_kernel_cannot_dump_fails_with_the_log_lines_and_the_process_keeps_running()
    {
        var work = NewDir("work");
        var counter = Path.Combine(work, "counter");
        var script = $"import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\ni = 0\nwhile True:\n    i += 1\n    open('{counter}.tmp', 'w').write(str(i)); __import__('os').rename('{counter}.tmp', '{counter}')\n    time.sleep(0.05)\n";
        await File.WriteAllTextAsync(Path.Combine(work, "listen.py"), script);
        using var workload = Workload.StartCommand(work, ["python3", Path.Combine(work, "listen.py")]);
        var images = NewDir("images");

        try
        {
            await Client.DumpAsync(new CriuDumpOptions { ImagesDirectory = images, Pid = workload.RootPid });
            Assert.Fail("expected criu to refuse the listening socket on this kernel (testbed.md); if it now works, the kernel or criu changed");
        }
        catch (CriuRequestFailedException e)
        {
            Assert.That(e.LogExcerpt, Is.Not.Empty, e.Message);
            var before = workload.ReadCounter();
            await Task.Delay(400);
            Assert.That(workload.ReadCounter(), Is.GreaterThan(before), "still running after the failed dump");
        }
    }

    /// <summary>True while something listens on 127.0.0.1:<paramref name="port"/> (from /proc/net/tcp, without connecting).</summary>
    private static bool IsListening(int port) =>
        File.ReadLines("/proc/net/tcp").Skip(1)
            .Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            .Any(f => f[3] == "0A" && int.Parse(f[1].Split(':')[1], NumberStyles.HexNumber, CultureInfo.InvariantCulture) == port);

    private static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }
}
