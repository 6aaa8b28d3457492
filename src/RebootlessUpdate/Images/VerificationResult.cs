using System.Text;

namespace RebootlessUpdate.Images;

/// <summary>How thoroughly a set is verified.</summary>
public enum VerificationMode
{
    /// <summary>Re-hash every file and compare with the manifest (the default; needed before a restore).</summary>
    Full = 0,

    /// <summary>Check presence, type and size only (fast; does not see changed bytes).</summary>
    Quick = 1,
}

/// <summary>What a verification found wrong.</summary>
public enum VerificationIssueKind
{
    /// <summary>The set has no manifest: it was never sealed (or sealing did not finish). Never restorable.</summary>
    NotSealed,

    /// <summary>The manifest cannot be read or trusted (not JSON, cut off, altered, unknown version).</summary>
    ManifestCorrupt,

    /// <summary>The set was sealed on another host (machine id differs) and the caller did not allow that.</summary>
    ForeignHost,

    /// <summary>A file's content differs from its recorded hash (same size).</summary>
    ContentChanged,

    /// <summary>A file is shorter than recorded.</summary>
    Truncated,

    /// <summary>A file is longer than recorded.</summary>
    Grown,

    /// <summary>A recorded file is gone.</summary>
    Missing,

    /// <summary>A file is present that the manifest does not list.</summary>
    Extra,

    /// <summary>A recorded file is gone and an unlisted file with its exact content is present: it was renamed.</summary>
    Renamed,

    /// <summary>An entry is no longer what was recorded (e.g. a file replaced by a folder or a link, a link retargeted).</summary>
    TypeChanged,

    /// <summary>A path leads out of the set (<c>..</c>, absolute, or through a symbolic link).</summary>
    PathEscape,

    /// <summary>A file could not be read.</summary>
    Unreadable,

    /// <summary>
    /// The set was sealed (it carries the seal mark) but its manifest is gone: deleted or lost.
    /// Nothing vouches for its images any more; never restorable, never taken for a set that was not sealed.
    /// </summary>
    ManifestMissing,

    /// <summary>The images folder, or a folder in it, is a symbolic link, belongs to another user or is writable by others.</summary>
    UntrustedFolder,

    /// <summary>
    /// The manifest records a symbolic link other than CRIU's <c>parent</c> link of an iterative dump
    /// (a link is never hashed, so the manifest cannot vouch for what it points to).
    /// </summary>
    UnsafeEntry,

    /// <summary>
    /// The store has a manifest key and the manifest's keyed hash (in the seal mark) is missing or
    /// wrong, or the key cannot be read: the manifest may have been rewritten by someone without the key.
    /// </summary>
    ManifestUnauthenticated,

    /// <summary>
    /// An image file belongs to another user or its group or others may write it: someone other than us could change it
    /// between the check and CRIU reading it, so its matching hash vouches for nothing.
    /// </summary>
    UntrustedFile,
}

/// <summary>One mismatch found by a verification.</summary>
/// <param name="Kind">What is wrong.</param>
/// <param name="Path">The file (relative to the images folder) or, for manifest problems, the manifest file.</param>
/// <param name="Detail">A sentence saying what was expected and what was found.</param>
/// <param name="RenamedTo">For <see cref="VerificationIssueKind.Renamed"/>: the file's new path.</param>
public sealed record VerificationIssue(VerificationIssueKind Kind, string Path, string Detail, string? RenamedTo = null)
{
    /// <inheritdoc />
    public override string ToString() => $"{Kind}: {Path}: {Detail}";
}

/// <summary>
/// The outcome of verifying a checkpoint set: every mismatch, not just the
/// first, so an operator sees the whole damage at once.
/// </summary>
public sealed class VerificationResult
{
    internal VerificationResult(string setId, string imagesDirectory, VerificationMode mode, CheckpointManifest? manifest,
        IReadOnlyList<VerificationIssue> issues, long bytesHashed)
    {
        SetId = setId;
        ImagesDirectory = imagesDirectory;
        Mode = mode;
        Manifest = manifest;
        Issues = issues;
        BytesHashed = bytesHashed;
    }

    /// <summary>The set verified.</summary>
    public string SetId { get; }

    /// <summary>Where the set's images are.</summary>
    public string ImagesDirectory { get; }

    /// <summary>How it was verified.</summary>
    public VerificationMode Mode { get; }

    /// <summary>The manifest, when it could be read.</summary>
    public CheckpointManifest? Manifest { get; }

    /// <summary>Every mismatch found; empty when the set is intact.</summary>
    public IReadOnlyList<VerificationIssue> Issues { get; }

    /// <summary>Bytes read and hashed.</summary>
    public long BytesHashed { get; }

    /// <summary>True when nothing is wrong.</summary>
    public bool IsValid => Issues.Count == 0;

    /// <summary>One message listing every issue.</summary>
    public string Describe()
    {
        if (IsValid)
        {
            return $"checkpoint set {SetId} verified ({Mode}): {Manifest?.Files.Count ?? 0} files intact";
        }

        var sb = new StringBuilder();
        sb.Append("checkpoint set ").Append(SetId).Append(" failed verification (").Append(Mode).Append("), ")
          .Append(Issues.Count).Append(Issues.Count == 1 ? " problem:" : " problems:");
        foreach (var issue in Issues)
        {
            sb.Append("\n  ").Append(issue);
        }

        return sb.ToString();
    }

    /// <inheritdoc />
    public override string ToString() => Describe();
}
