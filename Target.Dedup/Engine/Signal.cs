// An auto-reset signal for async waiters: Set wakes the current waiters and is also remembered,
// so a waiter that arrives after a Set returns at once. Waiters also wake on the signal's tick
// (one timer, armed when a wait starts a new generation of waiters), never on cancellation: each
// waiter re-checks its condition and its token on every wake, so a wake costs a loop, never
// correctness, and a cancelled wait ends within a tick. Nothing is allocated per wait: all
// waiters of a generation share one task (one allocation per generation, not per waiter). The
// timer needs no disposal: unarmed it holds nothing, armed it fires once.
namespace Target.Dedup.Engine;

internal sealed class Signal
{
    private readonly object _gate = new();
    private readonly int _tickMs;
    private readonly Timer _timer;
    private TaskCompletionSource? _waiters;
    private bool _set;

    public Signal(int tickMs)
    {
        _tickMs = tickMs;
        _timer = new Timer(static s => ((Signal)s!).Wake(remember: false), this, Timeout.Infinite, Timeout.Infinite);
    }

    public void Set()
    {
        // Already set and nobody waiting: nothing to do, and no lock (writers call this per request
        // while the cache is past its high watermark). A waiter that consumes the flag right after
        // this check re-checks its condition, which already includes the caller's change.
        if (Volatile.Read(ref _set) && Volatile.Read(ref _waiters) == null) return;
        Wake(remember: true);
    }

    /// <summary>
    /// Completes when Set is called (or was, since the last wait) or the tick passes; never throws.
    /// The caller re-checks its condition and cancellation afterwards.
    /// </summary>
    public Task WaitAsync()
    {
        lock (_gate)
        {
            if (_set) { _set = false; return Task.CompletedTask; }
            if (_waiters == null)
            {
                _waiters = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                _timer.Change(_tickMs, Timeout.Infinite);
            }
            return _waiters.Task;
        }
    }

    private void Wake(bool remember)
    {
        TaskCompletionSource? wake;
        lock (_gate)
        {
            wake = _waiters;
            _waiters = null;
            // Remembered even when it woke waiters: one that registers just after still returns at
            // once (the cost is one extra loop for the next waiter).
            if (remember) _set = true;
        }
        wake?.TrySetResult();
    }
}
