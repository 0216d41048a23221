// An auto-reset signal for async waiters: Set wakes the current waiters; a Set with no waiter is remembered once.
namespace Target.Dedup.Engine;

internal sealed class Signal
{
    private readonly object _gate = new();
    private TaskCompletionSource? _waiters;
    private bool _set;

    public void Set()
    {
        TaskCompletionSource? wake;
        lock (_gate)
        {
            wake = _waiters;
            _waiters = null;
            if (wake == null) _set = true;
        }
        wake?.TrySetResult();
    }

    public Task WaitAsync(int timeoutMs, CancellationToken ct)
    {
        lock (_gate)
        {
            if (_set) { _set = false; return Task.CompletedTask; }
            _waiters ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            Task wait = _waiters.Task;
            return timeoutMs < 0 && !ct.CanBeCanceled ? wait : wait.WaitAsync(TimeSpan.FromMilliseconds(timeoutMs < 0 ? Timeout.Infinite : timeoutMs), ct).ContinueWith(static _ => { }, TaskScheduler.Default);
        }
    }
}
