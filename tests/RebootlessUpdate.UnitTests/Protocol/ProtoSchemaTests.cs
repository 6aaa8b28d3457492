using Google.Protobuf.Reflection;
using RebootlessUpdate.Criu.Protocol;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.UnitTests.Protocol;

/// <summary>
/// Our proto files against the schemas the installed CRIU ships, so that a
/// drift (a renumbered, retyped or new field) is caught.
/// </summary>
public class ProtoSchemaTests
{
    private static readonly string[] StatsMessages = ["dump_stats_entry", "restore_stats_entry", "stats_entry"];

    private static ProtoSchema Ours(FileDescriptor file) =>
        ProtoSchema.FromDescriptor(FileDescriptorProto.Parser.ParseFrom(file.SerializedData));

    [Test]
    public void Rpc_schema_matches_the_upstream_rpc_proto_of_the_installed_criu()
    {
        var testbed = Testbed.Require();
        if (!File.Exists(testbed.UpstreamRpcProto))
        {
            Testbed.Missing($"libcriu-dev's {testbed.UpstreamRpcProto}");
        }

        var upstream = ProtoSchema.FromText(File.ReadAllText(testbed.UpstreamRpcProto));
        var ours = Ours(RpcReflection.Descriptor);

        Assert.That(upstream.Messages, Has.Count.GreaterThanOrEqualTo(15), "the upstream file did not parse:\n" + upstream);
        Assert.That(ours.Differences(upstream), Is.Empty);
    }

    [Test]
    public void Stats_schema_matches_pycriu_stats_module_of_the_installed_criu()
    {
        var testbed = Testbed.Require();
        var module = Path.Combine(testbed.RootFs, "usr/lib/python3/dist-packages/pycriu/images/stats_pb2.py");
        if (!File.Exists(module))
        {
            Testbed.Missing($"python3-pycriu's {module}");
        }

        var upstream = ProtoSchema.FromDescriptor(ProtoSchema.FromPythonModule(File.ReadAllText(module)));
        var ours = Ours(StatsReflection.Descriptor);

        Assert.That(upstream.Messages.Keys, Is.EquivalentTo(StatsMessages));
        Assert.That(ours.Differences(upstream), Is.Empty);
    }

    [Test]
    public void Pstree_schema_matches_pycriu_pstree_module_of_the_installed_criu()
    {
        var testbed = Testbed.Require();
        var module = Path.Combine(testbed.RootFs, "usr/lib/python3/dist-packages/pycriu/images/pstree_pb2.py");
        if (!File.Exists(module))
        {
            Testbed.Missing($"python3-pycriu's {module}");
        }

        var upstream = ProtoSchema.FromDescriptor(ProtoSchema.FromPythonModule(File.ReadAllText(module)));

        Assert.That(upstream.Messages.Keys, Is.EquivalentTo(new[] { "pstree_entry" }));
        Assert.That(Ours(PstreeReflection.Descriptor).Differences(upstream), Is.Empty);
    }

    [Test]
    public void Text_parser_reads_labels_types_and_defaults()
    {
        var schema = ProtoSchema.FromText("""
            /* block */ message m {
              required int32 a = 1 [default = -1]; // trailing
              optional uint32 b = 20 [default = 0xffffffff];
              repeated other c = 3;
            };
            enum e { X = 1; Y = 2; }
            """);

        Assert.That(schema.Messages["m"][1], Is.EqualTo("required int32 a [default = -1]"));
        Assert.That(schema.Messages["m"][20], Is.EqualTo("optional uint32 b [default = 4294967295]"));
        Assert.That(schema.Messages["m"][3], Is.EqualTo("repeated other c"));
        Assert.That(schema.Enums["e"][2], Is.EqualTo("Y"));
    }

    [TestCase("required int32 images_dir_fd = 1 [default = -1];", "required int32 images_dir_fd = 1 [default = -2];", "#1")]
    [TestCase("optional string images_dir = 68;", "optional string images_dir = 69;", "#68")]
    [TestCase("optional bool leave_running = 3;", "optional int32 leave_running = 3;", "#3")]
    [TestCase("optional bool leave_running = 3;", "required bool leave_running = 3;", "#3")]
    public void Drift_in_a_field_is_reported(string original, string drifted, string expectedField)
    {
        var ourText = $"message criu_opts {{ {original} }}";
        var theirText = $"message criu_opts {{ {drifted} }}";

        var diffs = ProtoSchema.FromText(ourText).Differences(ProtoSchema.FromText(theirText));

        Assert.That(diffs, Has.Some.Contains(expectedField));
    }

    [Test]
    public void A_message_only_upstream_is_reported()
    {
        var diffs = ProtoSchema.FromText("message a { optional int32 x = 1; }")
            .Differences(ProtoSchema.FromText("message a { optional int32 x = 1; } message b { optional int32 y = 1; }"));

        Assert.That(diffs, Has.Count.EqualTo(1).And.Contains("message b: upstream has it, ours does not"));
    }

    [Test]
    public void Python_bytes_literal_with_escapes_decodes_to_the_descriptor()
    {
        var file = new FileDescriptorProto { Name = "t.proto", MessageType = { new DescriptorProto { Name = "m\n'\\x" } } };
        var bytes = Google.Protobuf.MessageExtensions.ToByteArray(file);
        var literal = string.Concat(bytes.Select(b => b switch
        {
            (byte)'\n' => "\\n",
            (byte)'\'' => "\\'",
            (byte)'\\' => "\\\\",
            >= 0x20 and < 0x7f => ((char)b).ToString(),
            _ => $"\\x{b:x2}",
        }));

        var parsed = ProtoSchema.FromPythonModule($"_b = _descriptor_pool.Default().AddSerializedFile(b'{literal}')\n");

        Assert.That(parsed, Is.EqualTo(file));
    }
}
