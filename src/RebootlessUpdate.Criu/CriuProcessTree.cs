using RebootlessUpdate.Criu.Protocol;

namespace RebootlessUpdate.Criu;

/// <summary>One process of a dumped tree, as CRIU recorded it in <c>pstree.img</c>.</summary>
/// <param name="Pid">Its pid (in the dumped tree's own PID namespace when it had one).</param>
/// <param name="ParentPid">Its parent's pid; 0 for the tree's root.</param>
/// <param name="ProcessGroup">Its process group id.</param>
/// <param name="Session">Its session id.</param>
/// <param name="Threads">Every thread id, the leader's (equal to <paramref name="Pid"/>) first; empty for a zombie whose id CRIU recorded as garbage.</param>
public sealed record CriuProcessTreeEntry(int Pid, int ParentPid, int ProcessGroup, int Session, IReadOnlyList<int> Threads);

/// <summary>Reads the process tree of a dump (<c>pstree.img</c>): which ids a restore will ask the kernel for.</summary>
public static class CriuProcessTree
{
    /// <summary>The kernel's PID_MAX_LIMIT on 64-bit (include/linux/threads.h): no pid or thread id is larger.</summary>
    private const uint PidMaxLimit = 4 * 1024 * 1024;

    /// <summary>The first magic of CRIU's ordinary images.</summary>
    public const uint CommonImageMagic = CriuImageReader.CommonMagic;

    /// <summary>The magic of a process tree image.</summary>
    public const uint PstreeMagic = 0x50273030;

    /// <summary>The file name of the process tree image in an images folder.</summary>
    public const string FileName = "pstree.img";

    private const string Kind = "process tree";

    /// <summary>Reads <c>pstree.img</c> of <paramref name="imagesDirectory"/>; the tree's root comes first.</summary>
    /// <exception cref="FileNotFoundException">There is no process tree image.</exception>
    /// <exception cref="InvalidDataException">The file is not a readable process tree image.</exception>
    public static IReadOnlyList<CriuProcessTreeEntry> Read(string imagesDirectory)
    {
        ArgumentException.ThrowIfNullOrEmpty(imagesDirectory);
        using var image = CriuImageReader.Open(Path.Combine(imagesDirectory, FileName), Kind, PstreeMagic);
        return Parse(image);
    }

    internal static IReadOnlyList<CriuProcessTreeEntry> Parse(ReadOnlySpan<byte> bytes, string what)
    {
        using var image = new CriuImageReader(new MemoryStream(bytes.ToArray()), what, Kind, PstreeMagic);
        return Parse(image);
    }

    private static List<CriuProcessTreeEntry> Parse(CriuImageReader image)
    {
        var entries = new List<CriuProcessTreeEntry>();
        while (image.ReadNext(pstree_entry.Parser) is { } e)
        {
            entries.Add(ToEntry(e, image.Name, entries.Count));
        }

        if (entries.Count == 0 || entries[0].ParentPid != 0)
        {
            throw new InvalidDataException($"{image.Name}: the process tree image does not start with the tree's root");
        }

        return entries;
    }

    private static CriuProcessTreeEntry ToEntry(pstree_entry e, string what, int index)
    {
        // A zombie's thread id is garbage: CRIU fills in the ids it records through its parasite, which never runs in a
        // zombie (criu/seize.c collect_task sets only the real pid), and restores a zombie without threads. Such an id
        // (above any kernel's PID_MAX_LIMIT, or past int) is left out rather than failing the whole image.
        return new CriuProcessTreeEntry(Id(e.Pid), Id(e.Ppid), Id(e.Pgid), Id(e.Sid), [.. e.Threads.Where(t => t is > 0 and <= PidMaxLimit).Select(t => (int)t)]);

        int Id(uint id) => id <= int.MaxValue
            ? (int)id
            : throw new InvalidDataException($"{what}: process tree entry {index} holds the impossible id {id}");
    }
}
