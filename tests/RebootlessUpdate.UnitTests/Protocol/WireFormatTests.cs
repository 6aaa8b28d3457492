using Google.Protobuf;
using RebootlessUpdate.Criu.Protocol;

namespace RebootlessUpdate.UnitTests.Protocol;

/// <summary>Golden bytes and round trips of the generated CRIU messages.</summary>
public class WireFormatTests
{
    [Test]
    public void Version_request_is_08_0a()
    {
        var req = new criu_req { Type = criu_req_type.Version };

        Assert.That(Convert.ToHexString(req.ToByteArray()), Is.EqualTo("080A"));
    }

    [Test]
    public void Dump_request_with_images_dir_fd_minus_one_encodes_as_criu_expects()
    {
        var req = new criu_req
        {
            Type = criu_req_type.Dump,
            Opts = new criu_opts { ImagesDirFd = -1, Pid = 42, LeaveRunning = true },
        };

        // images_dir_fd = -1 is a ten-byte varint (int32 sign-extends to 64 bits).
        Assert.That(Convert.ToHexString(req.ToByteArray()),
            Is.EqualTo("0801" + "120F" + "08FFFFFFFFFFFFFFFFFF01" + "102A" + "1801"));
    }

    [Test]
    public void Unset_images_dir_fd_is_still_sent_because_it_is_required()
    {
        var opts = new criu_opts();

        Assert.Multiple(() =>
        {
            Assert.That(opts.ImagesDirFd, Is.EqualTo(-1), "proto default");
            Assert.That(opts.HasImagesDirFd, Is.False);
            Assert.That(opts.IsInitialized(), Is.False, "a criu_opts without images_dir_fd is not a valid message");
        });
    }

    [Test]
    public void Version_response_from_criu_4_1_1_decodes()
    {
        // type=VERSION, success=true, version{major 4, minor 1, sublevel 1}
        var bytes = Convert.FromHexString("080A" + "1001" + "5206" + "0804" + "1001" + "2001");

        var resp = criu_resp.Parser.ParseFrom(bytes);

        Assert.Multiple(() =>
        {
            Assert.That(resp.Type, Is.EqualTo(criu_req_type.Version));
            Assert.That(resp.Success, Is.True);
            Assert.That(resp.Version.MajorNumber, Is.EqualTo(4));
            Assert.That(resp.Version.MinorNumber, Is.EqualTo(1));
            Assert.That(resp.Version.Sublevel, Is.EqualTo(1));
            Assert.That(resp.Version.HasGitid, Is.False);
        });
    }

    [Test]
    public void Notify_response_and_answer_round_trip()
    {
        var notify = new criu_resp { Type = criu_req_type.Notify, Success = true, Notify = new criu_notify { Script = "post-restore", Pid = 77 } };
        var answer = new criu_req { Type = criu_req_type.Notify, NotifySuccess = true };

        var back = criu_resp.Parser.ParseFrom(notify.ToByteArray());

        Assert.Multiple(() =>
        {
            Assert.That(back, Is.EqualTo(notify));
            Assert.That(Convert.ToHexString(answer.ToByteArray()), Is.EqualTo("0806" + "1801"));
        });
    }

    [Test]
    public void Every_option_survives_a_round_trip()
    {
        var opts = new criu_opts
        {
            ImagesDirFd = -1, ImagesDir = "/var/lib/images", WorkDirFd = 5, Pid = 1234, LeaveRunning = true,
            LeaveStopped = false, ShellJob = true, FileLocks = true, ExtUnixSk = true, TcpEstablished = true,
            TcpSkipInFlight = true, TcpClose = false, NetworkLock = criu_network_lock_method.Nftables,
            LogLevel = 4, LogFile = "dump.log", NotifyScripts = true, Root = "/", ParentImg = "../pre1",
            TrackMem = true, AutoDedup = true, LazyPages = true, PreDumpMode = criu_pre_dump_mode.VmRead,
            Ps = new criu_page_server_info { Address = "127.0.0.1", Port = 27000 }, ManageCgroupsMode = criu_cg_mode.Soft,
            FreezeCgroup = "/sys/fs/cgroup/x", CgroupYard = "/yard", Timeout = 10, OrphanPtsMaster = true,
            LsmProfile = "apparmor:unconfined", ConfigFile = "/etc/criu/x.conf", CpuCap = 0xffffffff, GhostLimit = 1 << 20,
            External = { "mnt[/proc]:proc", "net[4026531993]:extnet" },
            JoinNs = { new join_namespace { Ns = "net", NsFile = "/proc/1/ns/net" } },
            InheritFd = { new inherit_fd { Key = "pipe:[123]", Fd = 3 } },
            CgRoot = { new cgroup_root { Path = "/x" } },
        };

        var back = criu_opts.Parser.ParseFrom(opts.ToByteArray());

        Assert.That(back, Is.EqualTo(opts));
    }

    [Test]
    public void Response_missing_a_required_field_parses_but_is_not_initialized()
    {
        // Google.Protobuf's C# parser does not enforce proto2 `required`: the
        // client must check IsInitialized() itself. Here: type=VERSION, no success.
        var resp = criu_resp.Parser.ParseFrom(Convert.FromHexString("080A"));

        Assert.That(resp.IsInitialized(), Is.False);
    }

    [Test]
    public void Stats_entry_round_trips()
    {
        var stats = new stats_entry
        {
            Dump = new dump_stats_entry
            {
                FreezingTime = 1200, FrozenTime = 80_000, MemdumpTime = 30_000, MemwriteTime = 20_000,
                PagesScanned = 70_000, PagesSkippedParent = 60_000, PagesWritten = 10_000, PagesLazy = 0,
            },
        };

        Assert.That(stats_entry.Parser.ParseFrom(stats.ToByteArray()), Is.EqualTo(stats));
    }
}
