using System.Runtime.InteropServices;

namespace RebootlessUpdate.Criu.Interop;

/// <summary>
/// posix_spawn with file actions: the one way to start a child that inherits
/// exactly the descriptors we choose. .NET opens every descriptor
/// close-on-exec and <see cref="System.Diagnostics.Process"/> cannot pass
/// extra ones; Mono.Unix does not cover posix_spawn.
/// </summary>
internal static unsafe partial class Spawn
{
    // glibc's posix_spawn_file_actions_t is 80 bytes on x86-64; leave room.
    private const int FileActionsSize = 256;
    private const string InheritMarker = "\0inherit";
    private const int SpareFd = 1000;

    /// <summary>One action applied in the child before exec.</summary>
    internal readonly record struct FdAction(int Fd, int From, string? OpenPath, int OpenFlags)
    {
        public static FdAction Dup2(int from, int to) => new(to, from, null, 0);

        /// <summary>
        /// Keeps our <paramref name="fd"/> open in the child at the same number.
        /// dup2 onto itself would leave close-on-exec set, so go through a spare
        /// high descriptor: dup2(fd, spare); dup2(spare, fd); close(spare).
        /// </summary>
        public static FdAction Inherit(int fd) => new(fd, fd, InheritMarker, 0);

        public static FdAction Open(int fd, string path, int flags) => new(fd, -1, path, flags);
    }

    /// <summary>
    /// Starts <paramref name="path"/> with <paramref name="argv"/> and our environment, with
    /// <paramref name="environment"/> set on top; returns the pid.
    /// </summary>
    /// <exception cref="IOException">posix_spawn failed (e.g. the file is not executable).</exception>
    public static int Start(string path, IReadOnlyList<string> argv, IReadOnlyList<FdAction> actions,
        IReadOnlyList<KeyValuePair<string, string>>? environment = null)
    {
        var fileActions = NativeMemory.AllocZeroed(FileActionsSize);
        var strings = new List<IntPtr>();
        try
        {
            Check(posix_spawn_file_actions_init(fileActions), "posix_spawn_file_actions_init");
            foreach (var a in actions)
            {
                if (ReferenceEquals(a.OpenPath, InheritMarker))
                {
                    Check(posix_spawn_file_actions_adddup2(fileActions, a.Fd, SpareFd), "adddup2");
                    Check(posix_spawn_file_actions_adddup2(fileActions, SpareFd, a.Fd), "adddup2");
                    Check(posix_spawn_file_actions_addclose(fileActions, SpareFd), "addclose");
                }
                else if (a.OpenPath is not null)
                {
                    Check(posix_spawn_file_actions_addopen(fileActions, a.Fd, a.OpenPath, a.OpenFlags, 0), "addopen");
                }
                else
                {
                    Check(posix_spawn_file_actions_adddup2(fileActions, a.From, a.Fd), "adddup2");
                }
            }

            var args = new IntPtr[argv.Count + 1];
            for (var i = 0; i < argv.Count; i++)
            {
                args[i] = Marshal.StringToCoTaskMemUTF8(argv[i]);
                strings.Add(args[i]);
            }

            var vars = new SortedDictionary<string, string>(StringComparer.Ordinal);
            foreach (System.Collections.DictionaryEntry e in Environment.GetEnvironmentVariables())
            {
                vars[(string)e.Key] = (string?)e.Value ?? string.Empty;
            }

            foreach (var (name, value) in environment ?? [])
            {
                vars[name] = value;
            }

            var env = new IntPtr[vars.Count + 1];
            var n = 0;
            foreach (var (name, value) in vars)
            {
                env[n] = Marshal.StringToCoTaskMemUTF8($"{name}={value}");
                strings.Add(env[n++]);
            }

            int pid;
            int rc;
            fixed (IntPtr* pArgs = args)
            fixed (IntPtr* pEnv = env)
            {
                rc = posix_spawn(&pid, path, fileActions, null, pArgs, pEnv);
            }

            if (rc != 0)
            {
                throw new IOException($"cannot start {path}: {Marshal.GetPInvokeErrorMessage(rc)} (errno {rc})", rc);
            }

            return pid;
        }
        finally
        {
            _ = posix_spawn_file_actions_destroy(fileActions);
            NativeMemory.Free(fileActions);
            foreach (var s in strings)
            {
                Marshal.FreeCoTaskMem(s);
            }
        }
    }

    private static void Check(int rc, string what)
    {
        if (rc != 0)
        {
            throw new IOException($"{what} failed: {Marshal.GetPInvokeErrorMessage(rc)}", rc);
        }
    }

    [LibraryImport("libc", EntryPoint = "posix_spawn", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int posix_spawn(int* pid, string path, void* fileActions, void* attr, IntPtr* argv, IntPtr* envp);

    [LibraryImport("libc", EntryPoint = "posix_spawn_file_actions_init")]
    private static partial int posix_spawn_file_actions_init(void* fileActions);

    [LibraryImport("libc", EntryPoint = "posix_spawn_file_actions_destroy")]
    private static partial int posix_spawn_file_actions_destroy(void* fileActions);

    [LibraryImport("libc", EntryPoint = "posix_spawn_file_actions_adddup2")]
    private static partial int posix_spawn_file_actions_adddup2(void* fileActions, int fd, int newFd);

    [LibraryImport("libc", EntryPoint = "posix_spawn_file_actions_addclose")]
    private static partial int posix_spawn_file_actions_addclose(void* fileActions, int fd);

    [LibraryImport("libc", EntryPoint = "posix_spawn_file_actions_addopen", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int posix_spawn_file_actions_addopen(void* fileActions, int fd, string path, int oflag, uint mode);
}

/// <summary>pipe2(2), which Mono.Unix lacks: a pipe created close-on-exec atomically.</summary>
internal static unsafe partial class Pipes
{
    private const int OCloexec = 0x80000; // O_CLOEXEC on Linux

    /// <summary>Creates a close-on-exec pipe; returns false with errno set on failure.</summary>
    public static bool TryCreate(out int readFd, out int writeFd)
    {
        int* fds = stackalloc int[2];
        var ok = pipe2(fds, OCloexec) == 0;
        readFd = ok ? fds[0] : -1;
        writeFd = ok ? fds[1] : -1;
        return ok;
    }

    [LibraryImport("libc", EntryPoint = "pipe2", SetLastError = true)]
    private static partial int pipe2(int* fds, int flags);
}
