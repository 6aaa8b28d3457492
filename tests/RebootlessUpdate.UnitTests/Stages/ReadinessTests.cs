using RebootlessUpdate.Criu;
using RebootlessUpdate.Criu.Protocol;
using RebootlessUpdate.Stages;
using RebootlessUpdate.UnitTests.Criu;

namespace RebootlessUpdate.UnitTests.Stages;

/// <summary>The criu minimum-version gate of <see cref="Readiness"/>, against a fake criu that reports a chosen version.</summary>
public class ReadinessTests
{
    /// <summary>A criu that answers VERSION with <paramref name="version"/> and CHECK with success, recording each request.</summary>
    private static CriuClient Criu(CriuVersion version, List<criu_req_type> requests) => FakeCriuPeer.Client(async peer =>
    {
        var req = await peer.NextAsync();
        lock (requests)
        {
            requests.Add(req.Type);
        }

        peer.Write(req.Type == criu_req_type.Version
            ? new criu_resp
            {
                Type = criu_req_type.Version,
                Success = true,
                Version = new criu_version { MajorNumber = version.Major, MinorNumber = version.Minor, Sublevel = version.Sublevel },
            }
            : FakeCriuPeer.Ok(req.Type));
    });

    private static CriuVersion JustBelow(CriuVersion v) =>
        v.Sublevel > 0 ? new(v.Major, v.Minor, v.Sublevel - 1) : v.Minor > 0 ? new(v.Major, v.Minor - 1, 99) : new(v.Major - 1, 99, 99);

    [Test]
    public async Task A_criu_just_older_than_the_minimum_is_refused_as_too_old_and_not_checked()
    {
        var requests = new List<criu_req_type>();
        var old = JustBelow(RebootlessInfo.MinimumCriuVersion);

        var report = await Readiness.CheckAsync(Criu(old, requests), store: null, needKexec: false, runCriuCheck: true);

        var criu = report.Checks.Single(c => c.Name == "criu");
        Assert.Multiple(() =>
        {
            Assert.That(criu.Ok, Is.False);
            Assert.That(criu.Problem, Is.EqualTo(ReadinessProblem.CriuTooOld));
            Assert.That(criu.Detail, Does.Contain($"criu {old} is too old").And.Contain($"{RebootlessInfo.MinimumCriuVersion} or newer"));
            Assert.That(report.IsReady, Is.False);
            Assert.That(report.CriuVersion, Is.EqualTo(old.ToString()));
            Assert.That(requests, Is.EqualTo(new[] { criu_req_type.Version }), "an old criu is not asked to check itself");
        });
    }

    [Test]
    public async Task A_criu_exactly_at_the_minimum_passes_and_runs_its_check()
    {
        var requests = new List<criu_req_type>();
        var minimum = RebootlessInfo.MinimumCriuVersion;

        var report = await Readiness.CheckAsync(Criu(minimum, requests), store: null, needKexec: false, runCriuCheck: true);

        Assert.Multiple(() =>
        {
            Assert.That(report.Checks.Single(c => c.Name == "criu"), Has.Property("Ok").True.And.Property("Detail").EqualTo($"criu {minimum}"));
            Assert.That(report.Checks.Single(c => c.Name == "criu check").Ok, Is.True, "the minimum itself is supported: criu check runs");
            Assert.That(requests, Is.EqualTo(new[] { criu_req_type.Version, criu_req_type.Check }));
        });
    }

    [Test]
    public async Task A_newer_criu_passes()
    {
        var requests = new List<criu_req_type>();
        var m = RebootlessInfo.MinimumCriuVersion;

        var report = await Readiness.CheckAsync(Criu(new CriuVersion(m.Major, m.Minor, m.Sublevel + 1), requests), store: null, needKexec: false);

        Assert.That(report.Checks.Single(c => c.Name == "criu").Ok, Is.True);
        Assert.That(requests, Is.EqualTo(new[] { criu_req_type.Version }), "without runCriuCheck only the version is asked");
    }
}
