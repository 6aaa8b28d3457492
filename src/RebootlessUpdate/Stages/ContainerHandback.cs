using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Microsoft.Win32.SafeHandles;
using RebootlessUpdate.Images;
using RebootlessUpdate.Images.Interop;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Targets;

namespace RebootlessUpdate.Stages;

/// <summary>
/// A runc container target's state in runc across its checkpoint. runc keeps what it knows of a container in
/// <c>ROOT/ID/state.json</c> (ROOT is <c>/run/runc</c>, a tmpfs the jump loses) and judges it running while the process
/// named there, with its start time, lives. Before the dump that file is copied into the target's images, so the seal
/// covers it; once CRIU has restored the tree it is written back naming the restored init, and runc knows the
/// container again (<c>runc state</c>, <c>kill</c>, <c>delete</c>). Before a restore, a container of that id that runc
/// runs again, or another container under that id, stops it: never two copies, and never someone else's state
/// overwritten. Targets that are no runc container are left alone.
/// </summary>
internal static partial class ContainerHandback
{
    /// <summary>The copy of runc's state in a target's images folder.</summary>
    internal const string StateFile = "runc-state.json";

    /// <summary>runc's own name of the state in a container's folder.</summary>
    private const string StateFileName = "state.json";

    /// <summary>The most a runc state file may hold (one container's config: a few KiB).</summary>
    private const long MaxStateBytes = 4 << 20;

    /// <summary>runc's own rule for container ids: a name that is one path component, never "." or "..".</summary>
    [GeneratedRegex("^[A-Za-z0-9_+.-]+$")]
    private static partial Regex IdPattern();

    /// <summary>
    /// Before the dump: copies runc's state of the container into <paramref name="imagesDirectory"/>. Throws, naming
    /// what is wrong, when runc's state is missing, is not a plain file, or names another process than the tree's
    /// root: then nothing was frozen.
    /// </summary>
    internal static void Capture(TargetRun t, string imagesDirectory)
    {
        if (t.Settings?.Container is not { } container || t.Resolved is not { } resolved)
        {
            return;
        }

        var path = StatePath(container);
        JsonObject state;
        int pid;
        try
        {
            state = Parse(StoreFiles.ReadRegular(path, MaxStateBytes, ownOnly: true), path);
            pid = Pid(state);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new TargetNotFoundException(t.Target.Id, $"runc's state of the container cannot be kept ({e.Message}); nothing was frozen.");
        }

        if (pid != resolved.RootPid)
        {
            throw new TargetNotFoundException(t.Target.Id, $"runc's state ({path}) names process {pid}, not the container's init {resolved.RootPid}; nothing was frozen.");
        }

        StoreFiles.WriteAtomically(Path.Combine(imagesDirectory, StateFile), Encoding.UTF8.GetBytes(state.ToJsonString()), syncDirectory: false);
    }

    /// <summary>
    /// Before every restore: the container's id in runc must be free, or hold this container's own state with nothing
    /// running (a rehearsal, on the kernel it was dumped on).
    /// </summary>
    /// <exception cref="InvalidOperationException">runc runs a container of that id again, or holds another one under it.</exception>
    internal static void CheckFree(TargetRun t, string imagesDirectory)
    {
        if (t.Settings?.Container is not { } container)
        {
            return;
        }

        try
        {
            CheckFree(container, imagesDirectory);
        }
        catch (Exception e) when (e is IOException or ArgumentException)
        {
            // (ArgumentException: a JSON object with a duplicate key, on its first read.)
            throw new InvalidOperationException($"runc's state of container {container.Id} cannot be checked ({e.Message}): the container is not restored, its images are kept", e);
        }
    }

    private static void CheckFree(ContainerRuntime container, string imagesDirectory)
    {
        var kept = Kept(container, imagesDirectory);
        var folder = Path.Combine(container.StateRoot, container.Id);
        var type = StoreFiles.TypeOf(folder);
        if (type is null)
        {
            return;
        }

        var delete = $"runc --root {container.StateRoot} delete {container.Id}";
        if (type != Mono.Unix.Native.FilePermissions.S_IFDIR)
        {
            throw new InvalidOperationException($"runc's state folder {folder} is a {StoreFiles.Describe(type.Value)}, not a folder: the container is not restored, "
                + $"its images are kept; remove it and run rebootless resume");
        }

        var path = StatePath(container);
        if (StoreFiles.TypeOf(path) is null)
        {
            return; // a folder runc left without state (a create that failed): runc itself takes it as no container
        }

        JsonObject there;
        try
        {
            there = Parse(StoreFiles.ReadRegular(path, MaxStateBytes), path);
        }
        catch (IOException e)
        {
            throw new InvalidOperationException($"runc holds something under the container's id that cannot be read ({e.Message}): the container is not restored, "
                + $"its images are kept; look at it, remove it ({delete}) and run rebootless resume");
        }

        if (Alive(there) is { } running)
        {
            throw new InvalidOperationException($"runc runs a container {container.Id} again (init pid {running}) while the checkpointed one is down: restoring it "
                + $"next to it would make two copies, so it is not restored; its images are kept. Stop that one (runc --root {container.StateRoot} kill {container.Id} KILL; "
                + $"{delete}) and run rebootless resume to restore the checkpoint instead");
        }

        if (Created(there) != Created(kept))
        {
            throw new InvalidOperationException($"runc holds another container under the id {container.Id} (created {Created(there)}, the checkpointed one "
                + $"{Created(kept)}): the container is not restored, its images are kept; remove that one ({delete}) and run rebootless resume");
        }
    }

    /// <summary>
    /// After a restore, once it is journaled: systemd holds the restored tree in its scope again and runc knows the
    /// container again (see <see cref="ScopeHandback"/>). Never throws; safe to repeat. <paramref name="imagesDirectory"/>
    /// defaults to the folder the target was restored from.
    /// </summary>
    internal static void AfterRestore(UpdateContext context, TargetRun t, string? imagesDirectory = null)
    {
        if (t.Phase != TargetPhase.Restored || (t.Settings?.Scope is null && t.Settings?.Container is null))
        {
            return;
        }

        ScopeHandback.HandBack(context, t);
        HandBack(context, t, imagesDirectory ?? ImagesOf(context, t));
    }

    /// <summary>
    /// After a restore: runc's state names the restored init (its pid, start time and namespaces). Never throws: a
    /// state that cannot be written, or another container's that runc holds under the id by now, is reported, and the
    /// container runs on without runc knowing it. Safe to repeat.
    /// </summary>
    internal static void HandBack(UpdateContext context, TargetRun t, string imagesDirectory)
    {
        if (t.Settings?.Container is not { } container || t.Phase != TargetPhase.Restored || t.RestoredPid is not { } pid
            || context.Processes.IdentityOf(pid) is not { } root || (t.RestoredStartTime is { } started && root.StartTime != started))
        {
            return;
        }

        try
        {
            var state = Kept(container, imagesDirectory);
            if (Written(container) is { } there)
            {
                var running = Alive(there);
                if (running == root.Pid)
                {
                    return; // handed back already (a run's Report repeats it)
                }

                // Someone else's by now (a container started under the id while this one was restored): never overwritten.
                if (running is not null || Created(there) != Created(state))
                {
                    throw new InvalidOperationException($"runc holds another container under the id by now ({(running is { } p ? $"running as init pid {p}" : $"created {Created(there)}")}), left as it is");
                }
            }

            var old = Pid(state);
            state["init_process_pid"] = root.Pid;
            state["init_process_start"] = root.StartTime;
            if (state["namespace_paths"] is JsonObject namespaces)
            {
                var from = $"/proc/{old.ToString(CultureInfo.InvariantCulture)}/";
                var to = $"/proc/{root.Pid.ToString(CultureInfo.InvariantCulture)}/";
                foreach (var (name, value) in namespaces.ToList())
                {
                    if (value?.GetValueKind() == JsonValueKind.String && value.GetValue<string>() is { } p && p.StartsWith(from, StringComparison.Ordinal))
                    {
                        namespaces[name] = to + p[from.Length..];
                    }
                }
            }

            WriteState(container, state);
            PipelineLog.TargetEvent(context.Logger, t.Target.Id, $"handed back to runc: container {container.Id} runs as init pid {root.Pid}");
            context.ReportProgress("Restore", $"runc knows container {container.Id} again, running as init pid {root.Pid}", t.Target.Id);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            var why = $"runc does not know the restored container {container.Id} ({e.Message}): it runs as pid {root.Pid}, but runc state, kill and delete "
                + $"do not reach it; end it with kill {root.Pid} and start the container afresh";
            PipelineLog.TargetWarning(context.Logger, t.Target.Id, why);
            context.ReportProgress("Restore", why, t.Target.Id);
        }
    }

    /// <summary>The images folder a target was restored from: the verified set's after a jump, the target's own before.</summary>
    internal static string ImagesOf(UpdateContext context, TargetRun t) =>
        context.Restorable?.ImagesDirectory is { } root ? Path.Combine(root, t.Folder!) : t.ImagesDirectory!;

    private static string StatePath(ContainerRuntime container)
    {
        if (!IdPattern().IsMatch(container.Id) || container.Id is "." or ".." || !Path.IsPathFullyQualified(container.StateRoot))
        {
            throw new InvalidOperationException($"'{container.Id}' under '{container.StateRoot}' is no runc container id under an absolute state folder");
        }

        return Path.Combine(container.StateRoot, container.Id, StateFileName);
    }

    /// <summary>runc's state of the container as it is now, or null when there is none that can be read (the write then says why).</summary>
    private static JsonObject? Written(ContainerRuntime container)
    {
        try
        {
            var path = StatePath(container);
            return StoreFiles.TypeOf(path) == Mono.Unix.Native.FilePermissions.S_IFREG ? Parse(StoreFiles.ReadRegular(path, MaxStateBytes), path) : null;
        }
        catch (IOException)
        {
            return null;
        }
    }

    /// <summary>The state kept in the images (covered by the set's seal, verified before any restore).</summary>
    private static JsonObject Kept(ContainerRuntime container, string imagesDirectory)
    {
        var path = Path.Combine(imagesDirectory, StateFile);
        var state = Parse(StoreFiles.ReadRegular(path, MaxStateBytes, ownOnly: true), path);
        if (state["id"]?.GetValueKind() != JsonValueKind.String || state["id"]!.GetValue<string>() != container.Id)
        {
            throw new InvalidOperationException($"{path} is the state of another container than {container.Id}");
        }

        return state;
    }

    /// <summary>
    /// Writes runc's state folder and file as runc does (the folder 0711, the file 0600). The container's folder is
    /// opened once, never through a link, and the file is written and renamed inside that open folder (openat,
    /// renameat): a link swapped in for the folder after the check cannot carry the write elsewhere. The state root
    /// itself (<c>/run/runc</c>) is runc's, as root's as the folders above it, and is opened as runc opens it.
    /// </summary>
    private static void WriteState(ContainerRuntime container, JsonObject state)
    {
        var path = StatePath(container);
        if (StoreFiles.TypeOf(container.StateRoot) is null)
        {
            Directory.CreateDirectory(container.StateRoot, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }

        using var root = Libc.Open(container.StateRoot, Libc.ORdOnly | Libc.ODirectory);
        _ = Libc.MkdirAt(root, container.Id, Libc.Mode0711);
        SafeFileHandle folder;
        try
        {
            folder = Libc.OpenAt(root, container.Id, Libc.ORdOnly | Libc.ODirectory | Libc.ONoFollow);
        }
        catch (IOException e) when (e.HResult is Libc.ELoop or Libc.ENotDir)
        {
            throw new IOException($"{Path.GetDirectoryName(path)} is not a folder", e);
        }

        using (folder)
        {
            StoreFiles.WriteAtomicallyIn(folder, Path.GetDirectoryName(path)!, StateFileName, Encoding.UTF8.GetBytes(state.ToJsonString()));
        }
    }

    private static JsonObject Parse(byte[] bytes, string path)
    {
        try
        {
            return JsonNode.Parse(bytes) as JsonObject ?? throw new IOException($"{path} holds no JSON object");
        }
        catch (JsonException e)
        {
            throw new IOException($"{path} is not runc's state: {e.Message}", e);
        }
    }

    private static int Pid(JsonObject state) =>
        state["init_process_pid"] is JsonValue v && v.TryGetValue<int>(out var pid) ? pid : throw new IOException("runc's state names no init_process_pid");

    private static string? Created(JsonObject state) => state["created"]?.GetValueKind() == JsonValueKind.String ? state["created"]!.GetValue<string>() : null;

    /// <summary>The init pid of the container the state describes, when it runs (the pid with the recorded start time lives).</summary>
    private static int? Alive(JsonObject state) =>
        state["init_process_pid"] is JsonValue p && p.TryGetValue<int>(out var pid) && state["init_process_start"] is JsonValue s && s.TryGetValue<ulong>(out var start)
            && new ProcessIdentity(pid, start).IsAlive ? pid : null;
}
