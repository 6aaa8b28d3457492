using System.Buffers.Binary;
using System.Text;
using RebootlessUpdate.Images.Luo;

namespace RebootlessUpdate.UnitTests.Images;

/// <summary>
/// The LUO ioctl layer against a scripted device: the numbers and bytes it sends are the kernel's (Linux 7.2's
/// <c>include/uapi/linux/liveupdate.h</c>), and every refusal is said in words. The real device needs a LUO kernel
/// (the VM's, once built); on this host the probe says why there is none (<c>LuoProbeTests</c>).
/// </summary>
public class LuoDeviceTests
{
    /// <summary>A device that answers each request as the test scripts it, and records what it was sent.</summary>
    private sealed class ScriptedDevice : ILuoSyscalls
    {
        private int _next = 10;

        public int OpenAnswer { get; set; } = 3;

        public Dictionary<uint, int> Errors { get; } = [];

        public List<(int Fd, uint Request, byte[] Argument)> Calls { get; } = [];

        public List<int> Closed { get; } = [];

        public int Open(string path, int flags) => OpenAnswer;

        public int Ioctl(int fd, uint request, byte[] argument)
        {
            Calls.Add((fd, request, [.. argument]));
            if (Errors.TryGetValue(request, out var errno))
            {
                return -errno;
            }

            if (request is LuoAbi.CreateSession or LuoAbi.RetrieveSession or LuoAbi.RetrieveFd)
            {
                BinaryPrimitives.WriteInt32LittleEndian(argument.AsSpan(4), _next++);
            }

            return 0;
        }

        public void Close(int fd) => Closed.Add(fd);
    }

    [Test]
    public void The_ioctl_numbers_are_the_kernels()
    {
        // _IO(0xBA, nr): no size or direction bits.
        Assert.That(new[] { LuoAbi.CreateSession, LuoAbi.RetrieveSession, LuoAbi.PreserveFd, LuoAbi.RetrieveFd, LuoAbi.Finish, LuoAbi.GetName },
            Is.EqualTo(new uint[] { 0xBA00, 0xBA01, 0xBA40, 0xBA41, 0xBA42, 0xBA43 }));
    }

    [Test]
    public void A_session_argument_is_its_size_a_descriptor_slot_and_the_zero_ended_name()
    {
        var a = LuoAbi.SessionArgument("rebootless-20261203T104154Z-1ed4fca7");

        Assert.That(a, Has.Length.EqualTo(72));
        Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(a), Is.EqualTo(72u));
        Assert.That(BinaryPrimitives.ReadInt32LittleEndian(a.AsSpan(4)), Is.EqualTo(-1));
        Assert.That(Encoding.UTF8.GetString(a, 8, 36), Is.EqualTo("rebootless-20261203T104154Z-1ed4fca7"));
        Assert.That(a.Skip(8 + 36), Is.All.Zero);
    }

    [Test]
    public void A_file_argument_is_its_size_the_descriptor_and_the_token()
    {
        var a = LuoAbi.FdArgument(7, 0x0102030405060708);

        Assert.That(a, Is.EqualTo(new byte[] { 16, 0, 0, 0, 7, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1 }));
        Assert.That(LuoAbi.FinishArgument(), Is.EqualTo(new byte[] { 8, 0, 0, 0, 0, 0, 0, 0 }));
    }

    [TestCase("", TestName = "An empty session name is refused")]
    [TestCase("a\0b", TestName = "A session name with a zero byte is refused")]
    [TestCase("0123456789012345678901234567890123456789012345678901234567890123", TestName = "A 64-byte session name leaves no room for its end and is refused")]
    public void Names_the_kernel_cannot_take_are_refused_before_a_call(string name)
    {
        Assert.That(() => LuoAbi.SessionArgument(name), Throws.InstanceOf<ArgumentException>());
    }

    [Test]
    public void A_63_byte_name_fits()
    {
        Assert.That(LuoAbi.SessionArgument(new string('n', 63))[8 + 62], Is.EqualTo((byte)'n'));
    }

    [Test]
    public void A_session_is_created_on_the_device_and_preserves_retrieves_and_finishes_on_its_own_descriptor()
    {
        var device = new ScriptedDevice();
        using (var luo = LuoDevice.Open("/dev/liveupdate", device))
        {
            using var session = luo.CreateSession("set-a");
            session.Preserve(42, 1);
            var retrieved = session.Retrieve(1);
            session.Finish();

            Assert.That(retrieved, Is.EqualTo(11));
        }

        Assert.Multiple(() =>
        {
            Assert.That(device.Calls.Select(c => (c.Fd, c.Request)), Is.EqualTo(new[]
            {
                (3, LuoAbi.CreateSession), (10, LuoAbi.PreserveFd), (10, LuoAbi.RetrieveFd), (10, LuoAbi.Finish),
            }));
            Assert.That(device.Calls[1].Argument, Is.EqualTo(LuoAbi.FdArgument(42, 1)));
            Assert.That(device.Calls[2].Argument, Is.EqualTo(LuoAbi.FdArgument(-1, 1)), "a retrieve sends no descriptor of its own");
            Assert.That(device.Closed, Is.EquivalentTo(new[] { 10, 3 }), "the session's and the device's descriptors are closed");
        });
    }

    [TestCase(2, "it does not exist: this kernel has no Live Update Orchestrator, or it is off")]
    [TestCase(16, "another process holds it open (the kernel lets one process open it at a time)")]
    [TestCase(13, "permission denied (it needs root)")]
    public void A_device_that_cannot_be_opened_says_why(int errno, string why)
    {
        var e = Assert.Throws<LuoException>(() => LuoDevice.Open("/dev/liveupdate", new ScriptedDevice { OpenAnswer = -errno }));
        Assert.That(e!.Message, Is.EqualTo("cannot open /dev/liveupdate: " + why));
        Assert.That(e.Errno, Is.EqualTo(errno));
    }

    [TestCase(LuoAbi.CreateSession, 17, "a LUO session named s exists already (an earlier run's; finish or release it first)")]
    [TestCase(LuoAbi.RetrieveSession, 2, "the previous kernel handed over no LUO session named s")]
    [TestCase(LuoAbi.PreserveFd, 95, "the kernel cannot preserve that file in LUO session s (only memfds are, without hugetlb pages or unknown seals)")]
    [TestCase(LuoAbi.PreserveFd, 2, "the kernel cannot preserve that file in LUO session s (only memfds are, without hugetlb pages or unknown seals)")]
    [TestCase(LuoAbi.PreserveFd, 9, "descriptor 9 is not open, so LUO session s cannot preserve it")]
    [TestCase(LuoAbi.PreserveFd, 16, "that file is preserved already (in LUO session s or another)")]
    [TestCase(LuoAbi.PreserveFd, 12, "the kernel cannot preserve more in LUO session s: out of memory")]
    [TestCase(LuoAbi.RetrieveFd, 2, "LUO session s holds no file under token 5")]
    [TestCase(LuoAbi.Finish, 16, "LUO session s cannot finish: a file it preserved was not retrieved yet")]
    public void Every_refusal_is_said_in_words(uint request, int errno, string message)
    {
        var device = new ScriptedDevice();
        device.Errors[request] = errno;
        using var luo = LuoDevice.Open("/dev/liveupdate", device);

        var e = Assert.Throws<LuoException>(() =>
        {
            using var session = request == LuoAbi.RetrieveSession ? luo.RetrieveSession("s") : luo.CreateSession("s");
            switch (request)
            {
                case LuoAbi.PreserveFd:
                    session.Preserve(9, 5);
                    break;
                case LuoAbi.RetrieveFd:
                    session.Retrieve(5);
                    break;
                case LuoAbi.Finish:
                    session.Finish();
                    break;
            }
        });

        Assert.That(e!.Message, Is.EqualTo(message));
        Assert.That(e.Errno, Is.EqualTo(errno));
    }
}
