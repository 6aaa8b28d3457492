using System.Buffers.Binary;
using System.Text;

namespace RebootlessUpdate.Kexec;

/// <summary>
/// An x86 bzImage kernel, identified by its setup header (the Linux/x86 boot
/// protocol, Documentation/arch/x86/boot.rst): the "HdrS" magic, the boot
/// protocol version and the kernel's version string. Created by <see cref="Probe"/>,
/// which refuses anything that is not such a kernel.
/// </summary>
public sealed class KernelImage
{
    // Offsets in the file (the setup header starts at 0x1F1).
    private const int SetupSectsOffset = 0x1F1;
    private const int BootFlagOffset = 0x1FE;
    private const int HeaderMagicOffset = 0x202;
    private const int ProtocolOffset = 0x206;
    private const int KernelVersionOffset = 0x20E;
    private const int LoadFlagsOffset = 0x211;
    private const int XLoadFlagsOffset = 0x236;
    private const int CmdlineSizeOffset = 0x238;
    private const int HeaderEnd = 0x250;
    private const ushort BootFlag = 0xAA55;
    private const uint HeaderMagic = 0x53726448; // "HdrS" little-endian
    private const int MaxReadBytes = 128 * 1024;
    private const int MaxVersionLength = 512;

    private KernelImage(string path, string version, Version protocol, int maxCommandLineBytes, bool supportsKexecFileLoad)
    {
        Path = path;
        Version = version;
        BootProtocol = protocol;
        MaxCommandLineBytes = maxCommandLineBytes;
        SupportsKexecFileLoad = supportsKexecFileLoad;
    }

    /// <summary>The image's path, as given to <see cref="Probe"/>.</summary>
    public string Path { get; }

    /// <summary>The kernel's full version string, e.g. <c>6.12.117+deb13-amd64 (debian-kernel@…) #1 SMP …</c>.</summary>
    public string Version { get; }

    /// <summary>The kernel release (the first word of <see cref="Version"/>): what <c>uname -r</c> prints once it runs.</summary>
    public string Release => Version.Split(' ', 2)[0];

    /// <summary>The boot protocol version of the setup header (e.g. 2.15).</summary>
    public Version BootProtocol { get; }

    /// <summary>
    /// The longest command line this kernel accepts in bytes, including the
    /// terminating NUL (the header's <c>cmdline_size</c> + 1; 256 before protocol 2.06).
    /// </summary>
    public int MaxCommandLineBytes { get; }

    /// <summary>
    /// True when the header says x86-64 <c>kexec_file_load</c> can load this image
    /// (protocol 2.12 or later, a 64-bit entry point, loadable above 4 GiB; the checks of the kernel's bzImage64 loader).
    /// </summary>
    public bool SupportsKexecFileLoad { get; }

    /// <summary>Reads and checks the setup header of <paramref name="path"/>.</summary>
    /// <exception cref="KexecException">
    /// <see cref="KexecFailureReason.FileNotFound"/> when it cannot be read;
    /// <see cref="KexecFailureReason.NotAKernel"/> when it is not a bzImage kernel.
    /// </exception>
    public static KernelImage Probe(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        byte[] head;
        long size;
        try
        {
            using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1, FileOptions.None);
            size = stream.Length;
            head = new byte[(int)Math.Min(size, MaxReadBytes)];
            stream.ReadExactly(head);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new KexecException(KexecFailureReason.FileNotFound, $"cannot read the kernel image '{path}': {e.Message}", 0, e);
        }

        string Refuse(string why) => $"'{path}' is not a kernel image that kexec can load: {why}. Give the path of an x86 bzImage such as /boot/vmlinuz-<release>.";

        if (size < HeaderEnd)
        {
            throw new KexecException(KexecFailureReason.NotAKernel,
                Refuse(size == 0 ? "the file is empty" : $"it is only {size} bytes, too short for a boot setup header (needs {HeaderEnd})"));
        }

        if (BinaryPrimitives.ReadUInt32LittleEndian(head.AsSpan(HeaderMagicOffset)) != HeaderMagic)
        {
            var what = head.AsSpan(0, 4).SequenceEqual("\u007fELF"u8)
                ? "it is an ELF file (a program, or an uncompressed vmlinux), not a bzImage: there is no \"HdrS\" setup header at offset 0x202"
                : "there is no \"HdrS\" setup header magic at offset 0x202";
            throw new KexecException(KexecFailureReason.NotAKernel, Refuse(what));
        }

        if (BinaryPrimitives.ReadUInt16LittleEndian(head.AsSpan(BootFlagOffset)) != BootFlag)
        {
            throw new KexecException(KexecFailureReason.NotAKernel, Refuse("the boot sector signature 0xAA55 at offset 0x1FE is missing"));
        }

        var rawProtocol = BinaryPrimitives.ReadUInt16LittleEndian(head.AsSpan(ProtocolOffset));
        var protocol = new Version(rawProtocol >> 8, rawProtocol & 0xFF);
        if (protocol < new Version(2, 0))
        {
            throw new KexecException(KexecFailureReason.NotAKernel, Refuse($"boot protocol {protocol} is not a valid version"));
        }

        var versionPointer = BinaryPrimitives.ReadUInt16LittleEndian(head.AsSpan(KernelVersionOffset));
        var setupSects = head[SetupSectsOffset] == 0 ? 4 : head[SetupSectsOffset];
        var setupEnd = (setupSects + 1) * 512;
        var versionOffset = versionPointer + 0x200;
        if (versionPointer == 0 || versionOffset >= Math.Min(setupEnd, head.Length))
        {
            throw new KexecException(KexecFailureReason.NotAKernel,
                Refuse(versionPointer == 0
                    ? "the setup header has no kernel version string"
                    : $"its version string (offset 0x{versionOffset:X}) lies outside the {Math.Min(setupEnd, head.Length)} bytes of setup code in the file (a truncated or damaged image)"));
        }

        var end = Array.IndexOf(head, (byte)0, versionOffset, Math.Min(MaxVersionLength, head.Length - versionOffset));
        var versionBytes = end < 0 ? ReadOnlySpan<byte>.Empty : head.AsSpan(versionOffset, end - versionOffset);
        if (versionBytes.IsEmpty || versionBytes.ContainsAnyExceptInRange((byte)0x20, (byte)0x7E))
        {
            throw new KexecException(KexecFailureReason.NotAKernel, Refuse("the kernel version string in the setup header is empty or unreadable (a damaged image)"));
        }

        var kern16 = (long)setupEnd;
        if (size <= kern16)
        {
            throw new KexecException(KexecFailureReason.NotAKernel,
                Refuse($"the file ends ({size} bytes) before the compressed kernel that follows {kern16} bytes of setup code (a truncated image)"));
        }

        var version = Encoding.ASCII.GetString(versionBytes);
        var maxCmdline = protocol >= new Version(2, 6)
            ? (int)Math.Min(BinaryPrimitives.ReadUInt32LittleEndian(head.AsSpan(CmdlineSizeOffset)) + 1L, int.MaxValue)
            : 256;
        var loadedHigh = (head[LoadFlagsOffset] & 0x01) != 0;
        var xloadflags = protocol >= new Version(2, 12) ? BinaryPrimitives.ReadUInt16LittleEndian(head.AsSpan(XLoadFlagsOffset)) : 0;
        var fileLoad = loadedHigh && (xloadflags & 0x03) == 0x03; // XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G
        return new KernelImage(path, version, protocol, maxCmdline, fileLoad);
    }

    /// <summary>
    /// Finds the initrd that belongs to kernel <paramref name="release"/> in
    /// <paramref name="bootDirectory"/>: <c>rebootless-initrd-RELEASE.img</c> (the testbed's),
    /// then Debian's <c>initrd.img-RELEASE</c>, then <c>initramfs-RELEASE.img</c>. Null when none exists.
    /// </summary>
    public static string? FindInitrd(string release, string bootDirectory = "/boot")
    {
        ArgumentException.ThrowIfNullOrEmpty(release);
        ArgumentException.ThrowIfNullOrEmpty(bootDirectory);
        string[] names = [$"rebootless-initrd-{release}.img", $"initrd.img-{release}", $"initramfs-{release}.img"];
        return names.Select(n => System.IO.Path.Combine(bootDirectory, n)).FirstOrDefault(File.Exists);
    }

    /// <summary>
    /// The initrd of this kernel (<see cref="FindInitrd(string, string)"/> with
    /// <see cref="Release"/>), looked up next to the image unless <paramref name="bootDirectory"/> is given.
    /// </summary>
    /// <exception cref="KexecException"><see cref="KexecFailureReason.FileNotFound"/> when there is none.</exception>
    public string FindInitrd(string? bootDirectory = null)
    {
        var dir = bootDirectory ?? System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(Path)) ?? "/boot";
        return FindInitrd(Release, dir) ?? throw new KexecException(KexecFailureReason.FileNotFound,
            $"no initrd for kernel {Release} in {dir} (looked for rebootless-initrd-{Release}.img, initrd.img-{Release}, initramfs-{Release}.img); " +
            "give the initrd path explicitly, or load without an initrd if the kernel does not need one");
    }

    /// <summary>The path and version, for reports.</summary>
    public override string ToString() => $"{Path}: Linux {Version} (boot protocol {BootProtocol})";
}
