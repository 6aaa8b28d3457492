using BenchmarkDotNet.Running;

// dotnet run -c Release --project benchmarks/RebootlessUpdate.Benchmarks -- --filter '*'
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
