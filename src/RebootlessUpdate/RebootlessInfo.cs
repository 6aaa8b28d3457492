namespace RebootlessUpdate;

/// <summary>Facts about this build of the library.</summary>
public static class RebootlessInfo
{
    /// <summary>
    /// The kernel command-line parameter that tells the next kernel's
    /// <c>rebootless resume</c> which checkpoint set to restore.
    /// </summary>
    public const string ResumeParameter = "rebootless.resume";

    /// <summary>The oldest CRIU this library supports (4.0: older releases fail on current kernels' vDSO).</summary>
    public static Criu.CriuVersion MinimumCriuVersion { get; } = new(4, 0);
}
