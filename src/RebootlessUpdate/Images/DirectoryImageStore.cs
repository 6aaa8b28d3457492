using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace RebootlessUpdate.Images;

/// <summary>Options of a <see cref="DirectoryImageStore"/>. Immutable; validated when the store is opened.</summary>
public sealed record DirectoryImageStoreOptions
{
    /// <summary>The store's folder: created (0700) when missing; an existing one must be empty or already a store. Required.</summary>
    public required string RootDirectory { get; init; }

    /// <summary>Clock for creation and seal times (default <see cref="TimeProvider.System"/>).</summary>
    public TimeProvider TimeProvider { get; init; } = TimeProvider.System;

    /// <summary>File holding this host's id (default <c>/etc/machine-id</c>).</summary>
    public string MachineIdPath { get; init; } = "/etc/machine-id";

    /// <summary>Logger (default: none).</summary>
    public ILogger? Logger { get; init; }

    /// <summary>
    /// Opens the store only to look at it (list, verify, capacity): nothing is created, chmod'ed or
    /// written, and a missing folder reads as an empty store. Locking, creating, sealing and deleting
    /// sets throw <see cref="InvalidOperationException"/>. Default false.
    /// </summary>
    public bool ReadOnly { get; init; }

    /// <summary>
    /// A root-only key file outside the store (e.g. <c>/var/lib/rebootless/manifest.key</c>): when set,
    /// sealing writes an HMAC-SHA256 of the manifest into the set's seal mark, keyed with this file's
    /// 32 bytes (made 0600 on the first seal), and verification reports a set whose keyed hash is
    /// missing or wrong as <see cref="VerificationIssueKind.ManifestUnauthenticated"/>: rewriting a
    /// manifest then needs the key, not only write access to the set. The key must survive the kernel
    /// switch (keep it on the root file system). Default null: no keyed hash.
    /// </summary>
    public string? ManifestKeyPath { get; init; }
}

/// <summary>
/// An image store in any folder (disk, tmpfs): rehearsals, tests, and the
/// building block of the persistent stores. Does not survive kexec by itself
/// unless the folder lives on memory that does.
/// </summary>
public sealed class DirectoryImageStore : EngineBackedImageStore
{

    /// <summary>Opens (creating when missing, unless read-only) the store in <see cref="DirectoryImageStoreOptions.RootDirectory"/>.</summary>
    /// <exception cref="ImageStoreException">The folder is not empty and not a store, or belongs to another user.</exception>
    /// <exception cref="UnsafeStorePathException">A folder on the way to the store may be changed by others, or a link on the way belongs to another user.</exception>
    public DirectoryImageStore(DirectoryImageStoreOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentException.ThrowIfNullOrWhiteSpace(options.RootDirectory);
        ArgumentNullException.ThrowIfNull(options.TimeProvider);
        ArgumentException.ThrowIfNullOrWhiteSpace(options.MachineIdPath);
        Engine = new SetStoreEngine(this, options.RootDirectory, options.TimeProvider, options.MachineIdPath, options.Logger ?? NullLogger.Instance, options.ReadOnly, options.ManifestKeyPath);
    }
}
