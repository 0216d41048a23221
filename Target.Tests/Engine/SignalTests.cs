// The engine's async signal (destager and cleaner wake-ups, writers waiting for free pages or
// space). Invariants: a Set is remembered until one wait consumes it; every waiter of a
// generation wakes on one Set; a wait with no Set ends on the signal's tick; waiting allocates
// nothing per waiter (all waiters of a generation share one task).
using Target.Dedup.Engine;

namespace Target.Tests.Engine;

public sealed class SignalTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task ASetBeforeTheWaitIsRememberedForOneWait()
    {
        var signal = new Signal(tickMs: 60_000);
        signal.Set();
        Assert.True(signal.WaitAsync().IsCompleted);
        Task second = signal.WaitAsync();
        Assert.False(second.IsCompleted);
        signal.Set();
        await second.WaitAsync(Patience);
    }

    [Fact]
    public async Task OneSetWakesEveryWaiterOfAGeneration()
    {
        var signal = new Signal(tickMs: 60_000);
        Task[] waits = Enumerable.Range(0, 50).Select(_ => signal.WaitAsync()).ToArray();
        Assert.DoesNotContain(waits, w => w.IsCompleted);
        signal.Set();
        await Task.WhenAll(waits).WaitAsync(Patience);
    }

    [Fact]
    public async Task AWaitWithoutASetEndsOnTheTick()
    {
        var signal = new Signal(tickMs: 50);
        for (int i = 0; i < 3; i++)
        {
            Task wait = signal.WaitAsync();
            await wait.WaitAsync(Patience);
        }
    }

    [Fact]
    public void WaitersOfAGenerationAllocateNothing()
    {
        var signal = new Signal(tickMs: 60_000);
        signal.WaitAsync(); // starts the generation (its one task)
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 10_000; i++) signal.WaitAsync();
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.Equal(0, allocated);
        signal.Set();
    }
}
