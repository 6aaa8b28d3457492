using System.Diagnostics;
using System.Text.Json;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests.Cli;

/// <summary>
/// The command-line contract scripts rely on, against the built tool: every command's help, and each kind of bad input
/// with its exit code, one line on stderr (nothing on stdout), no stack trace, the same as a JSON object with --json, and
/// nothing created on disk.
/// </summary>
[NonParallelizable]
public class ToolContractTests
{
    private static readonly string[][] Commands =
    [
        ["check"], ["plan"], ["rehearse"], ["update"], ["resume"], ["status"], ["images"], ["images", "ls"], ["images", "verify"],
        ["images", "rm"], ["install-unit"], ["version"], ["completion"],
    ];

    private Testbed _testbed = null!;
    private string _dir = null!;
    private string _store = null!;
    private Process _sleeper = null!;

    [SetUp]
    public void SetUp()
    {
        _testbed = Testbed.Require();
        Testbed.RequireRoot();
        _dir = Directory.CreateTempSubdirectory("rebootless-contract-").FullName;
        _store = Directory.CreateDirectory(Path.Combine(_dir, "store")).FullName;
        _sleeper = Process.Start("sleep", "300");
        _options = Path.Combine(_dir, "options");
        File.WriteAllText(_options, "20261126T063200Z-1a2b3c4d --force\n");
    }

    private string _options = null!;

    [TearDown]
    public void TearDown()
    {
        _sleeper.Kill();
        _sleeper.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    [Test]
    public void Every_commands_help_exits_0_lists_the_exit_codes_and_only_the_options_it_takes()
    {
        foreach (var command in Commands)
        {
            var r = Tool.Run([.. command, "--help"]);
            Assert.That(r.ExitCode, Is.Zero, r.ToString());
            Assert.That(r.Output, Does.Contain("Usage:").And.Contain("Exit codes:").And.Contain("130  interrupted").And.Contain("10  store-full"), string.Join(' ', command));
        }

        // The options part of a command's help (the exit codes below it name options too).
        static string Options(params string[] command)
        {
            var help = Tool.Run([.. command, "--help"]).Output;
            var start = help.IndexOf("Options:", StringComparison.Ordinal);
            return help[start..help.IndexOf("Exit codes:", start, StringComparison.Ordinal)];
        }

        Assert.Multiple(() =>
        {
            Assert.That(Options("version"), Does.Not.Contain("--tcp-established").And.Not.Contain("--store"));
            Assert.That(Options("status"), Does.Contain("--store").And.Not.Contain("--criu").And.Not.Contain("--pid"));
            Assert.That(Options("images", "ls"), Does.Contain("--store").And.Not.Contain("--manifest-key"));
            Assert.That(Options("images", "verify"), Does.Contain("--manifest-key"));
            Assert.That(Options("rehearse"), Does.Contain("--pid").And.Contain("--criu-timeout").And.Contain("--tcp-established").And.Not.Contain("--kernel"));
            Assert.That(Options("plan"), Does.Contain("--pid").And.Not.Contain("--criu-timeout"));
        });
    }

    [Test]
    public void Each_bad_input_is_one_line_with_its_exit_code_or_a_json_error_object_no_stack_trace_and_nothing_created()
    {
        var pid = _sleeper.Id.ToString();
        var thread = Directory.GetDirectories($"/proc/{Environment.ProcessId}/task").Select(Path.GetFileName).First(t => t != Environment.ProcessId.ToString())!;
        var kernelThread = KernelThread();
        var missing = Path.Combine(_dir, "missing");
        (string[] Args, int Code, string Says)[] cases =
        [
            (["bogus"], 2, "bogus"),
            ([], 2, "command"),
            (["rehearse", "--pid", "abc", "--store", _store], 2, "'abc' is not a process id"),
            (["rehearse", "--pid", "0", "--store", _store, "--criu", _testbed.Criu], 6, "--pid 0"),
            (["rehearse", "--pid", "-5", "--store", _store, "--criu", _testbed.Criu], 6, "--pid -5"),
            (["plan", "--pid", "0"], 6, "--pid 0"),
            (["plan", "--pid", kernelThread.ToString(), "--store", _store], 6, "kernel thread"),
            (["rehearse", "--pid", kernelThread.ToString(), "--store", _store, "--criu", _testbed.Criu], 6, "kernel thread"),
            (["plan", "--pid", thread, "--store", _store], 6, $"{thread} is a thread of process {Environment.ProcessId}"),
            (["plan", "--pid", "999999", "--store", _store], 6, "no running process 999999"),
            (["rehearse", "--store", _store, "--criu", _testbed.Criu], 2, "no target"),
            (["rehearse", "--pid", pid, "--store", _store, "--criu-timeout", "ten"], 2, "--criu-timeout 'ten'"),
            (["rehearse", "--pid", pid, "--store", _store, "--criu-breakpoints", "never"], 2, "--criu-breakpoints 'never' is not auto, use or avoid"),
            (["rehearse", "--pid", pid, "--store", _store, "--criu", "/nonexistent/criu"], 4, "/nonexistent/criu"),
            (["version", "--tcp-established"], 2, "--tcp-established"),
            (["status", "--criu", "/bin/true"], 2, "--criu"),
            (["resume", "--set", "../x", "--store", _store, "--criu", _testbed.Criu], 2, "not a checkpoint set id"),
            (["images", "verify", "20261126T063200Z-1a2b3c4d", "--store", _store], 2, "no set 20261126T063200Z-1a2b3c4d"),
            (["images", "rm", "nope", "--store", _store], 2, "not a checkpoint set id"),
            (["images", "rm", "20261126T063200Z-1a2b3c4d", "--store", _store], 2, "no set 20261126T063200Z-1a2b3c4d"),
            (["resume", "--set", "20261126T063200Z-1a2b3c4d", "--store", _store, "--criu", _testbed.Criu], 2, "--set 20261126T063200Z-1a2b3c4d: there is no run of that set"),
            // No response files: "@file" is a plain argument, and a file of options cannot ride in on a set id.
            (["images", "rm", "@" + _options, "--store", _store], 2, "not a checkpoint set id"),
            (["update", "--kernel", "/nonexistent/vmlinuz", "--pid", pid, "--store", _store, "--criu", _testbed.Criu], 7, "/nonexistent/vmlinuz"),
            (["update", "--pid", pid, "--store", _store], 2, "--kernel"),
            (["status", "--store", missing], 8, missing),
            (["images", "ls", "--store", missing], 8, missing),
            (["rehearse", "--pid", pid, "--store", missing, "--criu", _testbed.Criu], 8, missing),
            (["completion", "tcsh"], 2, "tcsh"),
        ];
        foreach (var (args, code, says) in cases)
        {
            var what = string.Join(' ', args);
            var text = Tool.Run(args);
            TestContext.Out.WriteLine($"{code} <- {what}: {text.Error.Trim()}");
            Assert.Multiple(() =>
            {
                Assert.That(text.ExitCode, Is.EqualTo(code), what + "\n" + text);
                Assert.That(text.Output, Is.Empty, "nothing on stdout: " + what);
                Assert.That(text.Error.TrimEnd('\n').Split('\n'), Has.Length.EqualTo(1).And.All.StartsWith("rebootless: "), what);
                Assert.That(text.Error, Does.Contain(says).And.Not.Contain("   at "), what);
            });

            var json = Tool.Run([.. args, "--json"]);
            Assert.That(json.ExitCode, Is.EqualTo(code), what + " --json\n" + json);
            using var error = JsonDocument.Parse(json.Output);
            Assert.Multiple(() =>
            {
                Assert.That(error.RootElement.GetProperty("exitCode").GetInt32(), Is.EqualTo(code), what);
                Assert.That(error.RootElement.GetProperty("error").GetString(), Is.Not.Empty.And.Not.EqualTo("internal"), what);
                Assert.That(error.RootElement.GetProperty("message").GetString(), Does.Contain(says), what);
                Assert.That(error.RootElement.TryGetProperty("hint", out _), Is.True, what);
                Assert.That(json.Error, Does.Not.Contain("   at "), what);
            });
        }

        Assert.That(Directory.GetFileSystemEntries(_store), Is.Empty, "no bad input wrote to the store");
        Assert.That(Directory.Exists(missing), Is.False, "a store folder that does not exist is not created");
        Assert.That(Workload.IsRunning(_sleeper.Id), Is.True);
    }

    [Test]
    public void Without_root_every_command_that_needs_it_exits_3_and_reads_or_writes_nothing()
    {
        var pid = _sleeper.Id.ToString();
        string[][] commands =
        [
            ["status", "--store", _store], ["images", "ls", "--store", _store], ["images", "verify", "20261126T063200Z-1a2b3c4d", "--store", _store],
            ["images", "rm", "20261126T063200Z-1a2b3c4d", "--store", _store], ["plan", "--pid", pid, "--store", _store],
            ["rehearse", "--pid", pid, "--store", _store, "--criu", _testbed.Criu], ["resume", "--store", _store, "--criu", _testbed.Criu],
            ["check", "--store", _store, "--criu", _testbed.Criu],
        ];
        foreach (var args in commands)
        {
            var r = Tool.RunAsNobody(args);
            TestContext.Out.WriteLine($"{string.Join(' ', args)}: {r.ExitCode} {r.Error.Trim()}");
            Assert.That(r.ExitCode, Is.EqualTo(3), string.Join(' ', args) + "\n" + r);
            Assert.That(r.Output + r.Error, Does.Not.Contain("   at "));
        }

        Assert.That(Directory.GetFileSystemEntries(_store), Is.Empty);
    }

    [Test]
    public void Version_equals_dash_dash_version_and_its_json_names_the_criu_found()
    {
        var flag = Tool.Run("--version");
        var text = Tool.Run("version", "--criu", _testbed.Criu);
        var json = Tool.Run("version", "--criu", _testbed.Criu, "--json");
        using var doc = JsonDocument.Parse(json.Output);

        Assert.Multiple(() =>
        {
            Assert.That(text.Output, Does.StartWith($"rebootless {flag.Output.Trim()}\n"));
            Assert.That(doc.RootElement.GetProperty("version").GetString(), Is.EqualTo(flag.Output.Trim()));
            Assert.That(doc.RootElement.GetProperty("criuVersion").GetString(), Does.StartWith(_testbed["REBOOTLESS_CRIU_VERSION"]));
            Assert.That(doc.RootElement.GetProperty("criuPath").GetString(), Is.EqualTo(_testbed.Criu));
        });
    }

    [Test]
    public void Completion_for_bash_completes_commands_subcommands_and_options_from_the_tool_itself()
    {
        var bin = Directory.CreateDirectory(Path.Combine(_dir, "bin")).FullName;
        var wrapper = Path.Combine(bin, "rebootless");
        File.WriteAllText(wrapper, $"#!/bin/sh\nexec dotnet '{Tool.Path}' \"$@\"\n");
        File.SetUnixFileMode(wrapper, UnixFileMode.UserRead | UnixFileMode.UserExecute);
        string Complete(string line) => ProcessRunner.Run("bash", ["-c",
            $"export PATH='{bin}':$PATH; eval \"$(rebootless completion bash)\"; COMP_LINE='{line}'; COMP_POINT={line.Length}; _rebootless_complete; printf '%s\\n' \"${{COMPREPLY[@]}}\""],
            TimeSpan.FromMinutes(1)).Output;

        Assert.Multiple(() =>
        {
            Assert.That(Complete("rebootless reh").Split('\n'), Does.Contain("rehearse"));
            Assert.That(Complete("rebootless images v").Split('\n'), Does.Contain("verify").And.Not.Contain("ls"));
            Assert.That(Complete("rebootless rehearse --ke").Split('\n'), Does.Contain("--keep-images"));
            Assert.That(Tool.Run("completion", "zsh").Output, Does.Contain("compdef _rebootless rebootless"));
            Assert.That(Tool.Run("completion", "fish").Output, Does.Contain("complete -c rebootless"));
        });
    }

    /// <summary>A kernel thread's pid (PF_KTHREAD in field 9 of its stat), not assumed to be 2.</summary>
    private static int KernelThread() => Directory.GetDirectories("/proc")
        .Select(Path.GetFileName).Where(n => n!.All(char.IsAsciiDigit)).Select(n => int.Parse(n!))
        .First(p =>
        {
            try
            {
                var stat = File.ReadAllText($"/proc/{p}/stat");
                return (uint.Parse(stat[(stat.LastIndexOf(')') + 2)..].Split(' ')[6]) & 0x00200000) != 0;
            }
            catch (IOException)
            {
                return false;
            }
        });
}
