namespace RebootlessUpdate.Targets;

/// <summary>A unit as systemd shows it: its state and its main process (0 when none).</summary>
internal sealed record ServiceStatus(string ActiveState, string SubState, int MainPid)
{
    /// <summary>systemd is still acting on the unit, or it runs: a restore into its cgroup must wait, an adoption must not start it.</summary>
    public bool Busy => ActiveState is "active" or "activating" or "deactivating" or "reloading" or "refreshing";
}

/// <summary>systemctl failed, timed out or could not be run; the message says which command and what it printed.</summary>
internal sealed class ServiceManagerException(string message) : Exception(message)
{
    /// <summary>The boot has queued a start of the unit: left alone, it runs the unit's own command.</summary>
    public bool StartQueued { get; init; }
}

/// <summary>
/// What the stages ask of the service manager of a service target (see <see cref="Stages.ServiceHandback"/>).
/// <see cref="SystemctlServiceManager"/> asks systemd through <c>systemctl</c> and runtime drop-ins.
/// </summary>
internal interface IServiceManager
{
    /// <summary>
    /// Before CRIU may end the unit's processes: the end of its main process becomes nothing for systemd to act on
    /// (no restart, no stop commands run against whatever else, no watchdog).
    /// </summary>
    /// <exception cref="ServiceManagerException">systemd could not be told.</exception>
    void Release(ServiceUnit unit);

    /// <summary>True while a job of the unit (the boot's start, say) is queued.</summary>
    /// <exception cref="ServiceManagerException">systemd could not be asked.</exception>
    bool StartQueued(ServiceUnit unit);

    /// <summary>The unit's state now.</summary>
    /// <exception cref="ServiceManagerException">systemd could not be asked.</exception>
    ServiceStatus Status(ServiceUnit unit);

    /// <summary>
    /// Makes the running process <paramref name="mainPid"/> (in the unit's cgroup already) the main process of the
    /// unit, which must not be running: systemd starts the unit by reading a pid file instead of starting anything.
    /// Then the unit has its own configuration again (<see cref="Return"/>). When the boot queued a start of the unit
    /// that waits for this resume and <paramref name="mayLeaveToQueuedStart"/>, that start is made the adoption
    /// instead and left to run once the boot goes on: then this returns true, and the caller checks the outcome and
    /// calls <see cref="Return"/>.
    /// </summary>
    /// <exception cref="ServiceManagerException">systemd did not take it (or it was not asked, when the unit's start would
    /// not be the no-op); the unit has its own configuration again.</exception>
    bool Adopt(ServiceUnit unit, int mainPid, bool mayLeaveToQueuedStart);

    /// <summary>
    /// Before a jump: the system manager's checkpointed <paramref name="units"/> start, on the next boot, only after
    /// the resume unit (which hands them their restored trees, or lets them start afresh). Written to the host's
    /// unit configuration, which outlives the jump; a unit of a user's manager is left out.
    /// </summary>
    /// <exception cref="ServiceManagerException">The order could not be written.</exception>
    void OrderResumeBefore(IReadOnlyCollection<ServiceUnit> units);

    /// <summary>Removes what <see cref="OrderResumeBefore"/> wrote, if anything (the boot that read it has its order already).</summary>
    void ClearResumeOrder();

    /// <summary>The unit's own configuration again: what <see cref="Release"/> and <see cref="Adopt"/> added is removed, if anything.</summary>
    /// <exception cref="ServiceManagerException">systemd could not reload.</exception>
    void Return(ServiceUnit unit);
}
