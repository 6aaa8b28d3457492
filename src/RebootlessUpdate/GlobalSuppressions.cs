using System.Diagnostics.CodeAnalysis;

// RS0026 guards against adding an overload with optional parameters next to another: these pairs
// are the surface first shipped as stable (0.2.0), recorded in PublicAPI.Shipped.txt as they were.
[assembly: SuppressMessage("ApiDesign", "RS0026:Do not add multiple public overloads with optional parameters",
    Justification = "Shipped in 0.2.0 as is.",
    Scope = "member", Target = "~M:RebootlessUpdate.Kexec.KernelImage.FindInitrd(System.String,System.String)~System.String")]
[assembly: SuppressMessage("ApiDesign", "RS0026:Do not add multiple public overloads with optional parameters",
    Justification = "Shipped in 0.2.0 as is.",
    Scope = "member", Target = "~M:RebootlessUpdate.Kexec.KernelImage.FindInitrd(System.String)~System.String")]
[assembly: SuppressMessage("ApiDesign", "RS0026:Do not add multiple public overloads with optional parameters",
    Justification = "Shipped in 0.2.0 as is.",
    Scope = "member", Target = "~M:RebootlessUpdate.Pipeline.UpdateJournal.Open(System.String,System.String,System.TimeProvider)~RebootlessUpdate.Pipeline.UpdateJournal")]
[assembly: SuppressMessage("ApiDesign", "RS0026:Do not add multiple public overloads with optional parameters",
    Justification = "Shipped in 0.2.0 as is.",
    Scope = "member", Target = "~M:RebootlessUpdate.Pipeline.UpdateJournal.Open(System.String,System.String,RebootlessUpdate.Images.ImageStoreLock,System.TimeProvider)~RebootlessUpdate.Pipeline.UpdateJournal")]
[assembly: SuppressMessage("ApiDesign", "RS0026:Do not add multiple public overloads with optional parameters",
    Justification = "Shipped in 0.2.0 as is.",
    Scope = "member", Target = "~M:RebootlessUpdate.Pipeline.UpdatePipelineBuilder.AddStage(RebootlessUpdate.Pipeline.IUpdateStage,RebootlessUpdate.Pipeline.StageOptions)~RebootlessUpdate.Pipeline.UpdatePipelineBuilder")]
[assembly: SuppressMessage("ApiDesign", "RS0026:Do not add multiple public overloads with optional parameters",
    Justification = "Shipped in 0.2.0 as is.",
    Scope = "member", Target = "~M:RebootlessUpdate.Pipeline.UpdatePipelineBuilder.AddStage(System.String,System.Func{RebootlessUpdate.Pipeline.UpdateContext,System.Threading.CancellationToken,System.Threading.Tasks.ValueTask},System.Func{RebootlessUpdate.Pipeline.UpdateContext,System.Threading.CancellationToken,System.Threading.Tasks.ValueTask},RebootlessUpdate.Pipeline.StageOptions)~RebootlessUpdate.Pipeline.UpdatePipelineBuilder")]
