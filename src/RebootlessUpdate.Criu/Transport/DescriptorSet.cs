using Mono.Unix.Native;

namespace RebootlessUpdate.Criu.Transport;

/// <summary>Descriptors opened for one request (folders CRIU reaches through /proc/&lt;client&gt;/fd/N); closed together.</summary>
internal sealed class DescriptorSet : IDisposable
{
    private readonly List<int> _fds = [];

    /// <summary>Opens a folder close-on-exec and returns its descriptor.</summary>
    public int OpenDirectory(string path, string what)
    {
        var fd = Syscall.open(path, OpenFlags.O_RDONLY | OpenFlags.O_DIRECTORY | OpenFlags.O_CLOEXEC);
        if (fd < 0)
        {
            throw SeqpacketSocket.Error($"open of the {what} '{path}'");
        }

        _fds.Add(fd);
        return fd;
    }

    public void Dispose()
    {
        foreach (var fd in _fds)
        {
            _ = Syscall.close(fd);
        }

        _fds.Clear();
    }
}
