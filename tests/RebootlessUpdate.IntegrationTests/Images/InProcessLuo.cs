using System.Buffers.Binary;
using System.Text;
using Mono.Unix.Native;
using RebootlessUpdate.Images.Interop;
using RebootlessUpdate.Images.Luo;

namespace RebootlessUpdate.IntegrationTests.Images;

/// <summary>
/// /dev/liveupdate played in this process for host tests, with real files: preserve takes what the kernel takes (a
/// regular shmem file without a name; EBADF, ENOENT, EEXIST as the kernel answers) and keeps a duplicate of its
/// descriptor; <see cref="Kexec"/> hands over the sessions whose descriptor is still open, as the kernel does at
/// reboot, and drops the rest; retrieve hands out a duplicate again. Everything else about the kernel's LUO is the
/// VM tests' to check.
/// </summary>
internal sealed class InProcessLuo : ILuoSyscalls
{
    private const int DeviceFd = 9_000;
    private readonly Dictionary<int, Session> _open = [];
    private readonly Dictionary<string, Session> _outgoing = [];
    private readonly Dictionary<string, Session> _incoming = [];
    private int _nextFd = 9_001;

    private sealed class Session(string name, bool incoming)
    {
        public string Name { get; } = name;
        public bool Incoming { get; } = incoming;
        public Dictionary<ulong, int> Files { get; } = [];
    }

    /// <summary>Files held now, across all sessions.</summary>
    public int HeldFiles => _outgoing.Values.Concat(_incoming.Values).Sum(s => s.Files.Count);

    /// <summary>The reboot: open outgoing sessions become incoming ones; everything else is dropped.</summary>
    public void Kexec()
    {
        _incoming.Clear();
        foreach (var s in _outgoing.Values)
        {
            var next = new Session(s.Name, incoming: true);
            foreach (var (token, fd) in s.Files)
            {
                next.Files[token] = fd;
            }

            _incoming[s.Name] = next;
        }

        _outgoing.Clear();
        _open.Clear();
    }

    public int Open(string path, int flags) => DeviceFd;

    public int Ioctl(int fd, uint request, byte[] argument)
    {
        switch (request)
        {
            case LuoAbi.CreateSession:
            {
                var name = Name(argument);
                if (_outgoing.ContainsKey(name))
                {
                    return -Libc.EExist;
                }

                var s = _outgoing[name] = new Session(name, incoming: false);
                return Answer(argument, s);
            }

            case LuoAbi.RetrieveSession:
            {
                var name = Name(argument);
                if (!_incoming.TryGetValue(name, out var s))
                {
                    return -Libc.ENoEnt;
                }

                if (_open.ContainsValue(s))
                {
                    return -Libc.EInval;
                }

                return Answer(argument, s);
            }

            case LuoAbi.PreserveFd:
            {
                var s = _open[fd];
                var token = BinaryPrimitives.ReadUInt64LittleEndian(argument.AsSpan(8));
                var file = BinaryPrimitives.ReadInt32LittleEndian(argument.AsSpan(4));
                if (s.Files.ContainsKey(token))
                {
                    return -Libc.EExist;
                }

                if (Syscall.fstat(file, out var st) != 0)
                {
                    return -Libc.EBadF;
                }

                if ((st.st_mode & FilePermissions.S_IFMT) != FilePermissions.S_IFREG || st.st_nlink != 0)
                {
                    return -Libc.ENoEnt;
                }

                s.Files[token] = Syscall.dup(file);
                return 0;
            }

            case LuoAbi.RetrieveFd:
            {
                var s = _open[fd];
                var token = BinaryPrimitives.ReadUInt64LittleEndian(argument.AsSpan(8));
                if (!s.Files.TryGetValue(token, out var held))
                {
                    return -Libc.ENoEnt;
                }

                BinaryPrimitives.WriteInt32LittleEndian(argument.AsSpan(4), Syscall.dup(held));
                return 0;
            }

            case LuoAbi.Finish:
            {
                var s = _open[fd];
                Drop(s);
                _incoming.Remove(s.Name);
                return 0;
            }

            default:
                return -Libc.EInval;
        }
    }

    public void Close(int fd)
    {
        if (_open.Remove(fd, out var s))
        {
            // Closing an outgoing session unpreserves its files; closing a retrieved one finishes it.
            Drop(s);
            (s.Incoming ? _incoming : _outgoing).Remove(s.Name);
        }
    }

    private static void Drop(Session s)
    {
        foreach (var held in s.Files.Values)
        {
            _ = Syscall.close(held);
        }

        s.Files.Clear();
    }

    private int Answer(byte[] argument, Session s)
    {
        var fd = _nextFd++;
        _open[fd] = s;
        BinaryPrimitives.WriteInt32LittleEndian(argument.AsSpan(4), fd);
        return 0;
    }

    private static string Name(byte[] argument)
    {
        var bytes = argument.AsSpan(8, LuoAbi.SessionNameLength);
        return Encoding.UTF8.GetString(bytes[..bytes.IndexOf((byte)0)]);
    }
}
