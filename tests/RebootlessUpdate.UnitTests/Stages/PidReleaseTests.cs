using System.Buffers.Binary;
using Google.Protobuf;
using Microsoft.Extensions.Time.Testing;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Criu.Protocol;
using RebootlessUpdate.Stages;

namespace RebootlessUpdate.UnitTests.Stages;

/// <summary>Which ids a restore needs (CRIU's rules for shell jobs and helpers) and who holds them, over a fake /proc.</summary>
public class PidReleaseTests
{
    private string _proc = null!;

    [SetUp]
    public void SetUp() => _proc = Directory.CreateTempSubdirectory("rebootless-fakeproc-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(_proc, recursive: true);

    private void Task(int pid, string comm, char state, int ppid, int pgid, int sid, int? tgid = null)
    {
        var dir = Directory.CreateDirectory(Path.Combine(_proc, pid.ToString(System.Globalization.CultureInfo.InvariantCulture))).FullName;
        var rest = string.Join(' ', Enumerable.Repeat("0", 45));
        File.WriteAllText(Path.Combine(dir, "stat"), $"{pid} ({comm}) {state} {ppid} {pgid} {sid} {rest}\n");
        File.WriteAllText(Path.Combine(dir, "status"), $"Name:\t{comm}\nTgid:\t{tgid ?? pid}\nPid:\t{pid}\n");
    }

    /// <summary>A pstree.img as CRIU writes it: the two magics, then each entry's size and bytes.</summary>
    private static byte[] Image(params pstree_entry[] entries)
    {
        var image = new MemoryStream();
        void U32(uint v)
        {
            Span<byte> b = stackalloc byte[4];
            BinaryPrimitives.WriteUInt32LittleEndian(b, v);
            image.Write(b);
        }

        U32(CriuProcessTree.CommonImageMagic);
        U32(CriuProcessTree.PstreeMagic);
        foreach (var e in entries)
        {
            var bytes = e.ToByteArray();
            U32((uint)bytes.Length);
            image.Write(bytes);
        }

        return image.ToArray();
    }

    private static CriuProcessTreeEntry Entry(int pid, int ppid, int pgid, int sid, params int[] threads) =>
        new(pid, ppid, pgid, sid, threads.Length == 0 ? [pid] : threads);

    [Test]
    public void A_shell_job_inherits_the_roots_old_group_and_session_so_only_its_pids_and_threads_are_needed()
    {
        // Started from a shell: group 500 and session 400 belong to the caller, not to the tree.
        IReadOnlyList<CriuProcessTreeEntry> tree = [Entry(1000, 0, 500, 400), Entry(1001, 1000, 500, 400, 1001, 1002)];

        var needed = PidRelease.Needed(tree, shellJob: true, restorerProcessGroup: 77);

        Assert.That(needed.Select(n => (n.Id, n.Role)), Is.EqualTo(new[]
        {
            (1000, PidRelease.Role.Process), (1001, PidRelease.Role.Process), (1002, PidRelease.Role.Thread),
        }));
    }

    [Test]
    public void Without_shell_job_a_group_or_session_no_process_of_the_tree_leads_needs_a_helper_pid()
    {
        // The root leads its session; a child's group 1500 has no leader in the tree; 77 is CRIU's own group.
        IReadOnlyList<CriuProcessTreeEntry> tree = [Entry(1000, 0, 1000, 1000), Entry(1001, 1000, 1500, 1000), Entry(1003, 1000, 77, 1000)];

        var needed = PidRelease.Needed(tree, shellJob: false, restorerProcessGroup: 77);

        Assert.That(needed.Select(n => n.Id), Is.EqualTo(new[] { 1000, 1001, 1003, 1500 }));
        Assert.That(needed.Single(n => n.Id == 1500).ToString(), Is.EqualTo("pid 1500 (the dumped tree's process group)"));
    }

    [Test]
    public void A_zombie_a_foreign_thread_and_a_group_member_each_hold_an_id_and_are_named()
    {
        Task(1000, "sh", 'Z', 1, 400, 400);
        Task(7000, "java", 'S', 1, 7000, 7000);
        Task(1001, "java", 'S', 1, 7000, 7000, tgid: 7000); // a thread of pid 7000 has tid 1001

        var zombieAndThread = PidRelease.Holders([new(1000, PidRelease.Role.Process), new(1001, PidRelease.Role.Thread), new(1500, PidRelease.Role.ProcessGroup)], _proc);

        Assert.That(zombieAndThread.Select(h => h.ToString()), Is.EqualTo(new[]
        {
            "pid 1000 (a process of the dumped tree) is still used by pid 1000 'sh' (a zombie its parent 1 has not reaped yet)",
            "pid 1001 (a thread of the dumped tree) is still used by pid 7000 'java' (its thread 1001)",
        }));

        Directory.Delete(Path.Combine(_proc, "1000"), recursive: true);
        Directory.Delete(Path.Combine(_proc, "1001"), recursive: true);
        Task(1600, "sleep (x)", 'S', 1, 1500, 1000);
        var groupMember = PidRelease.Holders([new(1000, PidRelease.Role.Process), new(1500, PidRelease.Role.ProcessGroup)], _proc);

        Assert.That(groupMember.Select(h => h.ToString()), Is.EqualTo(new[]
        {
            "pid 1500 (the dumped tree's process group) is still used by pid 1600 'sleep (x)' as its process group",
            "pid 1000 (a process of the dumped tree) is still used by pid 1600 'sleep (x)' as its session",
        }));
    }

    [Test]
    public async Task The_wait_ends_when_the_ids_are_free_and_times_out_naming_the_holder_when_they_are_not()
    {
        IReadOnlyList<CriuProcessTreeEntry> tree = [Entry(1000, 0, 1000, 1000)];
        Task(1000, "sh", 'Z', 1, 1000, 1000);
        var time = new FakeTimeProvider();

        var waiting = PidRelease.WaitAsync(tree, shellJob: false, TimeSpan.FromSeconds(10), time, CancellationToken.None, _proc);
        time.Advance(TimeSpan.FromSeconds(1));
        Assert.That(waiting.IsCompleted, Is.False, "the zombie holds its pid");
        Directory.Delete(Path.Combine(_proc, "1000"), recursive: true);
        for (var i = 0; i < 50 && !waiting.IsCompleted; i++)
        {
            time.Advance(TimeSpan.FromMilliseconds(20));
            await System.Threading.Tasks.Task.Delay(5);
        }

        Assert.That(waiting.IsCompletedSuccessfully, Is.True, "reaped: the wait ends");

        Task(1000, "sh", 'S', 1, 1000, 1000);
        var timeout = PidRelease.WaitAsync(tree, shellJob: false, TimeSpan.FromSeconds(1), time, CancellationToken.None, _proc);
        for (var i = 0; i < 100 && !timeout.IsCompleted; i++)
        {
            time.Advance(TimeSpan.FromMilliseconds(20));
            await System.Threading.Tasks.Task.Delay(5);
        }

        var e = Assert.ThrowsAsync<PidsInUseException>(() => timeout);
        Assert.That(e!.Message, Does.Contain("pid 1000 (a process of the dumped tree) is still used by pid 1000 'sh'"));
        Assert.That(e.Ids, Is.EqualTo(new[] { 1000 }));
    }

    [Test]
    public async Task A_tree_with_its_own_pid_namespace_needs_nothing_of_this_one()
    {
        Task(1, "init", 'S', 0, 1, 1);

        await PidRelease.WaitAsync([Entry(1, 0, 1, 1)], shellJob: false, TimeSpan.FromMilliseconds(100), new FakeTimeProvider(), CancellationToken.None, _proc);
    }

    [Test]
    public void The_process_tree_image_is_read_entry_by_entry_and_a_damaged_one_is_refused()
    {
        var image = Image(new pstree_entry { Pid = 10, Ppid = 0, Pgid = 10, Sid = 10, Threads = { 10, 12 } }, new pstree_entry { Pid = 11, Ppid = 10, Pgid = 10, Sid = 10, Threads = { 11 } });

        var tree = CriuProcessTree.Parse(image, "pstree.img");

        Assert.That(tree.Select(e => (e.Pid, e.ParentPid, e.ProcessGroup, e.Session, string.Join(',', e.Threads))),
            Is.EqualTo(new[] { (10, 0, 10, 10, "10,12"), (11, 10, 10, 10, "11") }));
        Assert.That(() => CriuProcessTree.Parse(image.AsSpan(..^2), "pstree.img"), Throws.TypeOf<InvalidDataException>().With.Message.Contains("truncated"));
        Assert.That(() => CriuProcessTree.Parse(new byte[12], "pstree.img"), Throws.TypeOf<InvalidDataException>().With.Message.Contains("not a CRIU process tree image"));
    }

    [Test]
    public void A_zombies_garbage_thread_id_is_left_out_and_its_pid_is_still_needed()
    {
        // criu 4.1 dumped a loop's unreaped `sleep` with thread ids such as 0x7f6d1ee0 and, as often, past int: the
        // latter made the whole image unreadable, so the wait was skipped and CRIU met the loop's zombie root.
        var image = Image(
            new pstree_entry { Pid = 6436, Ppid = 0, Pgid = 5821, Sid = 17588, Threads = { 6436 } },
            new pstree_entry { Pid = 6529, Ppid = 6436, Pgid = 5821, Sid = 17588, Threads = { 0x9f6d1ee0 } },
            new pstree_entry { Pid = 6530, Ppid = 6436, Pgid = 5821, Sid = 17588, Threads = { 0x7f6d1ee0 } });

        var tree = CriuProcessTree.Parse(image, "pstree.img");

        Assert.That(tree.Select(e => e.Threads.Count), Is.EqualTo(new[] { 1, 0, 0 }));
        Assert.That(PidRelease.Needed(tree, shellJob: true, restorerProcessGroup: 5821).Select(n => n.Id), Is.EqualTo(new[] { 6436, 6529, 6530 }));
    }
}
