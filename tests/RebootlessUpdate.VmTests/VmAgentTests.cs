using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.VmTests;

/// <summary>Plumbing: .NET code of this repository runs inside the VM.</summary>
[NonParallelizable]
public class VmAgentTests
{
    [Test]
    public void Agent_runs_in_the_guest_on_the_old_kernel()
    {
        var testbed = Testbed.Require();
        Testbed.RequireRoot();

        var (_, result) = VmRun.Run(testbed, "dotnet \"$AGENT\" echo hello-from-guest");

        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        Assert.That(result.Output, Does.Contain($"vm-agent on {testbed.OldKernel}: hello-from-guest"));
    }
}
