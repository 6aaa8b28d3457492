namespace RebootlessUpdate.VmAgent;

/// <summary>Plumbing check: prints the kernel release and its arguments.</summary>
internal sealed class EchoCommand : IVmCommand
{
    public string Name => "echo";

    public Task<int> RunAsync(IReadOnlyList<string> args)
    {
        Console.WriteLine($"vm-agent on {File.ReadAllText("/proc/sys/kernel/osrelease").Trim()}: {string.Join(' ', args)}");
        return Task.FromResult(0);
    }
}
