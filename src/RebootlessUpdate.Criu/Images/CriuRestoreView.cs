using System.Globalization;

namespace RebootlessUpdate.Criu;

/// <summary>
/// A folder CRIU restores from lazily (<c>-D</c> of both <c>criu restore</c> and <c>criu lazy-pages --page-server</c>)
/// in which the final dump's parent pages are lazy: copies of the dump's small images, its pages images by symbolic
/// link, a <c>parent</c> link to its original pre-dump, and each process's pagemap rewritten by
/// <see cref="CriuLazyParentRewrite"/>. The dump's own folder stays as it was: a full restore, and the page server
/// (which resolves PE_PARENT through the chain itself), read the originals.
/// </summary>
/// <remarks>
/// Memo 16 §3.4. Only for a lazy restore whose daemon fetches from our page server: a full restore or a local daemon
/// reading this folder would get wrong bytes for the pages made lazy, without any error.
/// </remarks>
/// <param name="Directory">The view's folder, what CRIU gets as <c>-D</c>.</param>
/// <param name="ImagesDirectory">The dump's own images folder (full path), which the view's pages images lead to.</param>
/// <param name="ParentDirectory">The dump's pre-dump folder (full path), the target of the view's <c>parent</c> link.</param>
/// <param name="PagesMadeLazy">Parent pages the view leaves to the lazy-pages daemon, over every process.</param>
/// <param name="PagesLeftInParent">Parent pages still PE_PARENT (outside lazy-capable VMAs): CRIU's restore reads them itself.</param>
internal sealed record CriuRestoreView(string Directory, string ImagesDirectory, string ParentDirectory, long PagesMadeLazy, long PagesLeftInParent)
{
    /// <summary>
    /// Builds the view of the dump in <paramref name="imagesDirectory"/>, which must have a <c>parent</c> link, in
    /// <paramref name="viewDirectory"/> (emptied first; it must not lie inside the dump's folder).
    /// </summary>
    /// <exception cref="InvalidOperationException">The dump has no parent link, or the view would lie inside it.</exception>
    /// <exception cref="InvalidDataException">A pagemap or mm image cannot be read, or the folder holds something a dump does not.</exception>
    /// <exception cref="IOException">A file cannot be copied, linked or written.</exception>
    public static CriuRestoreView Build(string imagesDirectory, string viewDirectory)
    {
        var images = Path.TrimEndingDirectorySeparator(Path.GetFullPath(imagesDirectory));
        var view = Path.TrimEndingDirectorySeparator(Path.GetFullPath(viewDirectory));
        if (view == images || view.StartsWith(images + "/", StringComparison.Ordinal))
        {
            throw new InvalidOperationException($"the restore view {view} would lie inside the dump {images}, which stays as sealed");
        }

        var link = Path.Combine(images, "parent");
        if (!System.IO.Directory.Exists(link))
        {
            throw new InvalidOperationException($"{images} has no parent link (or it leads nowhere): there are no parent pages to make lazy");
        }

        // The link's own target, made absolute: the view lives elsewhere, so a relative "../X-pre" would lead nowhere.
        var parent = Path.GetFullPath(System.IO.Directory.ResolveLinkTarget(link, returnFinalTarget: true)?.FullName ?? link);
        if (System.IO.Directory.Exists(view))
        {
            System.IO.Directory.Delete(view, recursive: true); // a link inside is removed, never followed
        }

        System.IO.Directory.CreateDirectory(view, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        long lazy = 0, kept = 0;
        foreach (var entry in new DirectoryInfo(images).EnumerateFileSystemInfos())
        {
            var name = entry.Name;
            var target = Path.Combine(view, name);
            if (name == "parent")
            {
                continue;
            }

            if (entry is DirectoryInfo)
            {
                throw new InvalidDataException($"{entry.FullName}: a dump's images folder holds no folder but its parent link");
            }

            if (name.StartsWith("pages-", StringComparison.Ordinal))
            {
                // CRIU opens pages images by name relative to -D (openat follows the link); their bytes stay where sealed.
                File.CreateSymbolicLink(target, entry.FullName);
            }
            else if (ProcessOf(name) is { } pid)
            {
                var (made, left) = RewritePagemap(images, pid, target);
                lazy += made;
                kept += left;
            }
            else
            {
                // Copied, not linked: whatever CRIU may write into -D never reaches the sealed originals.
                File.Copy(entry.FullName, target);
            }
        }

        File.CreateSymbolicLink(Path.Combine(view, "parent"), parent);
        return new CriuRestoreView(view, images, parent, lazy, kept);
    }

    /// <summary>The pid of a process's pagemap image (<c>pagemap-PID.img</c>); null for any other file (shared memory's included).</summary>
    private static int? ProcessOf(string name) =>
        name.StartsWith("pagemap-", StringComparison.Ordinal) && name.EndsWith(".img", StringComparison.Ordinal)
        && int.TryParse(name["pagemap-".Length..^".img".Length], NumberStyles.None, CultureInfo.InvariantCulture, out var pid) ? pid : null;

    private static (long Made, long Left) RewritePagemap(string images, int pid, string target)
    {
        var pagemap = CriuPagemap.Read(images, pid);
        if (!pagemap.Entries.Any(e => e.Flags == CriuPageState.Parent))
        {
            File.Copy(pagemap.Path, target);
            return (0, 0);
        }

        var rewrite = CriuLazyParentRewrite.Rewrite(pagemap.Entries, CriuVmas.Read(images, pid));
        using var file = new FileStream(target, FileMode.CreateNew, FileAccess.Write);
        CriuPagemap.Write(file, pagemap.PagesId, rewrite.Entries, pagemap.WideCounts);
        return (rewrite.PagesMadeLazy, rewrite.PagesLeftInParent);
    }
}
