using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.VmTests.Systemd;

/// <summary>
/// A host whose PID 1 is systemd (the testbed booted with <c>rebootless.init=systemd</c>): a service is updated across
/// the real jump through <c>systemctl kexec</c>, the shipped resume unit restores it early on the new kernel, and
/// systemd supervises it again as that unit. The guest side is jobs/systemd-service-update.sh.
/// </summary>
[NonParallelizable]
public class SystemdHostVmTests
{
    private const string Unit = "rebootless-counter.service";

    [Test]
    public void A_service_crosses_systemctl_kexec_and_is_its_unit_again_on_the_new_kernel()
    {
        var testbed = Testbed.Require();
        Testbed.RequireRoot();
        var job = Directory.CreateTempSubdirectory("rebootless-vmjob-").FullName;
        File.Copy(Path.Combine(AppContext.BaseDirectory, "jobs", "systemd-service-update.sh"), Path.Combine(job, "run"));
        File.WriteAllText(Path.Combine(job, "new-kernel"), testbed.NewKernel);
        File.WriteAllText(Path.Combine(job, "tool"), ToolInGuest());

        (job, var result) = VmRun.RunRetryingEmulationCrash(testbed,
            ["--kernel", "old", "--memmap", "1G!4G", "--mem", "6144", "--append", "rebootless.init=systemd", "--dotnet", "--repo", Testbed.RepositoryRoot,
             "--timeout", "900", "--job", job],
            TimeSpan.FromMinutes(16));

        string Read(string name) => File.Exists(Path.Combine(job, name)) ? File.ReadAllText(Path.Combine(job, name)).Trim() : $"({name} missing)";
        var diagnostics = $"\nupdate.log:\n{Read("update.log")}\njournal.log:\n{Read("journal.log")}\n{result}";
        Assert.That(result.ExitCode, Is.Zero, "the guest job failed" + diagnostics);
        var beforeFields = Fields(Read("before.txt"));
        var afterFields = Fields(Read("after.txt"));
        string Before(string key) => beforeFields.GetValueOrDefault(key, $"({key} missing)");
        string After(string key) => afterFields.GetValueOrDefault(key, $"({key} missing)");
        var (token, count) = Counter(Read("counter-before"));
        var (tokenAfter, countAfter) = Counter(After("Counter"));
        var (_, countLater) = Counter(After("CounterLater"));
        Assert.Multiple(() =>
        {
            Assert.That(Read("kernel1"), Is.EqualTo(testbed.OldKernel));
            Assert.That(After("Kernel"), Is.EqualTo(testbed.NewKernel), "the jump happened" + diagnostics);
            Assert.That(After("Pid1"), Is.EqualTo("systemd"));
            Assert.That(Before("ActiveState"), Is.EqualTo("active"));
            Assert.That(After("ResumeActiveState"), Is.EqualTo("active"), "the shipped resume unit ran" + diagnostics);
            Assert.That(After("ResumeResult"), Is.EqualTo("success"), diagnostics);
            Assert.That(After("ActiveState"), Is.EqualTo("active"), $"{Unit} runs again as its unit" + diagnostics);
            Assert.That(After("MainPID"), Is.Not.EqualTo("0"), "systemd supervises the restored root" + diagnostics);
            Assert.That(After("Cgroup"), Does.EndWith($"/system.slice/{Unit}"), "the restored root is in the unit's own cgroup");
            Assert.That(After("NRestarts"), Is.EqualTo("0"), "Restart=always started nothing");
            Assert.That(After("Copies"), Is.EqualTo("1"), "one copy of the service, never two");
            Assert.That(tokenAfter, Is.EqualTo(token), "the restored process is the one checkpointed (its in-memory token), not a fresh start");
            Assert.That(countAfter, Is.GreaterThanOrEqualTo(count), "the counter continued from where it was");
            Assert.That(countLater, Is.GreaterThan(countAfter), "the restored service keeps running");
            Assert.That(After("Failed"), Is.Empty, "systemctl --failed lists nothing");
            Assert.That(After("System"), Is.EqualTo("running"));
            Assert.That(After("AfterStop"), Is.EqualTo("inactive 0"), "systemctl stop ended the restored processes");
        });
    }

    /// <summary>The tool as the guest runs it: the CLI's build output, through the shared .NET runtime.</summary>
    private static string ToolInGuest()
    {
        var dll = Path.Combine(Testbed.RepositoryRoot, "src", "RebootlessUpdate.Cli", "bin", "Debug", "net10.0", "rebootless.dll");
        if (!File.Exists(dll))
        {
            throw new InvalidOperationException($"the tool is not built ({dll}); build the solution first");
        }

        return "/repo/" + Path.GetRelativePath(Testbed.RepositoryRoot, dll);
    }

    private static Dictionary<string, string> Fields(string text) =>
        text.Split('\n').Select(l => l.Split('=', 2)).Where(p => p.Length == 2).GroupBy(p => p[0]).ToDictionary(g => g.Key, g => g.Last()[1].Trim());

    private static (string Token, long Count) Counter(string line) =>
        line.Split(' ', StringSplitOptions.RemoveEmptyEntries) is [var token, var n] && long.TryParse(n, out var count) ? (token, count) : ("(unreadable: " + line + ")", -1);
}
