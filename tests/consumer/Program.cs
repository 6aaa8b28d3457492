// A consumer of the packed packages, as a new user writes one: built in a temporary folder by
// tests/RebootlessUpdate.IntegrationTests/PackageConsumerTests.cs against the packages only
// (no project reference), with warnings as errors. It rehearses a real process tree through
// dependency injection, then cancels a dump of it at post-dump.
// Usage: Consumer CRIU STORE PID. Prints "key: value" lines; exit 0 when both went as expected.
using System.Globalization;
using System.Runtime.Versioning;
using Microsoft.Extensions.DependencyInjection;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Hosting;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Targets;

// CRIU and kexec exist only on Linux: without this every call is a CA1416 warning.
[assembly: SupportedOSPlatform("linux")]

var pid = int.Parse(args[2], CultureInfo.InvariantCulture);
var services = new ServiceCollection();
services.AddRebootlessUpdate(o =>
{
    o.CriuPath = args[0];
    o.StoreDirectory = args[1];
});
await using var provider = services.BuildServiceProvider();

var result = await provider.GetRequiredService<RebootlessUpdater>().RehearseAsync([UpdateTarget.ProcessTree(pid)]);
var target = result.Targets.Single();
Console.WriteLine($"rehearsal: {result.Outcome}");
Console.WriteLine($"restored-pid: {target.RestoredPid}");
if (result.Outcome != UpdateOutcome.Succeeded || target.RestoredPid is not { } restored)
{
    Console.WriteLine($"error: {result.Error}");
    return 1;
}

// Cancel a dump of the restored tree while criu holds it frozen at post-dump.
using var cancel = new CancellationTokenSource();
var images = Directory.CreateTempSubdirectory("rebootless-consumer-dump-");
try
{
    await provider.GetRequiredService<CriuClient>().DumpAsync(new CriuDumpOptions
    {
        ImagesDirectory = images.FullName,
        Pid = restored,
        OnNotification = async (n, ct) =>
        {
            if (n.Script == "post-dump")
            {
                await cancel.CancelAsync();
                await Task.Delay(Timeout.Infinite, ct);
            }
        },
    }, cancel.Token);
    Console.WriteLine("dump: finished");
    return 1;
}
catch (OperationCanceledException e) when (e.CancellationToken == cancel.Token)
{
    Console.WriteLine("dump: cancelled");
    return 0;
}
finally
{
    images.Delete(recursive: true);
}
