using System.Text;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;
using RebootlessUpdate.Criu.Interop;

namespace RebootlessUpdate.Criu.Transport;

/// <summary>
/// A <c>criu swrk FD</c> worker: one child process serving one connection.
/// The child inherits exactly one end of a close-on-exec socketpair (placed by
/// posix_spawn's dup2, which clears close-on-exec on the copy only), /dev/null
/// as stdin, and a pipe as stdout/stderr that we read for error reports.
/// </summary>
internal sealed class SwrkWorker : IAsyncDisposable
{
    private const int MaxStderr = 64 * 1024;
    private static readonly int[] TargetFds = [3, 4, 5, 6, 7, 8, 9, 10];
    private readonly StringBuilder _stderr = new();
    private readonly Task _stderrPump;
    private readonly CancellationTokenSource _stopPump = new();
    private readonly Task<int?> _exit;

    private SwrkWorker(int pid, SeqpacketSocket socket, FileStream stderr)
    {
        Pid = pid;
        Socket = socket;
        _stderrPump = PumpAsync(stderr);
        _exit = ReapAsync(pid);
    }

    /// <summary>
    /// Reaps the worker the moment it exits: a thread blocked in waitpid, so no
    /// polling delay is added to any request. Returns its exit status (128+signal
    /// when killed), or null when someone else reaped it.
    /// </summary>
    private static Task<int?> ReapAsync(int pid) => Task.Factory.StartNew<int?>(() =>
    {
        while (true)
        {
            var r = Syscall.waitpid(pid, out var status, 0);
            if (r == pid)
            {
                return Syscall.WIFEXITED(status) ? Syscall.WEXITSTATUS(status) : 128 + (int)Syscall.WTERMSIG(status);
            }

            if (r < 0 && Stdlib.GetLastError() != Errno.EINTR)
            {
                return null;
            }
        }
    }, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);

    public int Pid { get; }

    public SeqpacketSocket Socket { get; }

    /// <summary>What criu printed so far (bounded).</summary>
    public string Stderr
    {
        get
        {
            lock (_stderr)
            {
                return _stderr.ToString();
            }
        }
    }

    /// <summary>
    /// Starts <c>criu swrk</c>. <paramref name="inheritFds"/> are extra descriptors
    /// of ours the worker must have at the same numbers (RESTORE's inherit_fd); <paramref name="environment"/> is set
    /// on top of ours.
    /// </summary>
    public static SwrkWorker Start(string criuPath, IReadOnlyCollection<int>? inheritFds = null,
        IReadOnlyList<KeyValuePair<string, string>>? environment = null)
    {
        var (ours, theirs) = SeqpacketSocket.CreatePair();
        int errRead = -1, errWrite = -1;
        try
        {
            if (!Pipes.TryCreate(out errRead, out errWrite))
            {
                throw SeqpacketSocket.Error("pipe2 for criu's stderr");
            }

            // The fd number criu sees: any low number that is neither source (dup2
            // onto itself would keep close-on-exec set).
            var target = TargetFds.First(fd => fd != theirs && fd != errWrite && inheritFds?.Contains(fd) != true);
            var pid = Spawn.Start(criuPath, [criuPath, "swrk", target.ToString(System.Globalization.CultureInfo.InvariantCulture)],
            [
                Spawn.FdAction.Dup2(theirs, target),
                Spawn.FdAction.Open(0, "/dev/null", (int)NativeConvert.FromOpenFlags(OpenFlags.O_RDONLY)),
                Spawn.FdAction.Dup2(errWrite, 1),
                Spawn.FdAction.Dup2(errWrite, 2),
                .. (inheritFds ?? []).Select(fd => Spawn.FdAction.Inherit(fd)),
            ], environment);
            var stderr = new FileStream(new SafeFileHandle(errRead, ownsHandle: true), FileAccess.Read, 1, isAsync: false);
            errRead = -1;
            return new SwrkWorker(pid, ours, stderr);
        }
        catch (IOException e)
        {
            ours.Dispose();
            throw new CriuUnavailableException($"cannot start '{criuPath} swrk': {e.Message}. Is criu installed (4.0 or newer), and is the path right?", e);
        }
        catch
        {
            ours.Dispose();
            throw;
        }
        finally
        {
            _ = Syscall.close(theirs);
            if (errWrite >= 0)
            {
                _ = Syscall.close(errWrite);
            }

            if (errRead >= 0)
            {
                _ = Syscall.close(errRead);
            }
        }
    }

    /// <summary>
    /// Copies the worker's output until EOF or until told to stop: a daemon the
    /// worker left behind (a PAGE_SERVER) inherits the pipe and may keep it open
    /// long after the worker is gone, so EOF alone cannot end the pump.
    /// </summary>
    private Task PumpAsync(FileStream stderr) => Task.Factory.StartNew(() =>
    {
        using (stderr)
        {
            var fd = (int)stderr.SafeFileHandle.DangerousGetHandle();
            var pfd = new[] { new Pollfd { fd = fd, events = PollEvents.POLLIN } };
            var buffer = new byte[4096];
            while (!_stopPump.IsCancellationRequested)
            {
                if (Syscall.poll(pfd, 1, 100) <= 0)
                {
                    continue;
                }

                int n;
                try
                {
                    n = stderr.Read(buffer, 0, buffer.Length);
                }
                catch (IOException)
                {
                    return;
                }

                if (n <= 0)
                {
                    return;
                }

                lock (_stderr)
                {
                    if (_stderr.Length < MaxStderr)
                    {
                        _stderr.Append(Encoding.UTF8.GetString(buffer, 0, n));
                    }
                }
            }
        }
    }, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);

    /// <summary>
    /// Lets everything the worker printed arrive before an error is reported:
    /// waits (without killing) up to <paramref name="timeout"/> for it to exit,
    /// then briefly for the pump to read the pipe dry. A reply on the socket can
    /// overtake the worker's last lines on its stderr pipe.
    /// </summary>
    public async Task DrainOutputAsync(TimeSpan timeout)
    {
        await Task.WhenAny(_exit, Task.Delay(timeout)).ConfigureAwait(false);
        await Task.WhenAny(_stderrPump, Task.Delay(200)).ConfigureAwait(false);
    }

    /// <summary>Kills the worker (used when a request is cancelled mid-way).</summary>
    public void Kill() => _ = Syscall.kill(Pid, Signum.SIGKILL);

    /// <summary>Waits at most <paramref name="timeout"/> for the worker to exit; kills it if it is still running then.</summary>
    public async Task<int?> WaitForExitAsync(TimeSpan timeout)
    {
        if (await Task.WhenAny(_exit, Task.Delay(timeout)).ConfigureAwait(false) != _exit)
        {
            Kill();
        }

        return await _exit.ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        Socket.Dispose();
        await WaitForExitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false);

        // Whatever the worker wrote is in the pipe by now; give the pump a moment
        // to drain it, then stop it even if a daemon child still holds the pipe.
        _stopPump.CancelAfter(TimeSpan.FromMilliseconds(200));
        await _stderrPump.ConfigureAwait(false);
        _stopPump.Dispose();
    }
}
