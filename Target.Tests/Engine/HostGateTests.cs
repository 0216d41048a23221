// The host gate on its own. Invariants: a closed gate admits nothing; its close completes only
// once every request inside has left (at once when none is); an operation run through the gate
// keeps its result or exception, and leaves the gate before its caller sees it complete.
using System.Threading.Tasks.Sources;
using Target.Dedup;
using Target.Dedup.Engine;

namespace Target.Tests.Engine;

public sealed class HostGateTests
{
    [Fact]
    public async Task CloseWaitsForTheRequestsInsideAndRefusesNewOnes()
    {
        var gate = new HostGate();
        Assert.True(gate.TryEnter());
        Assert.True(gate.TryEnter());
        Task closed = gate.CloseAsync();
        Assert.True(gate.IsClosed);
        Assert.False(gate.TryEnter());
        Assert.Throws<NotOwnerException>(gate.Enter);
        Assert.Equal(2, gate.Inside);
        gate.Exit();
        await Task.Delay(20);
        Assert.False(closed.IsCompleted);
        gate.Exit();
        await closed.WaitAsync(TimeSpan.FromSeconds(5));
        Assert.Equal(0, gate.Inside);
        Assert.True(new HostGate().CloseAsync().IsCompleted);
    }

    [Fact]
    public async Task AnOperationRunThroughTheGateLeavesItWhenItCompletesAndKeepsItsOutcome()
    {
        var gate = new HostGate();
        var pending = new Pending();
        ValueTask run = gate.Run(static p => p.Task, pending);
        Assert.Equal(1, gate.Inside);
        Task closed = gate.CloseAsync();
        Assert.False(closed.IsCompleted);
        int insideSeenByCaller = -1;
        Task caller = Task.Run(async () =>
        {
            await run;
            insideSeenByCaller = gate.Inside;
        });
        pending.Complete(error: null);
        await caller.WaitAsync(TimeSpan.FromSeconds(5));
        Assert.Equal(0, insideSeenByCaller);
        await closed.WaitAsync(TimeSpan.FromSeconds(5));

        var failing = new HostGate();
        var failed = new Pending();
        ValueTask failedRun = failing.Run(static p => p.Task, failed);
        failed.Complete(new MediaErrorException("device"));
        await Assert.ThrowsAsync<MediaErrorException>(async () => await failedRun);
        Assert.Equal(0, failing.Inside);
        await Assert.ThrowsAsync<OutOfRangeException>(async () => await failing.Run<int>(static _ => throw new OutOfRangeException("sync"), 0));
        Assert.Equal(0, failing.Inside);
        Assert.Equal(7, await failing.Run(static x => ValueTask.FromResult(x + 1), 6));
        Assert.Equal(0, failing.Inside);
    }

    /// <summary>An operation that completes when told to, from another thread.</summary>
    private sealed class Pending : IValueTaskSource
    {
        private ManualResetValueTaskSourceCore<bool> _core = new() { RunContinuationsAsynchronously = true };

        public ValueTask Task => new(this, _core.Version);

        public void Complete(Exception? error)
        {
            if (error is null) _core.SetResult(true);
            else _core.SetException(error);
        }

        public void GetResult(short token) => _core.GetResult(token);

        public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

        public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
            _core.OnCompleted(continuation, state, token, flags);
    }
}
