using System.Diagnostics.CodeAnalysis;

// RS0026 guards against adding an overload with optional parameters next to another: these pairs
// are the surface first shipped as stable (0.2.0), recorded in PublicAPI.Shipped.txt as they were.
[assembly: SuppressMessage("ApiDesign", "RS0026:Do not add multiple public overloads with optional parameters",
    Justification = "Shipped in 0.2.0 as is.",
    Scope = "member", Target = "~M:RebootlessUpdate.Criu.CriuLazyPagesDaemon.StartAsync(RebootlessUpdate.Criu.CriuClientOptions,System.String,System.Nullable{System.TimeSpan},System.Threading.CancellationToken)~System.Threading.Tasks.Task{RebootlessUpdate.Criu.CriuLazyPagesDaemon}")]
[assembly: SuppressMessage("ApiDesign", "RS0026:Do not add multiple public overloads with optional parameters",
    Justification = "Shipped in 0.2.0 as is.",
    Scope = "member", Target = "~M:RebootlessUpdate.Criu.CriuLazyPagesDaemon.StartAsync(RebootlessUpdate.Criu.CriuClientOptions,RebootlessUpdate.Criu.CriuLazyPagesOptions,System.Threading.CancellationToken)~System.Threading.Tasks.Task{RebootlessUpdate.Criu.CriuLazyPagesDaemon}")]
