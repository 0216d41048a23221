// An allocation-free auto-reset signal with one waiter at a time. Set() before WaitAsync() is
// remembered (once); several Set() calls before a wait collapse into one wake-up.
using System.Threading.Tasks.Sources;

namespace Target.Protocol.Nbd;

internal sealed class AsyncSignal : IValueTaskSource
{
    private const int Idle = 0;
    private const int Signaled = 1;
    private const int Waiting = 2;

    private ManualResetValueTaskSourceCore<bool> _core;
    private int _state;

    /// <param name="runContinuationsAsynchronously">
    /// False lets the waiter run inline on the thread that calls Set (no thread hop); the caller
    /// must then hold no lock when it calls Set.
    /// </param>
    public AsyncSignal(bool runContinuationsAsynchronously)
    {
        _core.RunContinuationsAsynchronously = runContinuationsAsynchronously;
    }

    /// <summary>Completes when Set is (or was already) called. Only one caller may wait at a time.</summary>
    public ValueTask WaitAsync()
    {
        if (Interlocked.CompareExchange(ref _state, Idle, Signaled) == Signaled) return default;
        _core.Reset();
        if (Interlocked.CompareExchange(ref _state, Waiting, Idle) == Idle) return new ValueTask(this, _core.Version);
        // A Set slipped in between: the state is Signaled; consume it.
        Volatile.Write(ref _state, Idle);
        return default;
    }

    public void Set()
    {
        while (true)
        {
            int state = Volatile.Read(ref _state);
            if (state == Signaled) return;
            if (state == Idle)
            {
                if (Interlocked.CompareExchange(ref _state, Signaled, Idle) == Idle) return;
                continue;
            }
            if (Interlocked.CompareExchange(ref _state, Idle, Waiting) == Waiting)
            {
                _core.SetResult(true);
                return;
            }
        }
    }

    void IValueTaskSource.GetResult(short token) => _core.GetResult(token);

    ValueTaskSourceStatus IValueTaskSource.GetStatus(short token) => _core.GetStatus(token);

    void IValueTaskSource.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
        => _core.OnCompleted(continuation, state, token, flags);
}
