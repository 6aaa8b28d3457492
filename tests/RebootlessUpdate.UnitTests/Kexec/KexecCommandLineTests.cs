using RebootlessUpdate.Kexec;

namespace RebootlessUpdate.UnitTests.Kexec;

public class KexecCommandLineTests
{
    // The testbed VM's first-boot line, as /proc/cmdline shows it (with its newline).
    private static string[] L(params string[] items) => items;

    private const string TestbedLine = "console=ttyS0 panic=-1 quiet rebootless.testbed=1 rebootless.boot=1 memmap=64M!512M\n";

    [Test]
    public void Parse_splits_on_white_space_and_keeps_order()
    {
        var line = KexecCommandLine.Parse(TestbedLine);

        Assert.That(line.Parameters.Select(p => p.Name), Is.EqualTo(L("console", "panic", "quiet", "rebootless.testbed", "rebootless.boot", "memmap")));
        Assert.That(line.Parameters[2].Value, Is.Null, "a bare flag has no value");
        Assert.That(line.GetValue("memmap"), Is.EqualTo("64M!512M"));
        Assert.That(line.ToString(), Is.EqualTo(TestbedLine.TrimEnd()));
        Assert.That(line.HasInitSeparator, Is.False);
    }

    [TestCase("foo=\"a b\" bar", "foo", "a b", "foo=\"a b\"")]
    [TestCase("\"foo=a b\" bar", "foo", "a b", "\"foo=a b\"")]
    [TestCase("dyndbg=\"file ec.c +p\" bar", "dyndbg", "file ec.c +p", "dyndbg=\"file ec.c +p\"")]
    [TestCase("a=x\"y z\"w bar", "a", "x\"y z\"w", "a=x\"y z\"w")]
    [TestCase("foo=\"\" bar", "foo", "", "foo=\"\"")]
    [TestCase("foo= bar", "foo", "", "foo=")]
    public void Parse_respects_double_quotes_like_the_kernel(string text, string name, string value, string raw)
    {
        var line = KexecCommandLine.Parse(text);

        Assert.That(line.Parameters, Has.Count.EqualTo(2));
        Assert.That(line.Parameters[0].Name, Is.EqualTo(name));
        Assert.That(line.Parameters[0].Value, Is.EqualTo(value));
        Assert.That(line.Parameters[0].Text, Is.EqualTo(raw), "kept parameters are written back exactly");
        Assert.That(line.Parameters[1].Name, Is.EqualTo("bar"));
        Assert.That(line.ToString(), Is.EqualTo(text));
    }

    [Test]
    public void Unterminated_quote_runs_to_the_end_like_the_kernel()
    {
        var line = KexecCommandLine.Parse("a=1 b=\"x y -- z");

        Assert.That(line.Parameters.Select(p => p.Text), Is.EqualTo(L("a=1", "b=\"x y -- z")));
        Assert.That(line.HasInitSeparator, Is.False, "a -- inside quotes is not the separator");
    }

    [TestCase("")]
    [TestCase("   ")]
    [TestCase("\n")]
    public void Empty_line_parses_to_nothing(string text)
    {
        var line = KexecCommandLine.Parse(text);

        Assert.That(line.Parameters, Is.Empty);
        Assert.That(line.ToString(), Is.Empty);
        Assert.That(line.ByteCount, Is.Zero);
    }

    [Test]
    public void Tabs_and_repeated_spaces_are_separators_and_normalised()
    {
        Assert.That(KexecCommandLine.Parse("a=1\t\tb   c\r\n").ToString(), Is.EqualTo("a=1 b c"));
    }

    [Test]
    public void Arguments_after_double_dash_belong_to_init_and_stay_after_it()
    {
        // Shape of this host's own /proc/cmdline (a firecracker guest): init gets flags after "--".
        var text = "console=ttyS0 reboot=k panic=1 rdinit=/process_api -- --firecracker-init --addr 0.0.0.0:2024 --auth-required\n";
        var line = KexecCommandLine.Parse(text);

        Assert.That(line.HasInitSeparator, Is.True);
        Assert.That(line.InitArguments, Is.EqualTo(L("--firecracker-init", "--addr", "0.0.0.0:2024", "--auth-required")));
        Assert.That(line.Contains("addr"), Is.False, "init's arguments are not kernel parameters");

        var next = KexecCommandLine.ComposeNext(line, new NextCommandLineOptions { ResumeSetId = "s1", SetParameters = [new("panic", "-1")] });

        Assert.That(next.ToString(), Is.EqualTo(
            "console=ttyS0 reboot=k panic=-1 rdinit=/process_api rebootless.resume=s1 -- --firecracker-init --addr 0.0.0.0:2024 --auth-required"));
    }

    [Test]
    public void Second_double_dash_is_an_init_argument()
    {
        var line = KexecCommandLine.Parse("a -- b -- c");

        Assert.That(line.InitArguments, Is.EqualTo(L("b", "--", "c")));
        Assert.That(line.ToString(), Is.EqualTo("a -- b -- c"));
    }

    [Test]
    public void Trailing_double_dash_without_arguments_is_kept()
    {
        var next = KexecCommandLine.ComposeNext(KexecCommandLine.Parse("a --"), new NextCommandLineOptions { ResumeSetId = "x" });

        Assert.That(next.ToString(), Is.EqualTo("a rebootless.resume=x --"));
    }

    [Test]
    public void ComposeNext_for_the_testbed_replaces_the_boot_marker_in_place_and_appends_the_resume_marker()
    {
        var next = KexecCommandLine.ComposeNext(KexecCommandLine.Parse(TestbedLine), new NextCommandLineOptions
        {
            SetParameters = [new("rebootless.boot", "2")],
            ResumeSetId = "test-set",
        });

        // Same as the VM job's `sed s/rebootless.boot=1/rebootless.boot=2/` plus the marker.
        Assert.That(next.ToString(), Is.EqualTo(
            "console=ttyS0 panic=-1 quiet rebootless.testbed=1 rebootless.boot=2 memmap=64M!512M rebootless.resume=test-set"));
    }

    [Test]
    public void ComposeNext_drops_one_shot_parameters_and_the_previous_resume_marker()
    {
        var current = KexecCommandLine.Parse(
            "BOOT_IMAGE=/boot/vmlinuz-6.12 root=UUID=1234 ro initrd=\\initrd.img rebootless.resume=old-set quiet rebootless.resume=older");

        var next = KexecCommandLine.ComposeNext(current, new NextCommandLineOptions { ResumeSetId = "new-set" });

        Assert.That(next.ToString(), Is.EqualTo("root=UUID=1234 ro quiet rebootless.resume=new-set"));
    }

    [Test]
    public void ComposeNext_without_a_resume_marker_leaves_none()
    {
        var next = KexecCommandLine.ComposeNext(KexecCommandLine.Parse("a rebootless.resume=old"), new NextCommandLineOptions());

        Assert.That(next.ToString(), Is.EqualTo("a"));
    }

    [Test]
    public void ComposeNext_replaces_the_persistent_region_where_it_was_and_keeps_other_memmap_forms()
    {
        var current = KexecCommandLine.Parse("a memmap=16M$0x1000000 memmap=64M!512M b memmap=32M!1G c");

        var next = KexecCommandLine.ComposeNext(current, new NextCommandLineOptions { PersistentMemoryRegions = ["128M!2G", "128M!2G", "64M!4G"] });

        Assert.That(next.ToString(), Is.EqualTo("a memmap=16M$0x1000000 memmap=128M!2G memmap=64M!4G b c"));
    }

    [Test]
    public void ComposeNext_appends_the_region_when_the_current_line_has_none()
    {
        var next = KexecCommandLine.ComposeNext(KexecCommandLine.Parse("a -- init"), new NextCommandLineOptions { PersistentMemoryRegions = ["64M!512M"] });

        Assert.That(next.ToString(), Is.EqualTo("a memmap=64M!512M -- init"));
    }

    [Test]
    public void ComposeNext_keeps_the_current_region_when_the_store_gives_none()
    {
        var next = KexecCommandLine.ComposeNext(KexecCommandLine.Parse("memmap=64M!512M x"), new NextCommandLineOptions());

        Assert.That(next.ToString(), Is.EqualTo("memmap=64M!512M x"));
    }

    [Test]
    public void Untouched_duplicates_are_kept_because_the_kernel_sees_each()
    {
        var next = KexecCommandLine.ComposeNext(KexecCommandLine.Parse("console=tty0 console=ttyS0,115200 quiet quiet"), new NextCommandLineOptions());

        Assert.That(next.ToString(), Is.EqualTo("console=tty0 console=ttyS0,115200 quiet quiet"));
    }

    [Test]
    public void Set_replaces_the_first_duplicate_in_place_and_drops_the_rest()
    {
        var line = KexecCommandLine.Parse("loglevel=3 a loglevel=7 b").Set("loglevel", "4");

        Assert.That(line.ToString(), Is.EqualTo("loglevel=4 a b"));
    }

    [Test]
    public void Names_match_with_dash_and_underscore_as_the_same_character_like_the_kernel()
    {
        var line = KexecCommandLine.Parse("nmi_watchdog=1 rebootless-resume=x").Set("nmi-watchdog", "0");

        Assert.That(line.ToString(), Is.EqualTo("nmi-watchdog=0 rebootless-resume=x"));
        Assert.That(KexecCommandLine.ComposeNext(line, new NextCommandLineOptions()).ToString(), Is.EqualTo("nmi-watchdog=0 rebootless-resume=x"),
            "only '-' and '_' are equal: 'rebootless-resume' is not the resume marker 'rebootless.resume'");
        Assert.That(KexecCommandLine.Parse("a rebootless_resume=x").Remove("rebootless-resume").ToString(), Is.EqualTo("a"));
    }

    [Test]
    public void Set_quotes_a_value_with_spaces_and_a_bare_flag_has_no_equals()
    {
        var line = KexecCommandLine.Parse("a").Set("dyndbg", "module kexec +p").Set("nokaslr", null);

        Assert.That(line.ToString(), Is.EqualTo("a dyndbg=\"module kexec +p\" nokaslr"));
        Assert.That(KexecCommandLine.Parse(line.ToString()).GetValue("dyndbg"), Is.EqualTo("module kexec +p"), "round-trips");
    }

    [TestCase("bad\"name", "v")]
    [TestCase("with space", "v")]
    [TestCase("a=b", "v")]
    [TestCase("", "v")]
    [TestCase("--", null)]
    [TestCase("ok", "has\"quote")]
    [TestCase("ok", "new\nline")]
    public void Set_refuses_what_the_command_line_cannot_carry(string name, string? value)
    {
        var ex = Assert.Throws<KexecException>(() => KexecCommandLine.Parse("a").Set(name, value));

        Assert.That(ex!.Reason, Is.EqualTo(KexecFailureReason.InvalidCommandLine));
    }

    [Test]
    public void Resume_set_id_with_a_quote_is_refused()
    {
        var ex = Assert.Throws<KexecException>(() =>
            KexecCommandLine.ComposeNext(KexecCommandLine.Parse("a"), new NextCommandLineOptions { ResumeSetId = "x\"y" }));

        Assert.That(ex!.Reason, Is.EqualTo(KexecFailureReason.InvalidCommandLine));
    }

    [Test]
    public void Add_appends_a_repeatable_parameter()
    {
        Assert.That(KexecCommandLine.Parse("memmap=1M!1G").Add("memmap", "1M!2G").ToString(), Is.EqualTo("memmap=1M!1G memmap=1M!2G"));
    }

    [Test]
    public void Line_of_exactly_the_limit_minus_the_nul_fits_and_one_more_byte_does_not()
    {
        var fits = "x=" + new string('a', KexecCommandLine.DefaultMaxBytes - 3); // 2047 bytes + NUL = 2048
        var line = KexecCommandLine.Parse(fits);

        Assert.That(line.ByteCount, Is.EqualTo(2047));
        Assert.That(KexecCommandLine.ComposeNext(line, new NextCommandLineOptions()).ToString(), Is.EqualTo(fits));

        var ex = Assert.Throws<KexecException>(() => KexecCommandLine.ComposeNext(KexecCommandLine.Parse(fits + "a"), new NextCommandLineOptions()));
        Assert.That(ex!.Reason, Is.EqualTo(KexecFailureReason.CommandLineTooLong));
        Assert.That(ex.Message, Does.Contain("2049 bytes").And.Contain("at most 2048"));
    }

    [Test]
    public void The_resume_marker_can_push_a_long_line_over_the_limit()
    {
        var current = KexecCommandLine.Parse(string.Join(' ', Enumerable.Range(0, 170).Select(i => $"p{i:D3}=123456")));
        Assert.That(current.ByteCount, Is.EqualTo((170 * 12) - 1));

        var ex = Assert.Throws<KexecException>(() => KexecCommandLine.ComposeNext(current, new NextCommandLineOptions { ResumeSetId = "s" }));
        Assert.That(ex!.Reason, Is.EqualTo(KexecFailureReason.CommandLineTooLong));

        var larger = KexecCommandLine.ComposeNext(current, new NextCommandLineOptions { ResumeSetId = "s", MaxBytes = 4096 });
        Assert.That(larger.ToString(), Does.EndWith(" rebootless.resume=s"));

        var trimmed = KexecCommandLine.ComposeNext(current, new NextCommandLineOptions
        {
            ResumeSetId = "s",
            RemoveParameters = [.. Enumerable.Range(0, 20).Select(i => $"p{i:D3}")],
        });
        Assert.That(trimmed.ByteCount, Is.LessThan(2048));
    }

    [Test]
    public void Length_counts_utf8_bytes_not_characters()
    {
        var line = KexecCommandLine.Parse("x=" + new string('é', 1023)); // 2 + 2046 bytes

        Assert.That(line.ByteCount, Is.EqualTo(2048));
        Assert.That(() => line.EnsureFits(), Throws.TypeOf<KexecException>());
    }

    [Test]
    public void This_hosts_real_proc_cmdline_round_trips()
    {
        var text = File.ReadAllText("/proc/cmdline");
        var line = KexecCommandLine.ReadCurrent();

        Assert.That(line.ToString(), Is.EqualTo(string.Join(' ', text.Split((char[])[' ', '\n', '\t'], StringSplitOptions.RemoveEmptyEntries))));
    }
}
