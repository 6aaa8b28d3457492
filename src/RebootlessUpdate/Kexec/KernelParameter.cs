namespace RebootlessUpdate.Kexec;

/// <summary>
/// One kernel command-line parameter: <c>name</c>, <c>name=value</c> or a
/// quoted form such as <c>name="a b"</c>. Parsed with the kernel's own rules
/// (<c>next_arg</c> in lib/cmdline.c): a double quote toggles quoting, quotes
/// around a value are not part of it, there is no escape character.
/// </summary>
public sealed record KernelParameter
{
    private KernelParameter(string name, string? value, string text)
    {
        Name = name;
        Value = value;
        Text = text;
    }

    /// <summary>The name (left of the first <c>=</c>), quotes removed.</summary>
    public string Name { get; }

    /// <summary>The value without surrounding quotes, or null when the parameter has no <c>=</c>.</summary>
    public string? Value { get; }

    /// <summary>The parameter exactly as it is written on the command line.</summary>
    public string Text { get; }

    /// <summary>
    /// Creates a parameter, quoting the value when it contains white space.
    /// </summary>
    /// <exception cref="KexecException">
    /// <see cref="KexecFailureReason.InvalidCommandLine"/>: the name is empty or holds white space, <c>=</c> or
    /// a quote, or the value holds a quote or a control character (the kernel has no way to escape them).
    /// </exception>
    public static KernelParameter Create(string name, string? value = null)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (name.Length == 0 || name == "--" || name.Any(c => c is '=' or '"' || char.IsWhiteSpace(c) || char.IsControl(c)))
        {
            throw new KexecException(KexecFailureReason.InvalidCommandLine,
                $"'{name}' cannot be a kernel parameter name: a name must be non-empty, must not be '--' and must not contain white space, '=' or '\"'.");
        }

        if (value is null)
        {
            return new KernelParameter(name, null, name);
        }

        if (value.Any(c => c == '"' || (char.IsControl(c) && c != '\t')))
        {
            throw new KexecException(KexecFailureReason.InvalidCommandLine,
                $"the value of kernel parameter '{name}' contains a double quote or a control character, which the kernel command line cannot carry (it has no escapes); value: {value}");
        }

        var needsQuotes = value.Any(char.IsWhiteSpace);
        return new KernelParameter(name, value, needsQuotes ? $"{name}=\"{value}\"" : $"{name}={value}");
    }

    /// <summary>Splits a token the tokenizer produced into name and value the way the kernel does.</summary>
    internal static KernelParameter FromToken(string token)
    {
        var s = token;
        var quoted = s.StartsWith('"');
        if (quoted)
        {
            s = s[1..];
        }

        var eq = s.IndexOf('=', StringComparison.Ordinal);
        string name;
        string? value;
        if (eq < 0)
        {
            name = quoted && s.EndsWith('"') ? s[..^1] : s;
            value = null;
        }
        else
        {
            name = s[..eq];
            value = s[(eq + 1)..];
            if (value.StartsWith('"'))
            {
                value = value[1..];
                if (value.EndsWith('"'))
                {
                    value = value[..^1];
                }
            }
            else if (quoted && value.EndsWith('"'))
            {
                value = value[..^1];
            }
        }

        return new KernelParameter(name, value, token);
    }

    /// <summary>
    /// True when <paramref name="name"/> names this parameter. Like the kernel
    /// (<c>parameqn</c>), '-' and '_' are the same character in names.
    /// </summary>
    public bool HasName(string name) => NamesEqual(Name, name);

    internal static bool NamesEqual(string a, string b)
    {
        if (a.Length != b.Length)
        {
            return false;
        }

        for (var i = 0; i < a.Length; i++)
        {
            var x = a[i] == '-' ? '_' : a[i];
            var y = b[i] == '-' ? '_' : b[i];
            if (x != y)
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>The parameter as written (<see cref="Text"/>).</summary>
    public override string ToString() => Text;
}
