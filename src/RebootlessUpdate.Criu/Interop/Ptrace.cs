using System.Runtime.InteropServices;
using Mono.Unix.Native;

namespace RebootlessUpdate.Criu.Interop;

/// <summary>
/// The few ptrace(2) requests the breakpoint probe needs (Mono.Unix has none). Every request of one tracee must come
/// from the thread that seized it: call these from one synchronous method.
/// </summary>
internal static partial class Ptrace
{
    private const int PeekUser = 3;
    private const int PokeUser = 6;
    private const int Cont = 7;
    private const int Seize = 0x4206;
    private const int Interrupt = 0x4207;

    /// <summary>The stop PTRACE_INTERRUPT causes, in bits 16..23 of a wait status.</summary>
    public const int EventStop = 128;

    // x86-64 offsets into struct user (sys/user.h): regs first, u_debugreg[8] at 848.
    public const int RaxOffset = 10 * 8;
    public const int OrigRaxOffset = 15 * 8;
    public const int RipOffset = 16 * 8;
    private const int DebugRegOffset = 848;

    /// <summary>The offset of debug register <paramref name="n"/> (0-3 addresses, 6 status, 7 control).</summary>
    public static int DebugReg(int n) => DebugRegOffset + (n * 8);

    public static bool TrySeize(int pid, out Errno errno) => Call(Seize, pid, 0, 0, out _, out errno);

    public static bool TryInterrupt(int pid, out Errno errno) => Call(Interrupt, pid, 0, 0, out _, out errno);

    public static bool TryContinue(int pid, out Errno errno) => Call(Cont, pid, 0, 0, out _, out errno);

    public static bool TryPoke(int pid, int offset, long value, out Errno errno) => Call(PokeUser, pid, offset, value, out _, out errno);

    /// <summary>Reads one word of the tracee's struct user; null when the kernel refuses.</summary>
    public static long? Peek(int pid, int offset) => Call(PeekUser, pid, offset, 0, out var word, out _) ? word : null;

    private static bool Call(int request, int pid, long addr, long data, out long result, out Errno errno)
    {
        // PEEKUSER returns the word itself, so -1 is a failure only when errno says so; the generated stub clears
        // errno before the call.
        result = ptrace(request, pid, addr, data);
        errno = NativeConvert.ToErrno(Marshal.GetLastPInvokeError());
        return result != -1 || errno == 0;
    }

    // glibc declares ptrace variadic; on x86-64 (the only place it is called) integer and pointer arguments pass the
    // same way either way, and a long is a pointer wide.
    [LibraryImport("libc", EntryPoint = "ptrace", SetLastError = true)]
    private static partial long ptrace(int request, int pid, long addr, long data);
}
