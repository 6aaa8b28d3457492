using System.Globalization;

namespace RebootlessUpdate.Criu;

/// <summary>
/// A CRIU version as reported by a VERSION request (or <c>criu --version</c>).
/// </summary>
/// <param name="Major">Major number, e.g. 4.</param>
/// <param name="Minor">Minor number, e.g. 1.</param>
/// <param name="Sublevel">Sublevel, e.g. 1 for 4.1.1; 0 when CRIU did not report one.</param>
/// <param name="GitId">The git id CRIU was built from, when it reports one.</param>
public sealed record CriuVersion(int Major, int Minor, int Sublevel = 0, string? GitId = null) : IComparable<CriuVersion>
{
    /// <summary>
    /// The version as one number, <c>major * 10000 + minor * 100 + sublevel</c>,
    /// the form CRIU itself uses for feature minimums (4.1.1 is 40101).
    /// </summary>
    public int Number => (Major * 10000) + (Minor * 100) + Sublevel;

    /// <summary>Parses <c>MAJOR.MINOR[.SUBLEVEL]</c>, e.g. <c>4.1.1</c>.</summary>
    /// <exception cref="FormatException">The text is not a CRIU version.</exception>
    public static CriuVersion Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var parts = text.Trim().Split('.');
        if (parts.Length is < 2 or > 3 || !parts.All(p => p.Length > 0 && p.All(char.IsAsciiDigit)))
        {
            throw new FormatException($"'{text}' is not a CRIU version (expected MAJOR.MINOR[.SUBLEVEL], e.g. 4.1.1).");
        }

        int Part(int i) => i < parts.Length ? int.Parse(parts[i], CultureInfo.InvariantCulture) : 0;
        return new CriuVersion(Part(0), Part(1), Part(2));
    }

    /// <inheritdoc />
    public int CompareTo(CriuVersion? other) => other is null ? 1 : Number.CompareTo(other.Number);

    /// <summary>True when <paramref name="left"/> is older than <paramref name="right"/>.</summary>
    public static bool operator <(CriuVersion left, CriuVersion right) => Comparer<CriuVersion>.Default.Compare(left, right) < 0;

    /// <summary>True when <paramref name="left"/> is newer than <paramref name="right"/>.</summary>
    public static bool operator >(CriuVersion left, CriuVersion right) => Comparer<CriuVersion>.Default.Compare(left, right) > 0;

    /// <summary>True when <paramref name="left"/> is older than or equal to <paramref name="right"/>.</summary>
    public static bool operator <=(CriuVersion left, CriuVersion right) => Comparer<CriuVersion>.Default.Compare(left, right) <= 0;

    /// <summary>True when <paramref name="left"/> is newer than or equal to <paramref name="right"/>.</summary>
    public static bool operator >=(CriuVersion left, CriuVersion right) => Comparer<CriuVersion>.Default.Compare(left, right) >= 0;

    /// <inheritdoc />
    public override string ToString() =>
        Sublevel == 0 ? $"{Major}.{Minor}" : $"{Major}.{Minor}.{Sublevel}";
}
