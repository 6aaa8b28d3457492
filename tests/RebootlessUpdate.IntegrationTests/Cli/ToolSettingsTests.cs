using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Cli;

/// <summary>
/// Where the tool takes criu and the store from: the command line, else REBOOTLESS_CRIU / REBOOTLESS_STORE, else the
/// config file; and a config file that anyone but root could have written (it names the criu that runs as root) is refused.
/// </summary>
[NonParallelizable]
public class ToolSettingsTests
{
    private Testbed _testbed = null!;
    private string _dir = null!;
    private string _store = null!;
    private string _config = null!;

    [SetUp]
    public void SetUp()
    {
        _testbed = Testbed.Require();
        Testbed.RequireRoot();
        _dir = Directory.CreateTempSubdirectory("rebootless-settings-").FullName;
        _store = Directory.CreateDirectory(Path.Combine(_dir, "store")).FullName;
        _config = Path.Combine(_dir, "rebootless.json");
    }

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    private string[] ConfigVariable => [$"REBOOTLESS_CONFIG={_config}"];

    private void WriteConfig(string json, UnixFileMode mode = UnixFileMode.UserRead | UnixFileMode.UserWrite)
    {
        File.WriteAllText(_config, json);
        File.SetUnixFileMode(_config, mode);
    }

    [Test]
    public void The_command_line_wins_over_the_environment_which_wins_over_the_config_file()
    {
        WriteConfig("""{"criu": "/nonexistent/from-config", "store": "/nonexistent/store-from-config"}""");
        using var sleeper = System.Diagnostics.Process.Start("sleep", "120");
        try
        {
            var pid = sleeper.Id.ToString();
            var fromConfig = Tool.RunWith(ConfigVariable, "rehearse", "--pid", pid, "--store", _store);
            var fromEnvironment = Tool.RunWith([.. ConfigVariable, "REBOOTLESS_CRIU=/nonexistent/from-env"], "rehearse", "--pid", pid, "--store", _store);
            var fromLine = Tool.RunWith([.. ConfigVariable, "REBOOTLESS_CRIU=/nonexistent/from-env"], "rehearse", "--pid", pid, "--store", _store, "--criu", "/nonexistent/from-line");
            var storeFromConfig = Tool.RunWith(ConfigVariable, "status");
            var storeFromEnvironment = Tool.RunWith([.. ConfigVariable, $"REBOOTLESS_STORE={_dir}/store-from-env"], "status");
            Assert.Multiple(() =>
            {
                Assert.That(fromConfig.ExitCode, Is.EqualTo(4), fromConfig.ToString());
                Assert.That(fromConfig.Error, Does.Contain("/nonexistent/from-config"));
                Assert.That(fromEnvironment.Error, Does.Contain("/nonexistent/from-env"));
                Assert.That(fromLine.Error, Does.Contain("/nonexistent/from-line"));
                Assert.That(storeFromConfig.ExitCode, Is.EqualTo(8));
                Assert.That(storeFromConfig.Error, Does.Contain("/nonexistent/store-from-config"));
                Assert.That(storeFromEnvironment.Error, Does.Contain($"{_dir}/store-from-env"));
                Assert.That(Workload.IsRunning(sleeper.Id), Is.True);
            });
        }
        finally
        {
            sleeper.Kill();
        }
    }

    [Test]
    public void A_rehearsal_takes_criu_and_the_store_from_the_config_file_alone()
    {
        WriteConfig($$"""{"criu": "{{_testbed.Criu}}", "store": "{{_store}}", "criuTimeout": 120}""");
        using var w = Workload.Start(Path.Combine(_dir, "w"));

        var r = Tool.RunWith(ConfigVariable, "rehearse", "--pid", w.RootPid.ToString(), "--json");
        TestContext.Out.WriteLine(r.ToString());

        Assert.That(r.ExitCode, Is.Zero, r.ToString());
        using var json = System.Text.Json.JsonDocument.Parse(r.Output);
        w.RootPid = json.RootElement.GetProperty("targets")[0].GetProperty("restoredPid").GetInt32();
        Assert.That(json.RootElement.GetProperty("duration").ValueKind, Is.EqualTo(System.Text.Json.JsonValueKind.Number), "durations are seconds");
        Assert.That(Directory.GetDirectories(Path.Combine(_store, "journal")).Length + Directory.GetFiles(Path.Combine(_store, "journal")).Length, Is.GreaterThan(0),
            "the run's journal is in the config file's store");
        var before = w.ReadCounter();
        Workload.WaitFor(() => w.ReadCounter() > before + 2 ? 1 : 0, "the rehearsed workload to count on");
    }

    [TestCase("group-writable")]
    [TestCase("other-writable")]
    [TestCase("owned by nobody")]
    [TestCase("a FIFO")]
    [TestCase("not JSON")]
    [TestCase("an unknown setting")]
    [TestCase("a timeout that is text")]
    [TestCase("breakpoints that are no mode")]
    [TestCase("missing")]
    [TestCase("a symbolic link")]
    [TestCase("in a folder others may write")]
    [TestCase("not UTF-8")]
    public void A_config_file_that_cannot_be_trusted_or_read_is_refused_with_exit_2_and_nothing_runs(string how)
    {
        const string Good = """{"criu": "/usr/sbin/criu"}""";
        switch (how)
        {
            case "group-writable":
                WriteConfig(Good, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupWrite);
                break;
            case "other-writable":
                WriteConfig(Good, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.OtherWrite | UnixFileMode.OtherRead);
                break;
            case "owned by nobody":
                WriteConfig(Good);
                Assert.That(ProcessRunner.Run("chown", ["65534", _config], TimeSpan.FromSeconds(10)).ExitCode, Is.Zero);
                break;
            case "a FIFO":
                Assert.That(Mono.Unix.Native.Syscall.mkfifo(_config, Mono.Unix.Native.FilePermissions.S_IRUSR | Mono.Unix.Native.FilePermissions.S_IWUSR), Is.Zero);
                break;
            case "not JSON":
                WriteConfig("criu = /usr/sbin/criu");
                break;
            case "an unknown setting":
                WriteConfig("""{"criu_path": "/usr/sbin/criu"}""");
                break;
            case "a timeout that is text":
                WriteConfig("""{"criuTimeout": "ten"}""");
                break;
            case "breakpoints that are no mode":
                WriteConfig("""{"criuBreakpoints": "sometimes"}""");
                break;
            case "a symbolic link":
                File.WriteAllText(_config + ".real", Good);
                File.CreateSymbolicLink(_config, _config + ".real");
                break;
            case "in a folder others may write":
                WriteConfig(Good);
                File.SetUnixFileMode(_dir, (UnixFileMode)0x1FF); // 0777, not sticky: anyone may swap the file
                break;
            case "not UTF-8":
                File.WriteAllBytes(_config, [.. "{\"criu\": \"/"u8.ToArray(), 0xff, 0xfe, .. "\"}"u8.ToArray()]);
                File.SetUnixFileMode(_config, UnixFileMode.UserRead | UnixFileMode.UserWrite);
                break;
        }

        var r = Tool.RunWith(ConfigVariable, "status", "--store", _store);
        TestContext.Out.WriteLine(r.ToString());

        Assert.Multiple(() =>
        {
            Assert.That(r.ExitCode, Is.EqualTo(2), r.ToString());
            Assert.That(r.Error, Does.StartWith("rebootless: ").And.Contain(_config).And.Not.Contain("   at "));
            Assert.That(r.Output, Is.Empty);
        });
    }
}
