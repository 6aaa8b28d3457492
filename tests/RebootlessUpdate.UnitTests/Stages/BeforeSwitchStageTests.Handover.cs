using RebootlessUpdate.Images;
using RebootlessUpdate.Kexec;
using RebootlessUpdate.Pipeline;
using RebootlessUpdate.Stages;
using RebootlessUpdate.UnitTests.Kexec;

namespace RebootlessUpdate.UnitTests.Stages;

/// <summary>The jump of a store the kernel carries (LUO): handed over last, given back when the jump does not happen.</summary>
public partial class BeforeSwitchStageTests
{
    /// <summary>A folder store that records when it is handed over and given back (the LUO store's part in the jump).</summary>
    private sealed class CarriedStore(IImageStore inner, FakeKexecSystem kexec) : IKexecHandoverStore
    {
        public List<string> Events { get; } = [];

        public bool Refuse { get; init; }

        /// <summary>Whether CRIU was let go of the targets (set once they are held).</summary>
        public Func<bool> Committed { get; set; } = () => false;

        public string RootDirectory => inner.RootDirectory;

        public bool CanHandOver(out string reason)
        {
            reason = "";
            return true;
        }

        public IKexecHandover HandOver(string setId)
        {
            Events.Add($"handover {setId} committed={Committed()} reboots={kexec.RebootCalls}");
            return Refuse ? throw new ImageStoreException("the kernel refused the session") : new Handover(this);
        }

        public ImageStoreLock AcquireLock() => inner.AcquireLock();

        public CheckpointSet CreateSet(IReadOnlyList<string> targets) => inner.CreateSet(targets);

        public Task<CheckpointManifest> SealAsync(CheckpointSet checkpointSet, SealOptions options, CancellationToken cancellationToken = default) =>
            inner.SealAsync(checkpointSet, options, cancellationToken);

        public Task<VerificationResult> VerifyAsync(string setId, VerifyOptions? options = null, CancellationToken cancellationToken = default) =>
            inner.VerifyAsync(setId, options, cancellationToken);

        public Task<RestorableSet> OpenForRestoreAsync(string setId, VerifyOptions? options = null, CancellationToken cancellationToken = default) =>
            inner.OpenForRestoreAsync(setId, options, cancellationToken);

        public IReadOnlyList<CheckpointSetInfo> ListSets() => inner.ListSets();

        public void DeleteSet(string setId) => inner.DeleteSet(setId);

        public IReadOnlyList<string> ApplyRetention(int keepSealed) => inner.ApplyRetention(keepSealed);

        public StoreCapacity GetCapacity() => inner.GetCapacity();

        public CapacityEstimate EnsureCapacityFor(IReadOnlyCollection<int> rootPids) => inner.EnsureCapacityFor(rootPids);

        private sealed class Handover(CarriedStore store) : IKexecHandover
        {
            public string Carrier => "a test session";

            public int Files => 3;

            public long Bytes => 42;

            public void GiveBack() => store.Events.Add($"give back reboots={store.Kexec.RebootCalls}");

            public void Dispose() => GiveBack();
        }

        private FakeKexecSystem Kexec => kexec;
    }

    private async Task<(UpdateContext Context, TargetRun.Pending Pending, CarriedStore Store)> SealedWithCarriedStore(bool refuse = false)
    {
        var store = new CarriedStore(_f.Store, _kexec) { Refuse = refuse };
        var context = await Planned(store: store);
        _kexec.Loaded = true;
        var pending = Held(context.Targets[0]);
        store.Committed = () => pending.Decision.Task.IsCompleted;
        context.Targets[0].MarkSealed();
        context.RequireJournal().Transition(JournalState.Sealed, null, context);
        return (context, pending, store);
    }

    [Test]
    public async Task A_carried_store_is_handed_over_after_the_commit_right_before_the_jump_and_given_back_when_it_fails()
    {
        var (context, pending, store) = await SealedWithCarriedStore();
        try
        {
            var e = Assert.ThrowsAsync<KexecException>(async () => await Jump().ExecuteAsync(context, CancellationToken.None));

            Assert.That(e!.Reason, Is.EqualTo(KexecFailureReason.JumpFailed), "the fake reboot(2) returns EINVAL");
            Assert.That(store.Events, Is.EqualTo(new[] { $"handover {context.SetId} committed=True reboots=0", "give back reboots=1" }),
                "handed over once CRIU let the targets go and before reboot(2); given back after the jump failed");
            Assert.That(pending.Decision.Task.Result, Is.True);
            Assert.That(context.PointOfNoReturnPassed, Is.False, "the rollback restores the target from the images given back");
        }
        finally
        {
            context.ReleaseLock();
        }
    }

    [Test]
    public async Task A_carried_store_the_kernel_refuses_is_not_jumped_with_and_the_rollback_restores_from_it()
    {
        var (context, _, store) = await SealedWithCarriedStore(refuse: true);
        try
        {
            var e = Assert.ThrowsAsync<ImageStoreException>(async () => await Jump().ExecuteAsync(context, CancellationToken.None));

            Assert.That(e!.Message, Does.Contain("refused the session"));
            Assert.That(_kexec.RebootCalls, Is.Zero, "no jump without the store in the kernel's hands");
            Assert.That(store.Events, Has.Count.EqualTo(1));
            Assert.That(context.PointOfNoReturnPassed, Is.False);
        }
        finally
        {
            context.ReleaseLock();
        }
    }

    [Test]
    public async Task A_carried_store_is_refused_before_the_commit_where_systemd_would_make_the_jump()
    {
        var (context, pending, store) = await SealedWithCarriedStore();
        try
        {
            _kexec.Write("proc/1/comm", "systemd\n");
            var jump = new JumpStage(new JumpStageOptions
            {
                Jump = new KexecJump(new KexecJumpOptions { UseSystemdWhenPid1 = true }, _kexec,
                    name => name == KexecJumpOptions.AllowanceVariable ? "1" : null, () => true),
            });

            var e = Assert.ThrowsAsync<KexecException>(async () => await jump.ExecuteAsync(context, CancellationToken.None));

            Assert.That(e!.Reason, Is.EqualTo(KexecFailureReason.JumpRefused));
            Assert.That(e.Message, Does.Contain("systemctl kexec").And.Contain("--pmem"));
            Assert.That(pending.Decision.Task.IsCompleted, Is.False, "CRIU still holds the target: the rollback resumes it in place");
            Assert.That(store.Events, Is.Empty);
            Assert.That((_kexec.RebootCalls, _kexec.ToolRuns.Count), Is.EqualTo((0, 0)));
        }
        finally
        {
            context.ReleaseLock();
        }
    }
}
