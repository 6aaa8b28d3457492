using System.Reflection;
using RebootlessUpdate.VmAgent;

var commands = Assembly.GetExecutingAssembly().GetTypes()
    .Where(t => typeof(IVmCommand).IsAssignableFrom(t) && t is { IsAbstract: false, IsInterface: false })
    .Select(t => (IVmCommand)Activator.CreateInstance(t)!)
    .ToDictionary(c => c.Name, StringComparer.Ordinal);

if (args.Length == 0 || !commands.TryGetValue(args[0], out var command))
{
    Console.Error.WriteLine($"usage: VmAgent COMMAND [ARGS]; commands: {string.Join(", ", commands.Keys.Order(StringComparer.Ordinal))}");
    return 2;
}

try
{
    return await command.RunAsync(args[1..]);
}
catch (Exception e)
{
    Console.Error.WriteLine($"vm-agent {command.Name} failed: {e}");
    return 1;
}
