using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Serialization;
using RebootlessUpdate.Criu;
using RebootlessUpdate.Images;
using RebootlessUpdate.Kexec;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.Cli;

/// <summary>The tool's commands. Bad input is checked before anything is changed.</summary>
internal static class Commands
{
    private const string DefaultStore = "/var/lib/rebootless/store";

    private static readonly Option<bool> Json = new("--json") { Description = "Write the result as JSON on stdout.", Recursive = true };
    private static readonly Option<string> CriuPath = new("--criu") { Description = "The criu binary (default: criu on PATH).", DefaultValueFactory = _ => "criu", Recursive = true };
    private static readonly Option<string?> CriuTimeout = new("--criu-timeout")
    {
        Description = "Seconds criu may work on one request before it is taken for hung: then it is killed and the run rolls back "
            + $"(the workloads run on). Default {(int)CriuClientOptions.DefaultRequestTimeout.TotalSeconds}.",
        Recursive = true,
    };

    private static readonly Option<string?> Store = new("--store") { Description = $"The image store folder (default {DefaultStore}).", Recursive = true };
    private static readonly Option<string?> Pmem = new("--pmem") { Description = "Keep the store on this legacy persistent-memory device (e.g. /dev/pmem0), which survives kexec; formatted only when empty.", Recursive = true };
    private static readonly Option<string?> ManifestKey = new("--manifest-key")
    {
        Description = "A root-only key file outside the store (made 0600 at the first seal when missing): every seal signs the set's "
            + "manifest with it (HMAC-SHA256), and a set whose manifest does not carry a valid signature is refused, so rewriting a "
            + "manifest needs the key, not only write access to the store. Give the same key to update, resume and images verify; keep it "
            + "on the root file system so it survives the switch.",
        Recursive = true,
    };

    private static readonly Option<string?> StoreMount = new("--store-mount") { Description = "Where --pmem's store is mounted (default /run/rebootless/store).", Recursive = true };

    public static void AddAll(RootCommand root)
    {
        root.Options.Add(Json);
        root.Options.Add(CriuPath);
        root.Options.Add(CriuTimeout);
        root.Options.Add(Store);
        root.Options.Add(Pmem);
        root.Options.Add(StoreMount);
        root.Options.Add(ManifestKey);
        root.Options.Add(TcpEstablished);
        root.Options.Add(SystemdUser);
        root.Subcommands.Add(Check());
        root.Subcommands.Add(Plan());
        root.Subcommands.Add(Rehearse());
        root.Subcommands.Add(Update());
        root.Subcommands.Add(Resume());
        root.Subcommands.Add(Status());
        root.Subcommands.Add(Images());
    }

    private static Option<int[]> PidOption() => new("--pid") { Description = "Root pid of a process tree to checkpoint (repeatable).", AllowMultipleArgumentsPerToken = true };

    private static Option<string[]> CgroupOption() => new("--cgroup") { Description = "A cgroup whose processes to checkpoint (repeatable).", AllowMultipleArgumentsPerToken = true };

    private static readonly Option<bool> TcpEstablished = new("--tcp-established") { Description = "Checkpoint established TCP connections of the --pid/--cgroup targets (the connections survive the switch).", Recursive = true };

    private static Option<bool> LazyRestoreOption(string what) => new("--lazy-restore")
    {
        Description = $"Restore lazily {what}: a criu lazy-pages daemon per target serves its memory on demand (userfaultfd) once it runs, "
            + "so the restore does not copy every page while it is down; the daemon exits by itself when every page is delivered.",
    };

    private static Option<string[]> ContainerOption() => new("--container") { Description = "A running runc container id (repeatable).", AllowMultipleArgumentsPerToken = true };

    private static Option<string[]> ServiceOption() => new("--service") { Description = "A running systemd service by unit name: its main process's tree, in its cgroup (repeatable).", AllowMultipleArgumentsPerToken = true };

    private static readonly Option<bool> SystemdUser = new("--systemd-user") { Description = "Find --service units in the calling user's service manager (systemctl --user) instead of the system's.", Recursive = true };

    private static Command Check()
    {
        var cmd = new Command("check", "criu, kexec and store readiness; exit 0 only when an update is possible.");
        cmd.SetAction(async (p, ct) =>
        {
            // Looks only: a store that does not exist yet is not created (rehearse or update will).
            var store = OpenStore(p, mustExist: false, out var error, readOnly: true);
            var report = await Readiness.CheckAsync(Criu(p), store, needKexec: true, runCriuCheck: true, ct).ConfigureAwait(false);
            var checks = report.Checks.ToList();
            if (error is not null)
            {
                checks.Add(new ReadinessCheck("store", false, error.Value.Message, ReadinessProblem.StoreUnusable));
            }

            if (p.GetValue(Json))
            {
                WriteJson(new CheckOutput(checks.All(c => c.Ok), report.CriuVersion, [.. checks.Select(c => new CheckLine(c.Name, c.Ok, c.Detail))]), CliJson.Default.CheckOutput);
            }
            else
            {
                foreach (var c in checks)
                {
                    Console.WriteLine($"{(c.Ok ? "ok  " : "FAIL")} {c.Name}: {c.Detail}");
                }
            }

            return checks.FirstOrDefault(c => !c.Ok) is { Problem: { } problem } ? Code(problem) : ExitCodes.Ok;
        });
        return cmd;
    }

    private static Command Plan()
    {
        var cmd = new Command("plan", "What would be checkpointed, the estimated size, and whether it fits the store.");
        var pid = PidOption();
        var cgroup = CgroupOption();
        var container = ContainerOption();
        var service = ServiceOption();
        cmd.Options.Add(pid);
        cmd.Options.Add(cgroup);
        cmd.Options.Add(container);
        cmd.Options.Add(service);
        cmd.SetAction(p =>
        {
            if (!Targets(p, pid, cgroup, container, service, out var targets, out var code))
            {
                return code;
            }

            var store = OpenStore(p, mustExist: false, out var storeError, readOnly: true);
            if (store is null)
            {
                return Fail(storeError!.Value);
            }

            var resolved = targets.Select(t => (t.Id, r: t.Resolve())).ToList();
            var (processes, memory, required) = CapacityEstimator.Estimate(resolved.Select(r => r.r.RootPid));
            var free = store.GetCapacity().FreeBytes;
            var output = new PlanOutput(resolved.Select(r => new PlanTarget(r.Id, r.r.RootPid, r.r.Processes, r.r.Settings.ShellJob, r.r.Settings.FreezeCgroup)).ToList(),
                processes, memory, required, free, required <= free, store.RootDirectory);
            if (p.GetValue(Json))
            {
                WriteJson(output, CliJson.Default.PlanOutput);
            }
            else
            {
                foreach (var t in output.Targets)
                {
                    Console.WriteLine($"{t.Target}: root {t.RootPid}, {t.Processes} processes{(t.ShellJob ? ", shell job" : "")}");
                }

                Console.WriteLine($"estimate: {required} bytes needed ({memory} bytes of memory), {free} free in {store.RootDirectory}: {(output.Fits ? "fits" : "does NOT fit")}");
            }

            return output.Fits ? ExitCodes.Ok : ExitCodes.StoreFull;
        });
        return cmd;
    }

    private static Command Rehearse()
    {
        var cmd = new Command("rehearse", "Checkpoint, seal, verify and restore on this kernel; exit 0 only when every target was checkpointed and restored.");
        var pid = PidOption();
        var cgroup = CgroupOption();
        var container = ContainerOption();
        var service = ServiceOption();
        var keep = new Option<bool>("--keep-images") { Description = "Keep the rehearsal's checkpoint set." };
        var lazy = LazyRestoreOption("(the rehearsal's set is deleted once every page is delivered)");
        cmd.Options.Add(pid);
        cmd.Options.Add(cgroup);
        cmd.Options.Add(container);
        cmd.Options.Add(service);
        cmd.Options.Add(keep);
        cmd.Options.Add(lazy);
        cmd.SetAction(async (p, ct) =>
        {
            if (!Targets(p, pid, cgroup, container, service, out var targets, out var code) || !Ready(p, needKexec: false, out code, out var store, ct))
            {
                return code;
            }

            var pipeline = RebootlessPipelines.Rehearsal(cleanup: new CleanupStageOptions { DeleteRehearsalSet = !p.GetValue(keep) }).Build();
            return await RunAsync(p, pipeline, progress => new UpdateContext(UpdateMode.Rehearse, targets) { Store = store, Criu = Criu(p), Progress = progress, LazyRestore = p.GetValue(lazy) }, ct).ConfigureAwait(false);
        });
        return cmd;
    }

    private static Command Update()
    {
        var cmd = new Command("update", "Checkpoint the targets, load the kernel, jump; run `rebootless resume` after boot.");
        var pid = PidOption();
        var cgroup = CgroupOption();
        var container = ContainerOption();
        var service = ServiceOption();
        var kernel = new Option<string>("--kernel") { Description = "The kernel to switch to.", Required = true };
        var initrd = new Option<string?>("--initrd") { Description = "Its initrd (default: found next to the kernel)." };
        var append = new Option<string[]>("--append") { Description = "Parameters to set on the next command line (name=value or flag).", AllowMultipleArgumentsPerToken = true };
        var pmem = new Option<string[]>("--memmap") { Description = "Persistent-memory regions (SIZE!START) the next kernel must keep.", AllowMultipleArgumentsPerToken = true };
        var noPreDump = new Option<bool>("--no-pre-dump") { Description = "Skip the pre-dump while running (the frozen dump then copies all memory)." };
        var lazy = LazyRestoreOption("after the jump (recorded in the journal; `rebootless resume` follows it)");
        foreach (var o in new Option[] { pid, cgroup, container, service, kernel, initrd, append, pmem, noPreDump, lazy })
        {
            cmd.Options.Add(o);
        }

        cmd.SetAction(async (p, ct) =>
        {
            if (!Targets(p, pid, cgroup, container, service, out var targets, out var code))
            {
                return code;
            }

            var kernelPath = p.GetValue(kernel)!;
            try
            {
                _ = KernelImage.Probe(kernelPath);
                if (p.GetValue(initrd) is { } i && !File.Exists(i))
                {
                    return Fail((ExitCodes.BadKernel, $"the initrd {i} does not exist; give an existing --initrd or leave it out to use the one next to the kernel."));
                }
            }
            catch (KexecException e)
            {
                return Fail((ExitCodes.BadKernel, $"--kernel {kernelPath}: {e.Message}"));
            }

            if (!Ready(p, needKexec: true, out code, out var store, ct))
            {
                return code;
            }

            var set = (p.GetValue(append) ?? []).Select(a => a.Split('=', 2) is [var n, var v] ? new KeyValuePair<string, string?>(n, v) : new KeyValuePair<string, string?>(a, null)).ToList();
            var kernelOptions = new LoadKernelStageOptions
            {
                KernelPath = kernelPath,
                InitrdPath = p.GetValue(initrd),
                SetParameters = set,
                PersistentMemoryRegions = (p.GetValue(pmem) ?? []).Concat(store is PmemImageStore ps ? [ps.Region.MemmapFragment] : Array.Empty<string>()).Distinct().ToList(),
            };
            var pipeline = (p.GetValue(noPreDump)
                ? new UpdatePipelineBuilder(UpdateMode.Update).AddPreflight().AddPlan().AddLoadKernel(kernelOptions).AddDump().AddSeal().AddJump()
                : RebootlessPipelines.Update(kernelOptions)).Build();
            return await RunAsync(p, pipeline, progress => new UpdateContext(UpdateMode.Update, targets) { Store = store, Criu = Criu(p), Progress = progress, LazyRestore = p.GetValue(lazy) }, ct).ConfigureAwait(false);
        });
        return cmd;
    }

    private static Command Resume()
    {
        var cmd = new Command("resume", "After boot: verify the checkpoint named by the command line and restore every target. Idempotent.");
        var setId = new Option<string?>("--set") { Description = "The set to resume (default: rebootless.resume= on the command line, else the newest unfinished one)." };
        var lazy = LazyRestoreOption("even when the update did not ask for it (targets the update marked lazy are restored lazily anyway)");
        cmd.Options.Add(setId);
        cmd.Options.Add(lazy);
        cmd.SetAction(async (p, ct) =>
        {
            if (p.GetValue(setId) is { } id && !UpdateJournal.IsSetId(id))
            {
                // Before a path is made of it: `--set ../x`, an absolute path or a link name reads nothing.
                return Fail((ExitCodes.Usage, NotASetId("--set", id)));
            }

            if (!Ready(p, needKexec: false, out var code, out var store, ct, mustExist: true))
            {
                return code;
            }

            var pipeline = RebootlessPipelines.Resume(new LocateStageOptions { SetId = p.GetValue(setId) }, restore: new RestoreStageOptions { LazyPages = p.GetValue(lazy) }).Build();
            return await RunAsync(p, pipeline, progress => new UpdateContext(UpdateMode.Resume, []) { Store = store, Criu = Criu(p), Progress = progress }, ct).ConfigureAwait(false);
        });
        return cmd;
    }

    private static Command Status()
    {
        var cmd = new Command("status", "The journals in the store: every update and rehearsal and where it stands.");
        cmd.SetAction(_ => WithStore(_, readOnly: true, store =>
        {
            // Every journal file, also those that cannot be read (a truncated one is a row saying why, never skipped).
            var boot = SystemInfo.BootId();
            var journals = UpdateJournal.Scan(store.RootDirectory)
                .Select(j => (Listing: j, Unfinished: UpdateJournal.IsUnfinished(j, boot)))
                .Select(x => new StatusLine(x.Listing.SetId, x.Listing.Record is not null, x.Unfinished, x.Listing.Problem,
                    x.Unfinished ? x.Listing.Remedy() : null, x.Listing.Record))
                .ToList();
            if (_.GetValue(Json))
            {
                WriteJson(journals, CliJson.Default.ListStatusLine);
            }
            else
            {
                foreach (var j in journals)
                {
                    Console.WriteLine(j.Journal is not { } r
                        ? $"{j.SetId} unreadable: {j.Problem}"
                        : $"{j.SetId} {r.Mode,-8} {r.State,-11} {string.Join(" ", r.Targets.Select(t => $"{t.Id}={t.Phase}"))}{(r.Error is null ? "" : "  error: " + r.Error)}");
                    if (j.Advice is not null)
                    {
                        Console.WriteLine("  needs attention: " + j.Advice);
                    }
                }
            }

            return ExitCodes.Ok;
        }));
        return cmd;
    }

    private static Command Images()
    {
        var images = new Command("images", "List, verify or delete checkpoint sets.");
        var ls = new Command("ls", "List the sets.");
        ls.SetAction(p => WithStore(p, readOnly: true, store =>
        {
            var sets = store.ListSets();
            if (p.GetValue(Json))
            {
                WriteJson([.. sets.Select(s => new SetLine(s.SetId, s.IsSealed, s.CreatedAt, s.TotalBytes) { Problem = s.Problem })], CliJson.Default.ListSetLine);
            }
            else
            {
                foreach (var s in sets)
                {
                    Console.WriteLine($"{s.SetId} {(s.IsSealed ? "sealed  " : "unsealed")} {s.TotalBytes?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "-"} bytes"
                        + (s.Problem is null ? "" : "  DAMAGED: " + s.Problem));
                }
            }

            return ExitCodes.Ok;
        }));
        var idArg = new Argument<string>("set") { Description = "The set id." };
        var verify = new Command("verify", "Re-hash a set and list every mismatch; exit 0 only when intact.");
        verify.Arguments.Add(idArg);
        verify.SetAction(p => WithStore(p, readOnly: true, store =>
        {
            var id = p.GetValue(idArg)!;
            if (!store.ListSets().Any(s => s.SetId == id))
            {
                return Fail((ExitCodes.Usage, $"there is no set {id} in {store.RootDirectory}; `rebootless images ls` lists them."));
            }

            var r = store.VerifyAsync(id).GetAwaiter().GetResult();
            if (p.GetValue(Json))
            {
                WriteJson(new VerifyOutput(r.SetId, r.IsValid, r.BytesHashed, [.. r.Issues.Select(i => i.ToString())]), CliJson.Default.VerifyOutput);
            }
            else
            {
                Console.WriteLine(r.IsValid ? $"{id}: intact ({r.BytesHashed} bytes hashed)" : $"{id}: {r.Issues.Count} problem(s)\n  " + string.Join("\n  ", r.Issues));
            }

            return r.IsValid ? ExitCodes.Ok : ExitCodes.Failed;
        }));
        var rm = new Command("rm", "Delete a set; one an unfinished run still needs only with --force.");
        var force = new Option<bool>("--force")
        {
            Description = "Delete the set even though an unfinished (interrupted or failed) run needs it: the workloads it did not put back "
                + "are given up; the journal records the run as abandoned.",
        };
        rm.Arguments.Add(idArg);
        rm.Options.Add(force);
        rm.SetAction(p => WithStore(p, readOnly: false, store =>
        {
            var id = p.GetValue(idArg)!;
            if (!UpdateJournal.IsSetId(id))
            {
                return Fail((ExitCodes.Usage, NotASetId("the set", id)));
            }

            // The lock first: whether a run still needs the set only holds while no run can change it.
            using var l = store.AcquireLock();
            var exists = store.ListSets().Any(s => s.SetId == id);
            var needed = UpdateJournal.Unfinished(store.RootDirectory).FirstOrDefault(j => j.SetId == id);
            if (!exists && needed is null)
            {
                return Fail((ExitCodes.Usage, $"there is no set {id} in {store.RootDirectory}; `rebootless images ls` lists them."));
            }

            string? lost = null;
            if (needed is not null)
            {
                if (!p.GetValue(force))
                {
                    return Fail((ExitCodes.NeedsAttention, $"set {id} is not deleted: an unfinished run needs it ({needed.Describe()}). "
                        + "Its images may be the only copy of workloads that do not run; `--force` deletes them anyway."));
                }

                // Recorded before anything is deleted: the journal says what was given up, and no longer blocks the store.
                if (needed.Record is null)
                {
                    var aside = UpdateJournal.SetAside(store.RootDirectory, id, l);
                    lost = $"the journal could not be read ({needed.Problem}); it is kept as {aside}; whatever of its run was not running is lost";
                }
                else
                {
                    var journal = UpdateJournal.Open(store.RootDirectory, id, l)!;
                    var targets = journal.Abandon("given up with `rebootless images rm --force`: the set's images were deleted");
                    lost = targets.Count == 0
                        ? "every target of its run was running; nothing is lost"
                        : $"lost: {string.Join(", ", targets.Select(t => $"{t.Id} (last journaled {t.Phase.ToString().ToLowerInvariant()})"))}: "
                            + "whatever of them does not run now can no longer be restored; the journal records the run as abandoned";
                }
            }

            if (exists)
            {
                store.DeleteSet(id);
            }

            if (p.GetValue(Json))
            {
                WriteJson(new SetLine(id, false, default, null), CliJson.Default.SetLine);
            }

            if (lost is not null)
            {
                Console.Error.WriteLine($"rebootless: {(exists ? "deleted set" : "gave up")} {id} of an unfinished run: {lost}.");
            }

            return ExitCodes.Ok;
        }));
        images.Subcommands.Add(ls);
        images.Subcommands.Add(verify);
        images.Subcommands.Add(rm);
        return images;
    }

    private static int WithStore(ParseResult p, bool readOnly, Func<IImageStore, int> action)
    {
        var store = OpenStore(p, mustExist: true, out var error, readOnly);
        if (store is null)
        {
            return Fail(error!.Value);
        }

        try
        {
            return action(store);
        }
        catch (ImageStoreLockedException e)
        {
            return Fail((ExitCodes.StoreLocked, e.Message));
        }
        catch (JournalException e)
        {
            return Fail((Code(e), e.Message));
        }
        catch (ImageStoreException e)
        {
            return Fail((ExitCodes.BadStore, e.Message));
        }
    }

    private static string NotASetId(string what, string id) =>
        $"{what} '{id}' is not a checkpoint set id (expected e.g. 20261126T063200Z-1a2b3c4d; `rebootless status` lists them); nothing was read or changed.";

    private static int Code(JournalException e) => e.Problem switch
    {
        JournalProblem.BadSetId or JournalProblem.UnknownSet => ExitCodes.Usage,
        JournalProblem.UnsafeFolder => ExitCodes.BadStore,
        _ => ExitCodes.NeedsAttention,
    };

    private static bool Targets(ParseResult p, Option<int[]> pid, Option<string[]> cgroup, Option<string[]> container, Option<string[]> service, out List<UpdateTarget> targets, out int code)
    {
        targets = [];
        code = ExitCodes.Ok;
        var treeOptions = TreeOptions(p);
        targets.AddRange((p.GetValue(pid) ?? []).Select(x => UpdateTarget.ProcessTree(x > 0 ? x : int.MaxValue, treeOptions)));
        targets.AddRange((p.GetValue(cgroup) ?? []).Select(c => UpdateTarget.Cgroup(c, treeOptions)));
        targets.AddRange((p.GetValue(container) ?? []).Select(c => UpdateTarget.Container(c)));
        var systemd = new SystemdServiceOptions { UserManager = p.GetValue(SystemdUser) };
        foreach (var unit in p.GetValue(service) ?? [])
        {
            try
            {
                targets.Add(UpdateTarget.Service(unit, treeOptions, systemd));
            }
            catch (ArgumentException e)
            {
                code = Fail((ExitCodes.Usage, "--service: " + e.Message.Replace($" (Parameter '{e.ParamName}')", "", StringComparison.Ordinal)));
                return false;
            }
        }

        if (targets.Count == 0)
        {
            code = Fail((ExitCodes.Usage, "name at least one target: --pid PID, --cgroup PATH, --container ID, --service UNIT."));
            return false;
        }

        if (targets.GroupBy(t => t.Id).FirstOrDefault(g => g.Count() > 1) is { } dup)
        {
            code = Fail((ExitCodes.Usage, $"target {dup.Key} is named twice."));
            return false;
        }

        foreach (var t in targets)
        {
            try
            {
                _ = t.Resolve();
            }
            catch (TargetNotFoundException e)
            {
                code = Fail((e.Problem switch
                {
                    TargetProblem.Inactive => ExitCodes.TargetInactive,
                    TargetProblem.ManagerUnavailable => ExitCodes.SystemdUnavailable,
                    _ => ExitCodes.UnknownTarget,
                }, e.Message));
                return false;
            }
        }

        return true;
    }

    private static ProcessTreeOptions TreeOptions(ParseResult p)
    {
        if (!p.GetValue(TcpEstablished))
        {
            return new ProcessTreeOptions();
        }

        // CRIU locks the network while it dumps TCP; its default is iptables. A host that
        // only has nftables (Debian 13's minimal install) needs the nftables method.
        return new ProcessTreeOptions { TcpEstablished = true, NetworkLock = OnPath("iptables") || !OnPath("nft") ? null : CriuNetworkLock.Nftables };
    }

    private static bool OnPath(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "/usr/sbin:/usr/bin:/sbin:/bin").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Any(d => File.Exists(Path.Combine(d, name)));

    private static bool Ready(ParseResult p, bool needKexec, out int code, out IImageStore? store, CancellationToken ct, bool mustExist = false)
    {
        store = null;
        if (Mono.Unix.Native.Syscall.geteuid() != 0)
        {
            // Before touching the store: a non-root run must change nothing.
            code = Fail((ExitCodes.NotRoot, $"running as uid {Mono.Unix.Native.Syscall.geteuid()}: checkpointing processes and loading a kernel need root; run with sudo."));
            return false;
        }

        var given = p.GetValue(Store);
        var path = given ?? DefaultStore;
        if (p.GetValue(Pmem) is null && (given is not null || mustExist) && !Directory.Exists(path))
        {
            code = Fail((ExitCodes.BadStore, $"the store folder {path} does not exist; create it (mkdir -p {path}) or pass --store DIR."));
            return false;
        }

        // criu and kexec first: opening a new store initialises it, and bad input must change nothing.
        var report = Readiness.CheckAsync(Criu(p), null, needKexec, false, ct).GetAwaiter().GetResult();
        if (report.FirstFailure is { } f)
        {
            code = Fail((Code(f.Problem!.Value), f.Detail));
            return false;
        }

        store = OpenStore(p, mustExist, out var error);
        if (store is null)
        {
            code = Fail(error!.Value);
            return false;
        }

        code = ExitCodes.Ok;
        return true;
    }

    private static IImageStore? OpenStore(ParseResult p, bool mustExist, out (int Code, string Message)? error, bool readOnly = false)
    {
        error = null;
        if (p.GetValue(ManifestKey) is { } key && !Path.IsPathRooted(key))
        {
            error = (ExitCodes.Usage, $"--manifest-key {key}: give an absolute path (the same file for update, resume and images verify); nothing was changed.");
            return null;
        }

        if (p.GetValue(Pmem) is { } device)
        {
            return OpenPmemStore(p, device, out error);
        }

        if (p.GetValue(StoreMount) is not null)
        {
            error = (ExitCodes.Usage, "--store-mount goes with --pmem DEVICE; for a folder store use --store DIR.");
            return null;
        }

        var given = p.GetValue(Store);
        var path = given ?? DefaultStore;
        if ((given is not null || mustExist) && !Directory.Exists(path))
        {
            error = (ExitCodes.BadStore, $"the store folder {path} does not exist; create it (mkdir -p {path}) or pass --store DIR.");
            return null;
        }

        try
        {
            return new DirectoryImageStore(new DirectoryImageStoreOptions { RootDirectory = path, ReadOnly = readOnly, ManifestKeyPath = p.GetValue(ManifestKey) });
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ImageStoreException)
        {
            error = (ExitCodes.BadStore, $"{path} cannot be used as a store: {e.Message}");
            return null;
        }
    }

    private static PmemImageStore? OpenPmemStore(ParseResult p, string device, out (int Code, string Message)? error)
    {
        error = null;
        if (p.GetValue(Store) is not null)
        {
            error = (ExitCodes.Usage, "give either --store DIR or --pmem DEVICE, not both.");
            return null;
        }

        try
        {
            // Formats the device only when it holds nothing; a device holding anything but our store is refused.
            // The mount is left in place: the store must stay reachable until the jump and for `resume`.
            return PmemImageStore.Open(new PmemImageStoreOptions
            {
                Device = device,
                MountPoint = p.GetValue(StoreMount) ?? new PmemImageStoreOptions().MountPoint,
                ManifestKeyPath = p.GetValue(ManifestKey),
            });
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ImageStoreException)
        {
            error = (ExitCodes.BadStore, $"{device} cannot be used as a store: {e.Message}");
            return null;
        }
    }

    private static async Task<int> RunAsync(ParseResult p, UpdatePipeline pipeline, Func<IProgress<UpdateProgress>?, UpdateContext> contextFor, CancellationToken ct)
    {
        UpdateContext context = null!;
        var result = await ProgressDisplay.RunAsync(p.GetValue(Json), progress => pipeline.ExecuteAsync(context = contextFor(progress), ct)).ConfigureAwait(false);
        if (p.GetValue(Json))
        {
            WriteJson(result, PipelineJsonPublic.UpdateResultInfo);
        }
        else
        {
            foreach (var s in result.Stages)
            {
                Console.WriteLine($"{s.Name,-10} {s.Status,-18} {s.Duration.TotalMilliseconds,8:0.0} ms {s.Message}");
            }

            foreach (var t in result.Targets)
            {
                Console.WriteLine($"{t.Target}: {t.Phase}{(t.Restorable ? " (restorable)" : "")} downtime {t.Downtime?.TotalMilliseconds:0} ms"
                    + (t.LazyPagesDaemonPid is { } daemon ? $" lazy (pages served by daemon {daemon})" : "") + $" {t.Error}");
            }

            Console.WriteLine($"{context.Mode}: {result.Outcome}{(result.SetId is null ? "" : " set " + result.SetId)}");
        }

        if (!result.IsSuccess)
        {
            // A refusal (the lock, a journal) changed nothing: it is not a rollback.
            var what = result.Exception is JournalException or ImageStoreLockedException ? "refused" : result.Outcome.ToString().ToLowerInvariant();
            Console.Error.WriteLine($"rebootless: {context.Mode.ToString().ToLowerInvariant()} {what} at {result.FailedStage}: {result.Error}");
        }

        return result.Outcome switch
        {
            UpdateOutcome.Succeeded or UpdateOutcome.NothingToDo => ExitCodes.Ok,
            _ when result.Exception is JournalException j => Code(j),
            UpdateOutcome.RolledBack when result.Exception is StoreFullException => ExitCodes.StoreFull,
            UpdateOutcome.RolledBack when result.Exception is ImageStoreLockedException => ExitCodes.StoreLocked,
            UpdateOutcome.RolledBack when CausedBy<CriuTimeoutException>(result.Exception) => ExitCodes.CriuTimedOut,
            UpdateOutcome.RolledBack => ExitCodes.Failed,
            _ => ExitCodes.NeedsAttention,
        };
    }

    /// <summary>True when <paramref name="e"/> or any exception it wraps (inner, or one of an aggregate's) is a <typeparamref name="T"/>.</summary>
    internal static bool CausedBy<T>(Exception? e) where T : Exception => e switch
    {
        null => false,
        T => true,
        AggregateException all => all.InnerExceptions.Any(CausedBy<T>),
        _ => CausedBy<T>(e.InnerException),
    };

    private static CriuClient Criu(ParseResult p) => new(new CriuClientOptions
    {
        CriuPath = p.GetValue(CriuPath) ?? "criu",
        RequestTimeout = ParseCriuTimeout(p.GetValue(CriuTimeout)) ?? CriuClientOptions.DefaultRequestTimeout,
    });

    /// <summary>
    /// Checks the options every command shares before any command runs (System.CommandLine's own
    /// parse errors print the help and exit 1; bad input here gets one line and <see cref="ExitCodes.Usage"/>).
    /// </summary>
    public static int? ValidateGlobalOptions(ParseResult p)
    {
        if (p.GetValue(CriuTimeout) is { } text && ParseCriuTimeout(text) is null)
        {
            return Fail((ExitCodes.Usage, $"--criu-timeout '{text}' is not a whole number of seconds from 1 to {MaxCriuTimeoutSeconds}; "
                + $"give the time criu may spend on one request (default {(int)CriuClientOptions.DefaultRequestTimeout.TotalSeconds})."));
        }

        return null;
    }

    private const int MaxCriuTimeoutSeconds = 24 * 24 * 3600;

    private static TimeSpan? ParseCriuTimeout(string? text) =>
        int.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var seconds) && seconds is > 0 and <= MaxCriuTimeoutSeconds
            ? TimeSpan.FromSeconds(seconds)
            : null;

    private static int Code(ReadinessProblem problem) => problem switch
    {
        ReadinessProblem.NotRoot => ExitCodes.NotRoot,
        ReadinessProblem.CriuMissing => ExitCodes.CriuMissing,
        ReadinessProblem.CriuTooOld => ExitCodes.CriuTooOld,
        ReadinessProblem.CriuUnusable => ExitCodes.CriuUnusable,
        ReadinessProblem.KexecUnavailable => ExitCodes.KexecUnavailable,
        _ => ExitCodes.BadStore,
    };

    private static int Fail((int Code, string Message) error)
    {
        Console.Error.WriteLine("rebootless: " + error.Message);
        return error.Code;
    }

    private static void WriteJson<T>(T value, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> info) =>
        Console.WriteLine(JsonSerializer.Serialize(value, info));
}

internal sealed record CheckLine(string Name, bool Ok, string Detail);

internal sealed record CheckOutput(bool Ready, string? CriuVersion, IReadOnlyList<CheckLine> Checks);

internal sealed record PlanTarget(string Target, int RootPid, int Processes, bool ShellJob, string? FreezeCgroup);

internal sealed record PlanOutput(IReadOnlyList<PlanTarget> Targets, int Processes, long MemoryBytes, long RequiredBytes, long FreeBytes, bool Fits, string Store);

internal sealed record SetLine(string SetId, bool Sealed, DateTimeOffset CreatedAt, long? TotalBytes)
{
    public string? Problem { get; init; }
}

/// <summary>One journal in `status`: its record, or why it cannot be read; <c>Advice</c> when it needs an operator.</summary>
internal sealed record StatusLine(string SetId, bool Readable, bool Unfinished, string? Problem, string? Advice, JournalRecord? Journal);

internal sealed record VerifyOutput(string SetId, bool Intact, long BytesHashed, IReadOnlyList<string> Issues);

[JsonSourceGenerationOptions(WriteIndented = true, PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase, UseStringEnumConverter = true,
    DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(CheckOutput))]
[JsonSerializable(typeof(PlanOutput))]
[JsonSerializable(typeof(List<SetLine>))]
[JsonSerializable(typeof(SetLine))]
[JsonSerializable(typeof(VerifyOutput))]
[JsonSerializable(typeof(List<StatusLine>))]
internal sealed partial class CliJson : JsonSerializerContext;
