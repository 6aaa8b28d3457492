using RebootlessUpdate.Images.Interop;

namespace RebootlessUpdate.Images.Luo;

/// <summary>One LUO session's descriptor: files preserved into it by token, retrieved by the same token after the jump.</summary>
internal sealed class LuoSession : IDisposable
{
    private readonly ILuoSyscalls _sys;
    private int _fd;

    internal LuoSession(ILuoSyscalls sys, int fd, string name)
    {
        _sys = sys;
        _fd = fd;
        Name = name;
    }

    public string Name { get; }

    /// <summary>The session's descriptor (for handing it to a holder process); -1 once disposed.</summary>
    internal int Descriptor => _fd;

    /// <summary>Preserves <paramref name="fd"/> (a memfd) under <paramref name="token"/>: its contents cross the next kexec.</summary>
    /// <exception cref="LuoException">The kernel refused.</exception>
    internal void Preserve(int fd, ulong token) => Call(LuoAbi.PreserveFd, LuoAbi.FdArgument(fd, token), e => e switch
    {
        Libc.EExist => $"token {token} is preserved in LUO session {Name} already",
        Libc.ENoEnt or Libc.EOpNotSupp or Libc.EInval => $"the kernel cannot preserve that file in LUO session {Name} (only memfds are, without hugetlb pages or unknown seals)",
        Libc.EBadF => $"descriptor {fd} is not open, so LUO session {Name} cannot preserve it",
        Libc.EBusy => $"that file is preserved already (in LUO session {Name} or another)",
        Libc.ENoMem or Libc.ENoSpc => $"the kernel cannot preserve more in LUO session {Name}: out of memory",
        _ => $"preserving token {token} in LUO session {Name} failed (errno {e})",
    });

    /// <summary>The file preserved under <paramref name="token"/>, as a new descriptor the caller owns.</summary>
    /// <exception cref="LuoException">No such token, or the kernel refused.</exception>
    internal int Retrieve(ulong token)
    {
        var argument = LuoAbi.FdArgument(-1, token);
        Call(LuoAbi.RetrieveFd, argument, e => e switch
        {
            Libc.ENoEnt => $"LUO session {Name} holds no file under token {token}",
            _ => $"retrieving token {token} from LUO session {Name} failed (errno {e})",
        });
        return LuoAbi.FdOf(argument);
    }

    /// <summary>Ends the session: the kernel lets go of what it kept for it.</summary>
    /// <exception cref="LuoException">The kernel refused (for example, a preserved file was not retrieved).</exception>
    internal void Finish() => Call(LuoAbi.Finish, LuoAbi.FinishArgument(), e => e switch
    {
        Libc.EBusy => $"LUO session {Name} cannot finish: a file it preserved was not retrieved yet",
        _ => $"finishing LUO session {Name} failed (errno {e})",
    });

    private void Call(uint request, byte[] argument, Func<int, string> why)
    {
        ObjectDisposedException.ThrowIf(_fd < 0, this);
        var rc = _sys.Ioctl(_fd, request, argument);
        if (rc < 0)
        {
            throw new LuoException(why(-rc), -rc);
        }
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
