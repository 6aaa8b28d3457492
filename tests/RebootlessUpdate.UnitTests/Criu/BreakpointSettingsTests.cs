using Microsoft.Extensions.Logging.Abstractions;
using RebootlessUpdate.Cli;
using RebootlessUpdate.Criu;

namespace RebootlessUpdate.UnitTests.Criu;

/// <summary>How the breakpoint setting reaches criu's workers, the tool's option, and a timeout's message.</summary>
[NonParallelizable]
public class BreakpointSettingsTests
{
    private string? _own;

    [SetUp]
    public void KeepOwnFault() => _own = Environment.GetEnvironmentVariable(HardwareBreakpointProbe.FaultVariable);

    [TearDown]
    public void RestoreOwnFault() => Environment.SetEnvironmentVariable(HardwareBreakpointProbe.FaultVariable, _own);

    [Test]
    public void Avoid_gives_criu_its_no_breakpoints_switch_and_use_gives_nothing()
    {
        Environment.SetEnvironmentVariable(HardwareBreakpointProbe.FaultVariable, null);

        Assert.Multiple(() =>
        {
            Assert.That(HardwareBreakpointProbe.WorkerEnvironment(CriuBreakpoints.Avoid, NullLogger.Instance),
                Is.EqualTo(new[] { new KeyValuePair<string, string>("CRIU_FAULT", "130") }));
            Assert.That(HardwareBreakpointProbe.WorkerEnvironment(CriuBreakpoints.Use, NullLogger.Instance), Is.Empty);
        });
    }

    [Test]
    public void A_fault_the_caller_set_is_kept_rather_than_overwritten()
    {
        Environment.SetEnvironmentVariable(HardwareBreakpointProbe.FaultVariable, "2");

        Assert.That(HardwareBreakpointProbe.WorkerEnvironment(CriuBreakpoints.Avoid, NullLogger.Instance), Is.Empty);
    }

    [TestCase(CriuBreakpoints.Auto)]
    [TestCase(CriuBreakpoints.Use)]
    [TestCase(CriuBreakpoints.Avoid)]
    public void An_inherited_no_breakpoints_switch_decides_without_a_probe_and_is_not_added_twice(CriuBreakpoints mode)
    {
        Environment.SetEnvironmentVariable(HardwareBreakpointProbe.FaultVariable, "130");

        var choice = HardwareBreakpointProbe.Choose(mode);

        Assert.Multiple(() =>
        {
            Assert.That(choice.Description, Does.Contain("CRIU_FAULT=130 is set in this environment and criu inherits it"));
            Assert.That(choice.Description, mode == CriuBreakpoints.Use ? Does.StartWith("criu was told to use hardware breakpoints, but") : Does.StartWith("criu runs without"));
            Assert.That(choice.Hazard, Is.False);
            Assert.That(HardwareBreakpointProbe.WorkerEnvironment(mode, NullLogger.Instance), Is.Empty);
        });
    }

    [Test]
    public void A_criu_service_inherits_nothing_from_this_process_so_its_switch_counts_for_nothing()
    {
        Environment.SetEnvironmentVariable(HardwareBreakpointProbe.FaultVariable, "130");

        var choice = HardwareBreakpointProbe.Choose(CriuBreakpoints.Avoid, service: true);

        Assert.That(choice.Description, Is.EqualTo("criu avoids hardware breakpoints, as configured"));
        Assert.That(choice.AddNoBreakpointsFault, Is.True, "the service must be started with it (check says so)");
    }

    [Test]
    public void A_fault_of_the_callers_own_where_breakpoints_are_to_be_avoided_is_named_as_a_hazard()
    {
        Environment.SetEnvironmentVariable(HardwareBreakpointProbe.FaultVariable, "2");

        var choice = HardwareBreakpointProbe.Choose(CriuBreakpoints.Avoid);

        Assert.Multiple(() =>
        {
            Assert.That(choice.Hazard, Is.True);
            Assert.That(choice.AddNoBreakpointsFault, Is.False);
            Assert.That(choice.Description, Does.Contain("CRIU_FAULT=2 is set and kept").And.Contain("may hang"));
        });
    }

    [TestCase("auto", CriuBreakpoints.Auto)]
    [TestCase("use", CriuBreakpoints.Use)]
    [TestCase("avoid", CriuBreakpoints.Avoid)]
    [TestCase("Avoid", null)]
    [TestCase("", null)]
    [TestCase("130", null)]
    public void The_tool_takes_exactly_auto_use_or_avoid(string text, CriuBreakpoints? expected) =>
        Assert.That(CliSettings.ParseCriuBreakpoints(text), Is.EqualTo(expected));

    [Test]
    public void A_timeout_where_criu_waits_for_a_breakpoint_says_how_to_avoid_them()
    {
        string[] atSigreturn = ["(00.080201) Sent msg to daemon 3 0 0", "pie: 1: __fetched msg: 3 0 0", "pie: 1: 1: new_sp=0x7f58b22abc08 ip 0x7f58b238b545"];
        string[] elsewhere = ["(00.080201) Dumping pages", "(00.080301) Writing image pagemap"];

        var waiting = new CriuTimeoutException(CriuRequestType.Dump, TimeSpan.FromSeconds(20), 42, "criu swrk worker 42", "/tmp/dump.log", atSigreturn, null);
        var other = new CriuTimeoutException(CriuRequestType.Dump, TimeSpan.FromSeconds(20), 42, "criu swrk worker 42", "/tmp/dump.log", elsewhere, null);

        Assert.Multiple(() =>
        {
            Assert.That(waiting.Message, Does.Contain("hardware breakpoint").And.Contain("--criu-breakpoints avoid").And.Contain("CRIU_FAULT=130"));
            Assert.That(other.Message, Does.Not.Contain("breakpoint"));
        });
    }
}
