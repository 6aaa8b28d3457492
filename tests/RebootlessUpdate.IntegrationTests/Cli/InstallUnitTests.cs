using System.Text.Json;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Cli;

/// <summary>
/// `rebootless install-unit` against a real systemd manager (a private `systemd --user`, see <see cref="PrivateSystemd"/>):
/// the shipped unit, with this installation's command line, enabled; started, it runs the real `rebootless resume`.
/// </summary>
[NonParallelizable]
public class InstallUnitTests
{
    private const string Unit = "rebootless-resume.service";
    private Testbed _testbed = null!;
    private string _dir = null!;
    private PrivateSystemd? _systemd;

    [SetUp]
    public void SetUp()
    {
        _testbed = Testbed.Require();
        Testbed.RequireRoot();
        _dir = Directory.CreateTempSubdirectory("rebootless-unit-").FullName;
        _systemd = PrivateSystemd.Start(Path.Combine(_dir, "systemd"));
    }

    [TearDown]
    public void TearDown()
    {
        _systemd?.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    private string UnitDirectory => Path.Combine(_systemd!.Directory, "config", "systemd", "user");

    private ProcessResult InstallUnit(params string[] args) =>
        _systemd!.Run("env", ["-u", "REBOOTLESS_CRIU", "-u", "REBOOTLESS_STORE", "dotnet", Tool.Path, "install-unit", "--systemd-user", "--unit-dir", UnitDirectory, .. args]);

    /// <summary>Lets the unit run here: no kernel command line condition, no mount to wait for, and the test's store and criu.</summary>
    private void Override(string store)
    {
        var dropIn = Directory.CreateDirectory(Path.Combine(UnitDirectory, Unit + ".d")).FullName;
        File.WriteAllText(Path.Combine(dropIn, "test.conf"),
            $"[Unit]\nConditionKernelCommandLine=\nRequiresMountsFor=\n[Service]\nEnvironment=REBOOTLESS_STORE={store} REBOOTLESS_CRIU={_testbed.Criu}\n");
        Assert.That(_systemd!.Systemctl("daemon-reload").ExitCode, Is.Zero);
    }

    [Test]
    public void The_unit_is_installed_enabled_and_runs_this_tools_resume_to_success_or_to_a_failed_unit()
    {
        var r = InstallUnit("--json");
        TestContext.Out.WriteLine(r.ToString());
        Assert.That(r.ExitCode, Is.Zero, r.ToString());
        using var json = JsonDocument.Parse(r.Output);
        var command = json.RootElement.GetProperty("command").GetString()!;
        var again = InstallUnit();

        Assert.Multiple(() =>
        {
            Assert.That(command, Does.EndWith(Tool.Path), "the unit runs this installation of the tool");
            Assert.That(json.RootElement.GetProperty("changed").GetBoolean(), Is.True);
            Assert.That(again.Output, Does.StartWith("unchanged "), "installing twice changes nothing");
            Assert.That(_systemd!.Systemctl("is-enabled", Unit).Output.Trim(), Is.EqualTo("enabled"));
            Assert.That(_systemd.Systemctl("cat", Unit).Output, Does.Contain($"ExecStart={command} resume --systemd-notify $REBOOTLESS_OPTIONS").And.Contain("ConditionKernelCommandLine=rebootless.resume"));
        });

        // Without rebootless.resume= on the command line the unit is skipped (this host was not reached by a jump).
        Assert.That(_systemd!.Systemctl("start", Unit).ExitCode, Is.Zero);
        Assert.That(_systemd.Property(Unit, "ConditionResult"), Is.EqualTo("no"));

        // Made to run: an empty store is nothing to resume (success); a store that does not exist fails the unit with exit 8.
        var store = Directory.CreateDirectory(Path.Combine(_dir, "store")).FullName;
        Override(store);
        var started = _systemd.Systemctl("start", Unit);
        Assert.Multiple(() =>
        {
            Assert.That(started.ExitCode, Is.Zero, started.ToString());
            Assert.That(_systemd.Property(Unit, "ActiveState"), Is.EqualTo("active"));
            Assert.That(_systemd.Property(Unit, "ExecMainStatus"), Is.EqualTo("0"));
        });

        Assert.That(_systemd.Systemctl("stop", Unit).ExitCode, Is.Zero);
        Override(Path.Combine(_dir, "missing"));
        var failed = _systemd.Systemctl("start", Unit);
        Assert.Multiple(() =>
        {
            Assert.That(failed.ExitCode, Is.Not.Zero);
            Assert.That(_systemd.Property(Unit, "ActiveState"), Is.EqualTo("failed"));
            Assert.That(_systemd.Property(Unit, "ExecMainStatus"), Is.EqualTo("8"), "the tool's exit code for a missing store reaches systemd");
        });
    }

    [Test]
    public void A_masked_unit_a_link_is_never_written_through()
    {
        var victim = Path.Combine(_dir, "victim");
        File.WriteAllText(victim, "precious\n");
        File.SetUnixFileMode(victim, (UnixFileMode)0x1B6); // 0666, as /dev/null is
        File.CreateSymbolicLink(Path.Combine(UnitDirectory, Unit), victim);

        var r = InstallUnit("--no-enable");
        Assert.Multiple(() =>
        {
            Assert.That(r.ExitCode, Is.EqualTo(2), r.ToString());
            Assert.That(r.Error, Does.Contain("a link to " + victim).And.Contain("unmask"));
            Assert.That(File.ReadAllText(victim), Is.EqualTo("precious\n"), "what the link points to is untouched");
            Assert.That(File.GetUnixFileMode(victim), Is.EqualTo((UnixFileMode)0x1B6), "and keeps its mode");
        });
    }

    [Test]
    public void A_unit_folder_that_does_not_exist_is_a_usage_error_and_nothing_is_written()
    {
        var r = _systemd!.Run("dotnet", [Tool.Path, "install-unit", "--systemd-user", "--unit-dir", Path.Combine(_dir, "nowhere")]);
        Assert.That(r.ExitCode, Is.EqualTo(2), r.ToString());
        Assert.That(r.Error, Does.StartWith("rebootless: --unit-dir"));
        Assert.That(File.Exists(Path.Combine(UnitDirectory, Unit)), Is.False);
    }
}
