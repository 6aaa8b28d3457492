using RebootlessUpdate;
using RebootlessUpdate.Criu;

// Prints whether a CRIU version string meets the library's minimum.
// Usage: dotnet run --project samples/CriuCheck -- 4.1.1
var text = args.Length > 0 ? args[0] : "4.1.1";
var version = CriuVersion.Parse(text);
Console.WriteLine(version >= RebootlessInfo.MinimumCriuVersion
    ? $"criu {version} is supported (minimum {RebootlessInfo.MinimumCriuVersion})"
    : $"criu {version} is too old: RebootlessUpdate needs {RebootlessInfo.MinimumCriuVersion} or newer");
