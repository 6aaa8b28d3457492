using RebootlessUpdate.Images;

namespace RebootlessUpdate.UnitTests.Images;

public class CapacityEstimatorTests
{
    private string _proc = null!;

    [SetUp]
    public void SetUp() => _proc = Directory.CreateTempSubdirectory("rebootless-fakeproc-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(_proc, recursive: true);

    private void Process(int pid, long anonKib, long swapKib, long shmemKib, params int[] children)
    {
        var task = Directory.CreateDirectory(Path.Combine(_proc, pid.ToString(), "task", pid.ToString())).FullName;
        File.WriteAllText(Path.Combine(task, "children"), string.Join(' ', children) + (children.Length > 0 ? " " : string.Empty));
        File.WriteAllText(Path.Combine(_proc, pid.ToString(), "smaps_rollup"), $"""
            55d0c0a00000-7ffd1d3fe000 ---p 00000000 00:00 0                          [rollup]
            Rss:                9000 kB
            Pss:                5000 kB
            Pss_Anon:           {anonKib} kB
            Pss_File:           1000 kB
            Pss_Shmem:          {shmemKib} kB
            Private_Dirty:      {anonKib} kB
            Anonymous:          {anonKib} kB
            Swap:               {swapKib} kB
            SwapPss:            {swapKib} kB
            """);
    }

    [Test]
    public void Sums_anonymous_swap_and_shared_memory_over_the_tree_and_adds_the_margin()
    {
        Process(100, anonKib: 1000, swapKib: 24, shmemKib: 0, 101, 102);
        Process(101, anonKib: 500, swapKib: 0, shmemKib: 10, 103);
        Process(102, anonKib: 300, swapKib: 0, shmemKib: 0);
        Process(103, anonKib: 200, swapKib: 0, shmemKib: 14);
        Process(999, anonKib: 99999, swapKib: 0, shmemKib: 0); // not in the tree

        var (processes, memory, required) = CapacityEstimator.Estimate([100], _proc);

        const long expectedMemory = (1000 + 24 + 500 + 10 + 300 + 200 + 14) * 1024L;
        Assert.Multiple(() =>
        {
            Assert.That(processes, Is.EqualTo(4));
            Assert.That(memory, Is.EqualTo(expectedMemory));
            Assert.That(required, Is.EqualTo(expectedMemory + (long)(expectedMemory * 0.10) + (4 * CapacityEstimator.PerProcessBytes) + CapacityEstimator.FixedBytes));
        });
    }

    [Test]
    public void A_missing_root_pid_is_a_clear_error()
    {
        Assert.That(() => CapacityEstimator.Estimate([4242], _proc), Throws.TypeOf<ImageStoreException>().With.Message.Contains("pid 4242: no such process"));
    }
}
