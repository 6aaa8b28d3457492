using System.Text;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;
using RebootlessUpdate.Images.Luo;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Images;

/// <summary>
/// The holder that keeps a retrieved LUO session alive when the resume that retrieved it is stopped, with a memfd in the
/// session's place (this host has no LUO; the holder only keeps a descriptor open): a real process inherits it, the
/// descriptor outlives its owner's copy, the next run takes it back with pidfd_getfd, and the holder is ended after.
/// </summary>
public class LuoSessionHolderTests
{
    private string _dir = null!;

    [SetUp]
    public void SetUp()
    {
        Testbed.RequireRoot();
        _dir = Directory.CreateTempSubdirectory("luo-holder-").FullName;
    }

    [TearDown]
    public void TearDown()
    {
        try
        {
            if (LuoSessionHolder.Read(Record) is { IsAlive: true } left)
            {
                left.Release();
            }
        }
        catch (InvalidDataException)
        {
            // The forged record of the attack test.
        }

        Directory.Delete(_dir, recursive: true);
    }

    private string Record => Path.Combine(_dir, "holder");

    [Test]
    public void A_descriptor_handed_to_the_holder_outlives_its_owner_and_is_taken_back_whole()
    {
        var content = Encoding.UTF8.GetBytes("the store, as the kernel carried it");
        LuoSessionHolder started;
        int fd;
        using (var memfd = Memfd.Create("holder-test"))
        {
            RandomAccess.Write(memfd, content, 0);
            fd = (int)memfd.DangerousGetHandle();
            started = LuoSessionHolder.Start(fd, "rebootless-20261203T154244Z-ce4f35c4", Record);
        }

        // Our copy is closed: only the holder keeps the file.
        var pid = started.Holder.Pid;
        Assert.Multiple(() =>
        {
            Assert.That(File.ReadAllText($"/proc/{pid}/comm").Trim(), Is.EqualTo("sleep"));
            Assert.That(Syscall.getsid(pid), Is.EqualTo(pid), "a session of its own: a Ctrl+C to the resume's group does not reach it");
            Assert.That(new FileInfo($"/proc/{pid}/fd/{fd}").LinkTarget, Does.Contain("memfd:holder-test"));
            Assert.That(Directory.GetFiles($"/proc/{pid}/fd").Select(Path.GetFileName), Is.EquivalentTo(new[] { "0", "1", "2", fd.ToString() }),
                "only the handed descriptor is inherited");
        });

        var read = LuoSessionHolder.Read(Record)!;
        Assert.That((read.Holder, read.Fd, read.Session), Is.EqualTo((started.Holder, fd, "rebootless-20261203T154244Z-ce4f35c4")));
        Assert.That(read.IsAlive, Is.True);
        Assert.That(() => read.TakeDescriptor(link => link == "anon_inode:[luo_session] " + read.Session), Throws.InstanceOf<IOException>()
            .With.Message.Contain("not the file expected"), "a descriptor that is not what the record says is not taken");
        using (var taken = new SafeFileHandle(read.TakeDescriptor(link => link?.Contains("memfd:holder-test") == true), ownsHandle: true))
        {
            var back = new byte[content.Length];
            Assert.That(RandomAccess.Read(taken, back, 0), Is.EqualTo(content.Length));
            Assert.That(back, Is.EqualTo(content));
        }

        read.Release();
        Assert.That(() => Workload.IsRunning(pid), Is.False.After(10_000, 50), "the holder is ended");
        Assert.That(File.Exists(Record), Is.False);
        Assert.That(() => read.TakeDescriptor(_ => true), Throws.InstanceOf<IOException>().With.Message.Contain("is gone"));
    }

    [Test]
    public void A_record_naming_another_process_is_not_a_holder_nothing_is_taken_from_it_or_killed()
    {
        using var other = System.Diagnostics.Process.Start("sh", ["-c", "exec sleep 120"])!;
        var start = RebootlessUpdate.Targets.ProcessIdentity.Of(other.Id)!.Value.StartTime;
        try
        {
            // The right start time but a reused pid's: one tick off.
            File.WriteAllText(Record, $"{other.Id} {start + 1} 0 rebootless-x\n");
            var forged = LuoSessionHolder.Read(Record)!;
            Assert.That(forged.IsAlive, Is.False, "another process under a reused pid");
            Assert.That(() => forged.TakeDescriptor(_ => true), Throws.InstanceOf<IOException>());
            forged.Release();
            Assert.That(Workload.IsRunning(other.Id), Is.True, "not killed");

            File.WriteAllText(Record, "12 x 0 rebootless-x\n");
            Assert.That(() => LuoSessionHolder.Read(Record), Throws.InstanceOf<InvalidDataException>());
        }
        finally
        {
            other.Kill();
        }
    }
}
