using System.Security.Cryptography;
using System.Text;
using Mono.Unix.Native;
using RebootlessUpdate.Images.Interop;

namespace RebootlessUpdate.Images;

/// <summary>
/// The keyed manifest hash: an HMAC-SHA256 of the manifest file's exact bytes, keyed with a
/// root-only key kept outside the store and written into the set's seal mark. The manifest's
/// own body hash only catches damage; with the key, rewriting a manifest (to vouch for changed
/// images) needs the key, not only write access to the set.
/// </summary>
internal sealed class ManifestKey(string path)
{
    private const int KeyBytes = 32;
    private const string Scheme = "hmac-sha256";

    /// <summary>The key file.</summary>
    internal string Path { get; } = path;

    /// <summary>
    /// The key's bytes; when <paramref name="create"/> and it does not exist, first makes it
    /// (32 random bytes, 0600, its folder 0700 when missing, the way to it checked like a store's).
    /// </summary>
    /// <exception cref="ImageStoreException">The key is missing, not a 0600 regular file of ours, or not 32 bytes.</exception>
    internal byte[] Load(bool create)
    {
        if (create && StoreFiles.TypeOf(Path) is null)
        {
            Create();
        }

        try
        {
            using var handle = StoreFiles.OpenRegular(Path);
            if (Syscall.fstat((int)handle.DangerousGetHandle(), out var st) != 0 || st.st_uid != Syscall.geteuid()
                || (st.st_mode & (FilePermissions.S_IRWXG | FilePermissions.S_IRWXO)) != 0)
            {
                throw new ImageStoreException($"the manifest key {Path} must be a 0600 file of uid {Syscall.geteuid()} (it is uid {st.st_uid}, mode {Convert.ToString((int)(st.st_mode & FilePermissions.ALLPERMS), 8)}); anyone who can read it can forge manifests: replace it and re-seal");
            }

            var key = new byte[KeyBytes + 1];
            var n = RandomAccess.Read(handle, key, 0);
            return n == KeyBytes
                ? key[..KeyBytes]
                : throw new ImageStoreException($"the manifest key {Path} holds {(n > KeyBytes ? "more" : n.ToString(System.Globalization.CultureInfo.InvariantCulture))} bytes, not {KeyBytes}: it is not a key rebootless made");
        }
        catch (IOException e)
        {
            throw new ImageStoreException($"the manifest key {Path} cannot be used: {e.Message}", e);
        }
    }

    private void Create()
    {
        var folder = System.IO.Path.GetDirectoryName(Path)!;
        StoreFiles.CheckStorePath(folder);
        if (StoreFiles.TypeOf(folder) is null)
        {
            Directory.CreateDirectory(folder, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            StoreFiles.CheckStorePath(folder);
        }

        using (var handle = Libc.Open(Path, Libc.OWrOnly | Libc.OCreat | Libc.OExcl | Libc.ONoFollow, Libc.Mode0600))
        {
            RandomAccess.Write(handle, RandomNumberGenerator.GetBytes(KeyBytes), 0);
            Libc.FsyncOrThrow(handle, Path);
        }

        Libc.FsyncDirectory(folder);
    }

    /// <summary>The seal mark's content for <paramref name="manifest"/>: <c>hmac-sha256 HEX</c>.</summary>
    internal static byte[] Mark(byte[] key, byte[] manifest) =>
        Encoding.ASCII.GetBytes($"{Scheme} {Convert.ToHexStringLower(HMACSHA256.HashData(key, manifest))}\n");

    /// <summary>True when the seal mark holds a keyed hash (the set was sealed with a key).</summary>
    internal static bool IsKeyedMark(byte[] mark) => Encoding.ASCII.GetString(mark).TrimStart().StartsWith(Scheme + " ", StringComparison.Ordinal);

    /// <summary>Null when <paramref name="mark"/> holds the keyed hash of <paramref name="manifest"/>, else why not.</summary>
    internal static string? Check(byte[] key, byte[] manifest, byte[] mark)
    {
        var text = Encoding.ASCII.GetString(mark).Trim();
        if (!text.StartsWith(Scheme + " ", StringComparison.Ordinal))
        {
            return "the seal mark holds no keyed hash of the manifest (sealed without the key, or the mark was rewritten)";
        }

        byte[] recorded;
        try
        {
            recorded = Convert.FromHexString(text[(Scheme.Length + 1)..]);
        }
        catch (FormatException)
        {
            return "the seal mark's keyed hash is not hex";
        }

        return CryptographicOperations.FixedTimeEquals(recorded, HMACSHA256.HashData(key, manifest))
            ? null
            : "the manifest's keyed hash does not match the one recorded at seal: the manifest was rewritten by someone without the key";
    }
}
