using RebootlessUpdate.Criu;
using RebootlessUpdate.Criu.Protocol;

namespace RebootlessUpdate.UnitTests.Criu;

/// <summary>The client's protocol handling against an in-memory peer (a real socketpair).</summary>
public class CriuProtocolTests
{
    private string _images = null!;

    [SetUp]
    public void SetUp() => _images = Directory.CreateTempSubdirectory("rebootless-fake-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(_images, recursive: true);

    private static criu_resp VersionResp(int major, int minor, int sublevel = 0) => new()
    {
        Type = criu_req_type.Version,
        Success = true,
        Version = new criu_version { MajorNumber = major, MinorNumber = minor, Sublevel = sublevel },
    };

    [Test]
    public async Task Version_is_read_from_the_reply()
    {
        var client = FakeCriuPeer.Client(async peer =>
        {
            await peer.ExpectAsync(criu_req_type.Version);
            peer.Write(VersionResp(4, 2, 1));
        });

        var v = await client.GetVersionAsync();

        Assert.That(v, Is.EqualTo(new CriuVersion(4, 2, 1)));
    }

    [Test]
    public async Task A_reply_larger_than_any_default_buffer_arrives_whole()
    {
        var gitid = new string('g', 150_000);
        var client = FakeCriuPeer.Client(async peer =>
        {
            await peer.ExpectAsync(criu_req_type.Version);
            var resp = VersionResp(4, 1);
            resp.Version.Gitid = gitid;
            peer.Write(resp);
        });

        var v = await client.GetVersionAsync();

        Assert.That(v.GitId, Has.Length.EqualTo(gitid.Length));
    }

    [Test]
    public async Task A_large_request_with_thousands_of_external_entries_is_sent_whole()
    {
        var externals = Enumerable.Range(0, 3000).Select(i => $"mnt[/var/lib/containers/ct/volumes/volume-{i:D5}]:v{i}").ToArray();
        criu_req? seen = null;
        var client = FakeCriuPeer.Client(async peer =>
        {
            seen = await peer.ExpectAsync(criu_req_type.Dump);
            peer.Write(FakeCriuPeer.Ok(criu_req_type.Dump));
        });

        await client.DumpAsync(new CriuDumpOptions { ImagesDirectory = _images, Pid = 42, External = externals });

        Assert.That(seen!.Opts.External, Is.EqualTo(externals));
        Assert.That(seen.Opts.ImagesDirFd, Is.GreaterThanOrEqualTo(0), "the images folder goes as a descriptor");
    }

    [TestCase(0)]
    [TestCase(7)]
    public async Task A_successful_dump_whose_statistics_a_full_store_cut_short_succeeds_without_statistics(int length)
    {
        var client = FakeCriuPeer.Client(async peer =>
        {
            var req = await peer.ExpectAsync(criu_req_type.Dump);
            WriteStats(req, 100);
            var stats = $"/proc/{Environment.ProcessId}/fd/{req.Opts.ImagesDirFd}/stats-dump";
            using (var f = File.OpenWrite(stats))
            {
                f.SetLength(length); // what CRIU leaves when its write hits ENOSPC
            }

            peer.Write(FakeCriuPeer.Ok(criu_req_type.Dump));
        });

        var result = await client.DumpAsync(new CriuDumpOptions { ImagesDirectory = _images, Pid = 42 });

        Assert.That(result.Statistics, Is.Null, "CRIU's answer decides the outcome; the statistics are only a report");
        Assert.That(() => CriuStatsImage.ReadDump(Path.Combine(_images, "stats-dump")), Throws.InstanceOf<InvalidDataException>(), "reading them directly still says why");
    }

    [Test]
    public void A_reply_of_the_wrong_type_is_a_transport_error()
    {
        var client = FakeCriuPeer.Client(async peer =>
        {
            await peer.ExpectAsync(criu_req_type.Dump);
            peer.Write(FakeCriuPeer.Ok(criu_req_type.Restore));
        });

        Assert.That(() => client.DumpAsync(new CriuDumpOptions { ImagesDirectory = _images, Pid = 42 }),
            Throws.TypeOf<CriuTransportException>().With.Message.Contains("answered a DUMP request with a RESTORE response"));
    }

    [Test]
    public void A_truncated_datagram_is_a_transport_error()
    {
        var client = FakeCriuPeer.Client(async peer =>
        {
            await peer.ExpectAsync(criu_req_type.Version);
            peer.WriteRaw(Convert.FromHexString("080A1001520A08")); // cut inside the version submessage
        });

        Assert.That(() => client.GetVersionAsync(), Throws.TypeOf<CriuTransportException>().With.Message.Contains("unreadable response"));
    }

    [Test]
    public void A_reply_without_required_fields_is_a_transport_error()
    {
        var client = FakeCriuPeer.Client(async peer =>
        {
            await peer.ExpectAsync(criu_req_type.Version);
            peer.WriteRaw(Convert.FromHexString("080A"));
        });

        Assert.That(() => client.GetVersionAsync(), Throws.TypeOf<CriuTransportException>().With.Message.Contains("required fields"));
    }

    [Test]
    public void Peer_closing_mid_notification_is_a_transport_error_naming_the_request()
    {
        var client = FakeCriuPeer.Client(async peer =>
        {
            await peer.ExpectAsync(criu_req_type.Dump);
            peer.Write(new criu_resp { Type = criu_req_type.Notify, Success = true, Notify = new criu_notify { Script = "pre-dump" } });
            peer.Close();
        });

        Assert.That(() => client.DumpAsync(new CriuDumpOptions { ImagesDirectory = _images, Pid = 42, OnNotification = (_, _) => ValueTask.CompletedTask }),
            Throws.TypeOf<CriuTransportException>().With.Message.Contains("closed the connection without answering the DUMP request"));
    }

    [Test]
    public async Task Every_notification_is_answered_in_order_and_the_handler_sees_script_and_pid()
    {
        string[] scripts = ["pre-dump", "network-lock", "post-dump", "network-unlock"];
        var answers = new List<bool>();
        var client = FakeCriuPeer.Client(async peer =>
        {
            var req = await peer.ExpectAsync(criu_req_type.Dump);
            Assert.That(req.Opts.NotifyScripts, Is.True, "notifications are only sent when asked for");
            foreach (var s in scripts)
            {
                peer.Write(new criu_resp { Type = criu_req_type.Notify, Success = true, Notify = new criu_notify { Script = s, Pid = 7 } });
                answers.Add((await peer.ExpectAsync(criu_req_type.Notify)).NotifySuccess);
            }

            peer.Write(FakeCriuPeer.Ok(criu_req_type.Dump));
        });
        var seen = new List<CriuNotification>();

        await client.DumpAsync(new CriuDumpOptions
        {
            ImagesDirectory = _images, Pid = 42,
            OnNotification = (n, _) => { seen.Add(n); return ValueTask.CompletedTask; },
        });

        Assert.That(seen.Select(n => n.Script), Is.EqualTo(scripts));
        Assert.That(seen.Select(n => n.Pid), Has.All.EqualTo(7));
        Assert.That(answers, Has.All.True);
    }

    [Test]
    public async Task A_descriptor_sent_with_a_notification_reaches_the_handler_as_an_owned_handle()
    {
        Assert.That(Mono.Unix.Native.Syscall.pipe(out var readEnd, out var writeEnd), Is.Zero);
        var client = FakeCriuPeer.Client(async peer =>
        {
            await peer.ExpectAsync(criu_req_type.Restore);
            peer.WriteWithDescriptor(new criu_resp { Type = criu_req_type.Notify, Success = true, Notify = new criu_notify { Script = "orphan-pts-master" } }, writeEnd);
            _ = Mono.Unix.Native.Syscall.close(writeEnd); // the client now holds its own copy
            Assert.That((await peer.ExpectAsync(criu_req_type.Notify)).NotifySuccess, Is.True);
            peer.Write(new criu_resp { Type = criu_req_type.Restore, Success = true, Restore = new criu_restore_resp { Pid = 5 } });
        });
        Microsoft.Win32.SafeHandles.SafeFileHandle? received = null;

        await client.RestoreAsync(new CriuRestoreOptions
        {
            ImagesDirectory = _images,
            OrphanPtsMaster = true,
            OnNotification = (n, _) => { received = n.Descriptor; return ValueTask.CompletedTask; },
        });

        Assert.That(received, Is.Not.Null);
        using (var stream = new FileStream(received!, FileAccess.Write, 1))
        {
            stream.Write("through SCM_RIGHTS\n"u8);
        }

        using var reader = new StreamReader(new FileStream(new Microsoft.Win32.SafeHandles.SafeFileHandle(readEnd, ownsHandle: true), FileAccess.Read, 1));
        Assert.That(await reader.ReadLineAsync(), Is.EqualTo("through SCM_RIGHTS"));
    }

    [Test]
    public void Orphan_pts_master_without_a_handler_is_a_usage_error()
    {
        var client = FakeCriuPeer.Client(_ => Task.CompletedTask);

        Assert.That(() => client.RestoreAsync(new CriuRestoreOptions { ImagesDirectory = _images, OrphanPtsMaster = true }),
            Throws.ArgumentException.With.Message.Contains("set OnNotification"));
    }

    [Test]
    public void A_throwing_handler_is_answered_with_failure_and_becomes_the_inner_exception()
    {
        bool? answer = null;
        var client = FakeCriuPeer.Client(async peer =>
        {
            await peer.ExpectAsync(criu_req_type.Dump);
            peer.Write(new criu_resp { Type = criu_req_type.Notify, Success = true, Notify = new criu_notify { Script = "post-dump" } });
            answer = (await peer.ExpectAsync(criu_req_type.Notify)).NotifySuccess;
            peer.Write(new criu_resp { Type = criu_req_type.Dump, Success = false, CrErrno = 0 });
        });

        var e = Assert.ThrowsAsync<CriuRequestFailedException>(() => client.DumpAsync(new CriuDumpOptions
        {
            ImagesDirectory = _images, Pid = 42,
            OnNotification = (_, _) => throw new TimeoutException("health check failed"),
        }));

        Assert.Multiple(() =>
        {
            Assert.That(answer, Is.False);
            Assert.That(e!.InnerException, Is.TypeOf<TimeoutException>());
            Assert.That(e.Message, Does.Contain("health check failed"));
            Assert.That(e.Message, Does.Not.Contain("errno 0"), "never a bare 'errno 0'");
        });
    }

    [Test]
    public void A_failure_names_errno_and_meaning_and_criu_message()
    {
        var client = FakeCriuPeer.Client(async peer =>
        {
            await peer.ExpectAsync(criu_req_type.Restore);
            peer.Write(new criu_resp { Type = criu_req_type.Restore, Success = false, CrErrno = 22, CrErrmsg = "Can't open images" });
        });

        Assert.That(() => client.RestoreAsync(new CriuRestoreOptions { ImagesDirectory = _images }),
            Throws.TypeOf<CriuRequestFailedException>()
                .With.Message.StartsWith("criu RESTORE failed: Can't open images; errno 22 (Invalid argument)")
                .And.Property(nameof(CriuRequestFailedException.Cause)).EqualTo("Can't open images"));
    }

    [Test]
    public void A_pid_collision_is_said_in_plain_words_before_the_errno()
    {
        var client = FakeCriuPeer.Client(async peer =>
        {
            await peer.ExpectAsync(criu_req_type.Restore);
            peer.Write(new criu_resp { Type = criu_req_type.Restore, Success = false, CrErrno = 17, CrErrmsg = "Can't fork for 1234: File exists" });
        });

        Assert.That(() => client.RestoreAsync(new CriuRestoreOptions { ImagesDirectory = _images }),
            Throws.TypeOf<CriuRequestFailedException>().With.Message.StartsWith(
                "criu RESTORE failed: pid 1234 that the restored tree needs is still in use on this host (CRIU: Can't fork for 1234: File exists); errno 17 (File exists)")
                .And.Message.Not.Contains("criu says"));
    }

    [TestCase(new[] { "(00.001) Warn (criu/x.c:1): fine", "(00.002) Error (criu/log.c:57): Can't create log file: Permission denied", "(00.003) Error (criu/cr-service.c:9): later" }, "",
        "Can't create log file: Permission denied")]
    [TestCase(new string[0], "Error (criu/log.c:57): Can't create log file: Permission denied\nError (criu/cr-service.c:1): Can't open\n",
        "Can't create log file: Permission denied")]
    [TestCase(new[] { "(00.001) Error (criu/rlimit.c:1): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted", "(00.002) Error (criu/cr-restore.c:1230): Can't fork for 4242: File exists" }, "",
        "pid 4242 that the restored tree needs is still in use on this host (CRIU: Can't fork for 4242: File exists)")]
    [TestCase(new[] { "(00.056435) Warn  (compel/src/lib/infect.c:133): Unable to interrupt task: 6361 (Operation not permitted)", "(00.056479) Error (compel/src/lib/infect.c:418): Unable to detach from 6361: No such process" }, "",
        "criu could not seize process 6361 (Operation not permitted: another tracer, such as a debugger, may hold it)")]
    public void The_cause_is_the_first_error_criu_logged_or_printed(string[] log, string printed, string cause)
    {
        var e = new CriuRequestFailedException(CriuRequestType.Dump, 56, null, "/x/dump.log", log, criuOutput: printed);

        Assert.That(e.Cause, Is.EqualTo(cause));
        Assert.That(e.Message, Does.StartWith($"criu DUMP failed: {cause}; errno 56 (Invalid request code)"));
    }

    [Test]
    public void An_option_newer_than_the_installed_criu_is_refused_before_sending()
    {
        var requests = new List<criu_req_type>();
        var client = FakeCriuPeer.Client(async peer =>
        {
            var req = await peer.ExpectAsync(criu_req_type.Version);
            requests.Add(req.Type);
            peer.Write(VersionResp(3, 10));
        });

        var e = Assert.ThrowsAsync<CriuVersionException>(() => client.DumpAsync(new CriuDumpOptions
        {
            ImagesDirectory = _images, Pid = 42, LeaveStopped = true,
        }));

        Assert.Multiple(() =>
        {
            Assert.That(e!.Feature, Is.EqualTo("LeaveStopped"));
            Assert.That(e.Minimum, Is.EqualTo(new CriuVersion(3, 19)));
            Assert.That(e.Message, Does.Contain("LeaveStopped needs criu 3.19 or newer, but the installed criu is 3.10"));
            Assert.That(requests, Is.EqualTo(new[] { criu_req_type.Version }), "no DUMP was sent");
        });
    }

    [Test]
    public async Task Restore_passes_inherited_descriptors_to_the_connection()
    {
        var inherited = new List<IReadOnlyCollection<int>>();
        criu_req? seen = null;
        var client = FakeCriuPeer.Client(async peer =>
        {
            seen = await peer.ExpectAsync(criu_req_type.Restore);
            peer.Write(new criu_resp { Type = criu_req_type.Restore, Success = true, Restore = new criu_restore_resp { Pid = 99 } });
        }, inherited: inherited);

        var r = await client.RestoreAsync(new CriuRestoreOptions
        {
            ImagesDirectory = _images,
            InheritFds = new Dictionary<string, int> { ["pipe:[4242]"] = 5 },
        });

        Assert.Multiple(() =>
        {
            Assert.That(r.Pid, Is.EqualTo(99));
            Assert.That(inherited.Single(), Is.EqualTo(new[] { 5 }));
            Assert.That(seen!.Opts.InheritFd.Single().Key, Is.EqualTo("pipe:[4242]"));
        });
    }

    [Test]
    public async Task Iterative_dump_stops_when_pages_stop_shrinking_and_links_parents()
    {
        ulong[] written = [5000, 1200, 1500];
        var parents = new List<string?>();
        var client = FakeCriuPeer.Client(async peer =>
        {
            var first = await peer.NextAsync();
            if (first.Type == criu_req_type.FeatureCheck)
            {
                peer.Write(new criu_resp { Type = criu_req_type.FeatureCheck, Success = true, Features = new criu_features { MemTrack = true } });
                return;
            }

            foreach (var pages in written)
            {
                var req = first.Type == criu_req_type.PreDump ? first : await peer.ExpectAsync(criu_req_type.PreDump);
                first = new criu_req();
                parents.Add(req.Opts.HasParentImg ? req.Opts.ParentImg : null);
                Assert.That(req.Opts.TrackMem, Is.True);
                WriteStats(req, pages);
                peer.Write(FakeCriuPeer.Ok(criu_req_type.PreDump));
            }

            var dump = await peer.ExpectAsync(criu_req_type.Dump);
            parents.Add(dump.Opts.ParentImg);
            WriteStats(dump, 100);
            peer.Write(FakeCriuPeer.Ok(criu_req_type.Dump));
        });

        var result = await client.IterativeDumpAsync(_images, new CriuDumpOptions { ImagesDirectory = _images, Pid = 42 });

        Assert.Multiple(() =>
        {
            Assert.That(result.PreDumps.Select(p => p.Statistics!.PagesWritten), Is.EqualTo(written));
            Assert.That(result.StopReason, Does.Contain("not converging"));
            Assert.That(parents, Is.EqualTo(new string?[] { null, "../pre-1", "../pre-2", "../pre-3" }));
            Assert.That(result.FinalImagesDirectory, Does.EndWith("final"));
        });
    }

    [Test]
    public void Pre_dump_without_memory_tracking_is_refused_before_anything_is_sent()
    {
        var sent = new List<criu_req_type>();
        var client = FakeCriuPeer.Client(async peer =>
        {
            var req = await peer.NextAsync();
            sent.Add(req.Type);
            peer.Write(new criu_resp { Type = criu_req_type.FeatureCheck, Success = true, Features = new criu_features { MemTrack = false, LazyPages = true } });
        });

        Assert.That(() => client.IterativeDumpAsync(_images, new CriuDumpOptions { ImagesDirectory = _images, Pid = 42 }),
            Throws.TypeOf<CriuFeatureUnavailableException>().With.Message.Contains("soft-dirty"));
        Assert.That(sent, Is.EqualTo(new[] { criu_req_type.FeatureCheck }));
    }

    [TestCase(new ulong[] { 9000, 30 }, "wrote 30 pages")]
    [TestCase(new ulong[] { 9000, 8000, 7000 }, "reached 3 pre-dumps")]
    public void Convergence_rule(ulong[] pages, string expected)
    {
        var rule = new CriuIterativeDumpOptions { MaxPreDumps = 3 };
        var results = new List<CriuDumpResult>();
        string? reason = null;
        foreach (var p in pages)
        {
            results.Add(new CriuDumpResult(new CriuDumpStatistics(default, default, default, default, p, 0, p, 0), "log"));
            reason = rule.StopReason(results);
        }

        Assert.That(reason, Does.Contain(expected));
    }

    /// <summary>Writes a stats-dump image the way CRIU does, into the folder the request names.</summary>
    private static void WriteStats(criu_req req, ulong pages)
    {
        var dir = $"/proc/{Environment.ProcessId}/fd/{req.Opts.ImagesDirFd}";
        var entry = new stats_entry { Dump = new dump_stats_entry { PagesWritten = pages, PagesScanned = pages, FreezingTime = 1, FrozenTime = 2, MemdumpTime = 3, MemwriteTime = 4, PagesSkippedParent = 0, PagesLazy = 0 } };
        var payload = Google.Protobuf.MessageExtensions.ToByteArray(entry);
        using var f = File.Create(Path.Combine(dir, "stats-dump"));
        f.Write(BitConverter.GetBytes(CriuStatsImage.ImageSetMagic));
        f.Write(BitConverter.GetBytes(CriuStatsImage.StatsMagic));
        f.Write(BitConverter.GetBytes((uint)payload.Length));
        f.Write(payload);
    }
}
