using System.CommandLine;
using RebootlessUpdate.Images;
using RebootlessUpdate.Kexec;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;

namespace RebootlessUpdate.Cli.Commands;

/// <summary><c>rebootless update</c>: checkpoint, load the kernel, jump.</summary>
internal static class UpdateCommand
{
    public static Option<bool> LazyRestoreOption(string what) => new("--lazy-restore")
    {
        Description = $"Restore lazily {what}: a criu lazy-pages daemon per target serves its memory on demand (userfaultfd) once it runs, "
            + "so the restore does not copy every page while it is down; the daemon exits by itself when every page is delivered.",
    };

    public static Option<bool> PagesFromStoreOption(string what) => new("--pages-from-store")
    {
        Description = $"Restore lazily {what}, each target's memory served from the checkpoint store by rebootless's own page server: "
            + "every 1 MiB of pages is checked against the sealed manifest the first time it is needed, so a target runs before its "
            + "page images are hashed whole; one whose pages fail their check is ended before it gets them. The run ends once every target holds all of its memory.",
    };

    public static Command Create()
    {
        var cmd = new Command("update", "Checkpoint the targets, load the kernel, jump; `rebootless resume` restores them after boot.");
        var targets = new CliTargets(cmd);
        var kernel = new Option<string>("--kernel") { Description = "The kernel to switch to.", Required = true };
        var initrd = new Option<string?>("--initrd") { Description = "Its initrd (default: found next to the kernel)." };
        var append = new Option<string[]>("--append") { Description = "Parameters to set on the next command line (name=value or flag).", AllowMultipleArgumentsPerToken = true };
        var memmap = new Option<string[]>("--memmap") { Description = "Persistent-memory regions (SIZE!START) the next kernel must keep.", AllowMultipleArgumentsPerToken = true };
        var noPreDump = new Option<bool>("--no-pre-dump") { Description = "Skip the pre-dump while running (the frozen dump then copies all memory)." };
        var lazy = LazyRestoreOption("after the jump (recorded in the journal; `rebootless resume` follows it)");
        var fromStore = PagesFromStoreOption("after the jump (recorded in the journal; `rebootless resume` follows it)");
        CliOptions.Add(cmd, [kernel, initrd, append, memmap, noPreDump, lazy, fromStore, .. CliOptions.CriuOptions, .. CliOptions.StoreOptions, CliOptions.ManifestKey]);
        CliInvocation.SetAction(cmd, async (c, ct) =>
        {
            CliInvocation.RequireRoot("update");
            var named = targets.Resolve(c);
            var kernelPath = c.Value(kernel)!;
            try
            {
                _ = KernelImage.Probe(kernelPath);
            }
            catch (KexecException e)
            {
                throw CliFailure.Of(ExitCodes.BadKernel, $"--kernel {kernelPath}: {e.Message}");
            }

            if (c.Value(initrd) is { } i && !File.Exists(i))
            {
                throw CliFailure.Of(ExitCodes.BadKernel, $"the initrd {i} does not exist", "give an existing --initrd or leave it out to use the one next to the kernel");
            }

            var store = CliStores.Ready(c, needKexec: true, ct);
            var set = (c.Value(append) ?? []).Select(a => a.Split('=', 2) is [var n, var v] ? new KeyValuePair<string, string?>(n, v) : new KeyValuePair<string, string?>(a, null)).ToList();
            var kernelOptions = new LoadKernelStageOptions
            {
                KernelPath = kernelPath,
                InitrdPath = c.Value(initrd),
                SetParameters = set,
                PersistentMemoryRegions = (c.Value(memmap) ?? []).Concat(store is PmemImageStore ps ? [ps.Region.MemmapFragment] : Array.Empty<string>()).Distinct().ToList(),
            };
            var pipeline = (c.Value(noPreDump)
                ? new UpdatePipelineBuilder(UpdateMode.Update).AddPreflight().AddPlan().AddLoadKernel(kernelOptions).AddDump().AddSeal().AddJump()
                : RebootlessPipelines.Update(kernelOptions)).Build();
            return await RunReport.RunAsync(c, pipeline, UpdateMode.Update, named, store, c.Value(lazy), c.Value(fromStore), ct).ConfigureAwait(false);
        });
        return cmd;
    }
}
