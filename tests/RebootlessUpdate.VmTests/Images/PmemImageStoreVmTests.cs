using System.Globalization;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.VmTests.Images;

/// <summary>
/// The pmem image store in the VM: a legacy-pmem region (memmap=64M!512M) is
/// formatted and mounted by the library, holds a real CRIU dump across a kexec
/// into the new kernel, and is verified before the restore.
/// </summary>
[NonParallelizable]
public class PmemImageStoreVmTests
{
    private const string LoadPmem = """
        set -eu
        modprobe nd_e820; modprobe nd_pmem
        i=0; while [ ! -b /dev/pmem0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
        [ -b /dev/pmem0 ] || { echo "no /dev/pmem0"; exit 10; }
        """;

    private static string Read(string job, string name) =>
        File.Exists(Path.Combine(job, "images-" + name)) ? File.ReadAllText(Path.Combine(job, "images-" + name)).Trim() : $"(images-{name} missing)";

    [Test]
    public void Dump_into_pmem_store_survives_kexec_verifies_and_the_workload_continues_on_the_new_kernel()
    {
        var testbed = Testbed.Require();
        Testbed.RequireRoot();
        var script = $"""
            {LoadPmem}
            if grep -q 'rebootless.boot=1' /proc/cmdline; then
              dotnet "$AGENT" images-pmem-dump /job || exit 20
              next=$(sed 's/rebootless.boot=1/rebootless.boot=2/' /proc/cmdline)
              kexec -s -l "/boot/vmlinuz-{testbed.NewKernel}" --initrd="/boot/rebootless-initrd-{testbed.NewKernel}.img" --append="$next"
              sync
              kexec -e
              echo "kexec -e returned"; exit 11
            fi
            dotnet "$AGENT" images-pmem-restore /job || exit 21
            """;

        var (job, result) = VmRun.Run(testbed, script, kernel: "old", memmap: "64M!512M", timeoutSeconds: 480);

        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        var countAtDump = long.Parse(Read(job, "count-at-dump"), CultureInfo.InvariantCulture);
        Assert.Multiple(() =>
        {
            Assert.That(Read(job, "kernel-1"), Is.EqualTo(testbed.OldKernel));
            Assert.That(Read(job, "kernel-2"), Is.EqualTo(testbed.NewKernel));
            Assert.That(Read(job, "formatted-1"), Is.EqualTo("True"), "a fresh region is formatted");
            Assert.That(Read(job, "formatted-2"), Is.EqualTo("False"), "our own store is never reformatted");
            Assert.That(Read(job, "memmap-1"), Is.EqualTo("64M!512M").And.EqualTo(Read(job, "booted-memmap-1")));
            Assert.That(Read(job, "memmap-2"), Is.EqualTo(Read(job, "booted-memmap-2")));
            Assert.That(Read(job, "sets-2"), Is.EqualTo(Read(job, "set-id")));
            Assert.That(Read(job, "verify-2"), Does.Contain("verified (Full)"));
            Assert.That(Read(job, "manifest-kernel"), Is.EqualTo(testbed.OldKernel), "the manifest records the kernel before the switch");
            Assert.That(long.Parse(Read(job, "count-before-restore"), CultureInfo.InvariantCulture), Is.EqualTo(countAtDump), "nothing counted while dumped");
            Assert.That(long.Parse(Read(job, "count-after-restore"), CultureInfo.InvariantCulture), Is.GreaterThan(countAtDump + 5));
            Assert.That(Read(job, "alive-after-restore"), Is.EqualTo("True"));
        });
        TestContext.Out.WriteLine($"dax: {Read(job, "dax-1")}, total bytes: {Read(job, "total-bytes")}, estimate: {Read(job, "estimate")}");
    }

    [Test]
    public void A_flipped_byte_in_a_pmem_set_is_named_and_restore_is_refused_and_a_foreign_device_is_never_formatted()
    {
        var testbed = Testbed.Require();
        Testbed.RequireRoot();
        var script = $"""
            {LoadPmem}
            dotnet "$AGENT" images-pmem-tamper /job
            """;

        var (job, result) = VmRun.Run(testbed, script, kernel: "old", timeoutSeconds: 300);

        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        var flipped = Read(job, "flipped");
        Assert.Multiple(() =>
        {
            Assert.That(Read(job, "refused"), Does.Contain("refusing to format /dev/pmem0").And.Contain("labelled 'precious'"));
            Assert.That(Read(job, "formatted-1"), Is.EqualTo("True"));
            Assert.That(flipped, Does.StartWith("pages-"));
            Assert.That(Read(job, "verify"), Is.EqualTo($"ContentChanged:{flipped}"));
            Assert.That(Read(job, "restore-refused"), Does.Contain(flipped).And.Contain("cannot be restored"));
        });
    }
}
