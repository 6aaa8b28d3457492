using RebootlessUpdate.Criu;

namespace RebootlessUpdate.UnitTests;

public class CriuVersionTests
{
    [TestCase("4.1.1", 4, 1, 1, 40101)]
    [TestCase("3.17", 3, 17, 0, 31700)]
    [TestCase(" 4.2.1\n", 4, 2, 1, 40201)]
    public void Parses_and_numbers_like_criu(string text, int major, int minor, int sublevel, int number)
    {
        var v = CriuVersion.Parse(text);

        Assert.That((v.Major, v.Minor, v.Sublevel, v.Number), Is.EqualTo((major, minor, sublevel, number)));
    }

    [TestCase("")]
    [TestCase("4")]
    [TestCase("4.x")]
    [TestCase("4.1.1.1")]
    [TestCase("v4.1")]
    public void Rejects_what_is_not_a_version(string text)
    {
        Assert.That(() => CriuVersion.Parse(text), Throws.TypeOf<FormatException>().With.Message.Contains("not a CRIU version"));
    }

    [Test]
    public void Orders_by_number()
    {
        Assert.That(new[] { CriuVersion.Parse("4.1.1"), CriuVersion.Parse("3.17.1"), CriuVersion.Parse("4.0") }.Order(),
            Is.EqualTo(new[] { CriuVersion.Parse("3.17.1"), CriuVersion.Parse("4.0"), CriuVersion.Parse("4.1.1") }));
    }
}
