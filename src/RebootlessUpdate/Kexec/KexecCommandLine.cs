using System.Text;

namespace RebootlessUpdate.Kexec;

/// <summary>
/// An immutable kernel command line: the kernel's parameters in order and,
/// after a <c>--</c>, the arguments that belong to init. Parse the running
/// kernel's line with <see cref="ReadCurrent"/>, derive the next kernel's line
/// with <see cref="ComposeNext"/> (or the <see cref="Set"/>/<see cref="Remove"/>
/// primitives) and pass <see cref="ToString"/> to the loader.
/// </summary>
public sealed class KexecCommandLine
{
    /// <summary>
    /// The default limit in bytes, including the terminating NUL: x86's
    /// <c>COMMAND_LINE_SIZE</c> (2048). Newer kernels and other architectures
    /// may accept more; <see cref="KernelImage.MaxCommandLineBytes"/> reads the
    /// target kernel's own limit from its header.
    /// </summary>
    public const int DefaultMaxBytes = 2048;

    /// <summary>
    /// Parameters that describe one boot only and must not reach the next
    /// kernel: the boot loader's <c>BOOT_IMAGE=</c>, <c>initrd=</c> (kexec
    /// passes the initrd itself), and this library's previous resume marker.
    /// </summary>
    public static IReadOnlyList<string> OneShotParameters { get; } = ["BOOT_IMAGE", "initrd", RebootlessInfo.ResumeParameter];

    private KexecCommandLine(IReadOnlyList<KernelParameter> parameters, bool hasInitSeparator, IReadOnlyList<string> initArguments)
    {
        Parameters = parameters;
        HasInitSeparator = hasInitSeparator;
        InitArguments = initArguments;
    }

    /// <summary>The kernel's parameters, in order (duplicates kept: the kernel sees every one).</summary>
    public IReadOnlyList<KernelParameter> Parameters { get; }

    /// <summary>True when the line has a <c>--</c> separating init's arguments.</summary>
    public bool HasInitSeparator { get; }

    /// <summary>The arguments after <c>--</c> (passed to init), exactly as written.</summary>
    public IReadOnlyList<string> InitArguments { get; }

    /// <summary>Length of <see cref="ToString"/> in UTF-8 bytes, without the terminating NUL.</summary>
    public int ByteCount => Encoding.UTF8.GetByteCount(ToString());

    /// <summary>Parses <paramref name="text"/> (e.g. the content of <c>/proc/cmdline</c>) with the kernel's quoting rules.</summary>
    public static KexecCommandLine Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var parameters = new List<KernelParameter>();
        var init = new List<string>();
        var separator = false;
        foreach (var token in Tokenize(text))
        {
            if (separator)
            {
                init.Add(token);
                continue;
            }

            var p = KernelParameter.FromToken(token);
            if (p is { Name: "--", Value: null })
            {
                separator = true; // the kernel stops parsing here: the rest is init's (init/main.c)
                continue;
            }

            parameters.Add(p);
        }

        return new KexecCommandLine(parameters, separator, init);
    }

    /// <summary>Reads and parses the running kernel's command line.</summary>
    /// <param name="path">The file to read; <c>/proc/cmdline</c> by default.</param>
    public static KexecCommandLine ReadCurrent(string path = "/proc/cmdline") => Parse(File.ReadAllText(path));

    /// <summary>
    /// Composes the next kernel's command line from <paramref name="current"/>:
    /// drops <see cref="OneShotParameters"/> and <see cref="NextCommandLineOptions.RemoveParameters"/>,
    /// puts the store's persistent-memory regions in place of the current ones, applies
    /// <see cref="NextCommandLineOptions.SetParameters"/>, adds the resume marker, keeps
    /// everything else in order (init's arguments stay after <c>--</c>) and checks the length.
    /// </summary>
    /// <exception cref="KexecException">
    /// <see cref="KexecFailureReason.CommandLineTooLong"/> or <see cref="KexecFailureReason.InvalidCommandLine"/>.
    /// </exception>
    public static KexecCommandLine ComposeNext(KexecCommandLine current, NextCommandLineOptions options)
    {
        ArgumentNullException.ThrowIfNull(current);
        ArgumentNullException.ThrowIfNull(options);
        var line = current;
        foreach (var name in OneShotParameters.Concat(options.RemoveParameters))
        {
            line = line.Remove(name);
        }

        if (options.PersistentMemoryRegions.Count > 0)
        {
            line = line.ReplacePersistentRegions(options.PersistentMemoryRegions);
        }

        foreach (var (name, value) in options.SetParameters)
        {
            line = line.Set(name, value);
        }

        if (options.ResumeSetId is { } setId)
        {
            line = line.Set(RebootlessInfo.ResumeParameter, setId);
        }

        return line.EnsureFits(options.MaxBytes);
    }

    /// <summary>True when a parameter named <paramref name="name"/> is present ('-' and '_' match each other).</summary>
    public bool Contains(string name) => Parameters.Any(p => p.HasName(name));

    /// <summary>
    /// The value of the last parameter named <paramref name="name"/> (for most
    /// parameters the kernel keeps the last one), or null when absent or valueless.
    /// </summary>
    public string? GetValue(string name) => Parameters.LastOrDefault(p => p.HasName(name))?.Value;

    /// <summary>A copy without any parameter named <paramref name="name"/>.</summary>
    public KexecCommandLine Remove(string name) =>
        new([.. Parameters.Where(p => !p.HasName(name))], HasInitSeparator, InitArguments);

    /// <summary>
    /// A copy where <paramref name="name"/> has exactly one occurrence with
    /// <paramref name="value"/>: the first existing one is replaced in place and
    /// later duplicates are dropped; when absent it is appended (before <c>--</c>).
    /// </summary>
    /// <exception cref="KexecException"><see cref="KexecFailureReason.InvalidCommandLine"/> for a name or value the kernel cannot carry.</exception>
    public KexecCommandLine Set(string name, string? value)
    {
        var parameter = KernelParameter.Create(name, value);
        var list = new List<KernelParameter>(Parameters.Count + 1);
        var placed = false;
        foreach (var p in Parameters)
        {
            if (!p.HasName(name))
            {
                list.Add(p);
            }
            else if (!placed)
            {
                list.Add(parameter);
                placed = true;
            }
        }

        if (!placed)
        {
            list.Add(parameter);
        }

        return new KexecCommandLine(list, HasInitSeparator, InitArguments);
    }

    /// <summary>A copy with <paramref name="name"/> appended even when it is already present (for repeatable parameters).</summary>
    /// <exception cref="KexecException"><see cref="KexecFailureReason.InvalidCommandLine"/> for a name or value the kernel cannot carry.</exception>
    public KexecCommandLine Add(string name, string? value) =>
        new([.. Parameters, KernelParameter.Create(name, value)], HasInitSeparator, InitArguments);

    /// <summary>Returns this line when it fits in <paramref name="maxBytes"/> (including the terminating NUL).</summary>
    /// <exception cref="KexecException"><see cref="KexecFailureReason.CommandLineTooLong"/>.</exception>
    public KexecCommandLine EnsureFits(int maxBytes = DefaultMaxBytes)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxBytes, 1);
        var bytes = ByteCount + 1;
        if (bytes > maxBytes)
        {
            throw new KexecException(KexecFailureReason.CommandLineTooLong,
                $"the next kernel's command line needs {bytes} bytes with its terminating NUL but the target kernel accepts at most {maxBytes}; " +
                "remove parameters the next kernel does not need (NextCommandLineOptions.RemoveParameters) or raise the limit if the target kernel allows more. " +
                $"Line starts: {Truncate(ToString(), 120)}");
        }

        return this;
    }

    /// <summary>The command line as the kernel receives it: parameters, then <c>--</c> and init's arguments, separated by single spaces.</summary>
    public override string ToString()
    {
        var sb = new StringBuilder();
        foreach (var p in Parameters)
        {
            Append(sb, p.Text);
        }

        if (HasInitSeparator)
        {
            Append(sb, "--");
            foreach (var a in InitArguments)
            {
                Append(sb, a);
            }
        }

        return sb.ToString();

        static void Append(StringBuilder sb, string token)
        {
            if (sb.Length > 0)
            {
                sb.Append(' ');
            }

            sb.Append(token);
        }
    }

    /// <summary>
    /// Drops every <c>memmap=</c> that declares a persistent-memory region (type
    /// 12, written <c>SIZE!START</c>) and puts <paramref name="regions"/> where the
    /// first of them was (or at the end). Other <c>memmap=</c> forms (<c>$</c>, <c>#</c>,
    /// <c>@</c>, exactmap) are kept: they are not the store's.
    /// </summary>
    private KexecCommandLine ReplacePersistentRegions(IReadOnlyList<string> regions)
    {
        var fresh = regions.Distinct(StringComparer.Ordinal).Select(r => KernelParameter.Create("memmap", r)).ToList();
        var list = new List<KernelParameter>();
        var placed = false;
        foreach (var p in Parameters)
        {
            if (p.HasName("memmap") && p.Value is { } v && v.Contains('!', StringComparison.Ordinal))
            {
                if (!placed)
                {
                    list.AddRange(fresh);
                    placed = true;
                }

                continue;
            }

            list.Add(p);
        }

        if (!placed)
        {
            list.AddRange(fresh);
        }

        return new KexecCommandLine(list, HasInitSeparator, InitArguments);
    }

    /// <summary>Splits like the kernel's <c>next_arg</c>: white space outside double quotes separates; quotes toggle.</summary>
    private static IEnumerable<string> Tokenize(string text)
    {
        var i = 0;
        while (true)
        {
            while (i < text.Length && IsSpace(text[i]))
            {
                i++;
            }

            if (i >= text.Length)
            {
                yield break;
            }

            var start = i;
            var inQuote = false;
            for (; i < text.Length; i++)
            {
                if (IsSpace(text[i]) && !inQuote)
                {
                    break;
                }

                if (text[i] == '"')
                {
                    inQuote = !inQuote;
                }
            }

            // An unterminated quote runs to the end of the line, as in the kernel.
            yield return text[start..i];
        }
    }

    // The kernel's isspace(): space, \t, \n, \v, \f, \r.
    private static bool IsSpace(char c) => c is ' ' or '\t' or '\n' or '\v' or '\f' or '\r';

    private static string Truncate(string s, int n) => s.Length <= n ? s : s[..n] + "...";
}
