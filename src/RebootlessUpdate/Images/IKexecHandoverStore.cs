namespace RebootlessUpdate.Images;

/// <summary>
/// A store whose content crosses a kexec only when it is handed to the kernel right before the jump (the Live Update
/// Orchestrator's sessions: <see cref="Luo.LuoImageStore"/>), not one that lives in memory the next kernel keeps anyway.
/// The jump stage calls <see cref="HandOver"/> as its last step and keeps the result alive until the jump; the process
/// that handed over must be the one that jumps (a session dies with its holder), so such a store is refused where the
/// jump goes through systemd.
/// </summary>
public interface IKexecHandoverStore : IImageStore
{
    /// <summary>
    /// Whether a handover can be made on this kernel, and why not: checked before anything freezes.
    /// </summary>
    /// <param name="reason">What is missing, in words an operator can act on; empty when it can.</param>
    bool CanHandOver(out string reason);

    /// <summary>
    /// Hands the whole store to the kernel for set <paramref name="setId"/>. Nothing may be written into the store
    /// afterwards: until <see cref="IKexecHandover.GiveBack"/>, its files are the kernel's.
    /// </summary>
    /// <exception cref="ImageStoreException">The kernel refused; the store is as it was.</exception>
    IKexecHandover HandOver(string setId);
}

/// <summary>A store handed to the kernel and held until the jump; <see cref="GiveBack"/> when the jump does not happen.</summary>
public interface IKexecHandover : IDisposable
{
    /// <summary>What carries the store, e.g. the LUO session's name.</summary>
    string Carrier { get; }

    /// <summary>Files handed over.</summary>
    int Files { get; }

    /// <summary>Their bytes.</summary>
    long Bytes { get; }

    /// <summary>Puts every file back into the store (the jump did not happen).</summary>
    /// <exception cref="ImageStoreException">A file could not be put back under its own name; the message says where it is.</exception>
    void GiveBack();
}
