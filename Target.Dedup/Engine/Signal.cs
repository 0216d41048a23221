// An auto-reset signal for async waiters: Set wakes the current waiters and is also remembered,
// so a waiter that arrives after a Set (or whose wait just timed out) returns at once. Waiters
// always re-check their condition, so a spurious wake costs a loop, never correctness.
namespace Target.Dedup.Engine;

internal sealed class Signal
{
    private readonly object _gate = new();
    private TaskCompletionSource? _waiters;
    private bool _set;

    public void Set()
    {
        // Already set and nobody waiting: nothing to do, and no lock (writers call this per request
        // while the cache is past its high watermark). A waiter that consumes the flag right after
        // this check re-checks its condition, which already includes the caller's change.
        if (Volatile.Read(ref _set) && Volatile.Read(ref _waiters) == null) return;
        TaskCompletionSource? wake;
        lock (_gate)
        {
            wake = _waiters;
            _waiters = null;
            _set = true;
        }
        wake?.TrySetResult();
    }

    /// <summary>Completes when Set is called, the timeout passes, or ct is cancelled (never throws).</summary>
    public Task WaitAsync(int timeoutMs, CancellationToken ct)
    {
        Task wait;
        lock (_gate)
        {
            if (_set) { _set = false; return Task.CompletedTask; }
            _waiters ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            wait = _waiters.Task;
        }
        return WaitCoreAsync(wait, timeoutMs, ct);
    }

    private async Task WaitCoreAsync(Task wait, int timeoutMs, CancellationToken ct)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(timeoutMs);
        var cancelled = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using (timeout.Token.UnsafeRegister(static s => ((TaskCompletionSource)s!).TrySetResult(), cancelled).ConfigureAwait(false))
        {
            await Task.WhenAny(wait, cancelled.Task).ConfigureAwait(false);
        }
        lock (_gate)
        {
            if (wait.IsCompleted) _set = false;
        }
    }
}
