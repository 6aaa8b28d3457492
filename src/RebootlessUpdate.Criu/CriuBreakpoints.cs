namespace RebootlessUpdate.Criu;

/// <summary>
/// Whether criu may use the CPU's hardware breakpoints. At the end of a dump, and of a restore, criu has each process
/// run to its final <c>rt_sigreturn</c> and stops it there with an execution breakpoint in a debug register; without
/// them it steps the process from syscall to syscall instead, which costs a few more stops. Some virtual machines take
/// the debug registers but never fire them (a hypervisor that does not virtualize them: Firecracker here, AMD SEV
/// guests and some Xen ones elsewhere). criu 4.1 does not notice: it waits for the trap forever, with the processes
/// frozen, until the request watchdog kills it.
/// </summary>
public enum CriuBreakpoints
{
    /// <summary>Probe once per process whether breakpoints fire here, and have criu avoid them when they do not.</summary>
    Auto = 0,

    /// <summary>Leave criu's default: it uses them. Only where they are known to work.</summary>
    Use,

    /// <summary>criu never uses them (criu's <c>CRIU_FAULT=130</c>, its switch for this).</summary>
    Avoid,
}
