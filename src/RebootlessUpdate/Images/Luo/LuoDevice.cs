using RebootlessUpdate.Images.Interop;

namespace RebootlessUpdate.Images.Luo;

/// <summary>
/// <c>/dev/liveupdate</c>, held open (the kernel lets one process open it at a time). Sessions created here are
/// preserved across the next kexec; after it, the new kernel hands them back by name.
/// </summary>
internal sealed class LuoDevice : IDisposable
{
    internal const string DefaultPath = "/dev/liveupdate";

    private readonly ILuoSyscalls _sys;
    private int _fd;

    private LuoDevice(ILuoSyscalls sys, int fd, string path)
    {
        _sys = sys;
        _fd = fd;
        Path = path;
    }

    public string Path { get; }

    /// <summary>Opens the device.</summary>
    /// <exception cref="LuoException">It cannot be opened; the message says why.</exception>
    internal static LuoDevice Open(string path = DefaultPath, ILuoSyscalls? syscalls = null)
    {
        var sys = syscalls ?? KernelLuoSyscalls.Instance;
        var fd = sys.Open(path, Libc.ORdWr | Libc.OCloExec);
        if (fd < 0)
        {
            throw new LuoException($"cannot open {path}: " + (-fd switch
            {
                Libc.ENoEnt => "it does not exist: this kernel has no Live Update Orchestrator, or it is off",
                Libc.EBusy => "another process holds it open (the kernel lets one process open it at a time)",
                Libc.EAccess or Libc.EPerm => "permission denied (it needs root)",
                _ => $"errno {-fd}",
            }), -fd);
        }

        return new LuoDevice(sys, fd, path);
    }

    /// <summary>Creates the session <paramref name="name"/>, to be preserved across the next kexec.</summary>
    /// <exception cref="LuoException">The kernel refused.</exception>
    internal LuoSession CreateSession(string name) => Session(LuoAbi.CreateSession, name, e => e switch
    {
        Libc.EExist => $"a LUO session named {name} exists already (an earlier run's; finish or release it first)",
        Libc.ENoMem or Libc.ENoSpc => $"the kernel cannot create LUO session {name}: out of memory or session slots",
        _ => $"creating LUO session {name} failed (errno {e})",
    });

    /// <summary>Retrieves the session <paramref name="name"/> the previous kernel preserved.</summary>
    /// <exception cref="LuoException">There is no such session, or the kernel refused.</exception>
    internal LuoSession RetrieveSession(string name) => Session(LuoAbi.RetrieveSession, name, e => e switch
    {
        Libc.ENoEnt => $"the previous kernel handed over no LUO session named {name}",
        Libc.EInval => $"LUO session {name} was retrieved already, or is not an incoming one",
        _ => $"retrieving LUO session {name} failed (errno {e})",
    });

    private LuoSession Session(uint request, string name, Func<int, string> why)
    {
        ObjectDisposedException.ThrowIf(_fd < 0, this);
        var argument = LuoAbi.SessionArgument(name);
        var rc = _sys.Ioctl(_fd, request, argument);
        if (rc < 0)
        {
            throw new LuoException(why(-rc), -rc);
        }

        var fd = LuoAbi.FdOf(argument);
        if (fd < 0)
        {
            throw new LuoException($"the kernel answered LUO session {name} without a descriptor", 0);
        }

        return new LuoSession(_sys, fd, name);
    }

    public void Dispose()
    {
        if (_fd >= 0)
        {
            _sys.Close(_fd);
            _fd = -1;
        }
    }
}
