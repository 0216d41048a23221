// The gate host requests pass to enter a pool. Invariants: once Close is called no request
// enters (TryEnter is false, and the caller refuses it with NotOwnerException); the task Close
// returns completes only when every request that entered before has left, so the pool's final
// checkpoint comes after the last write it acknowledged and its memory is freed only after the
// last request touched it. One interlocked add on entry and one on exit; nothing is allocated
// per request (one that does not complete at once completes through a pooled source).
using System.Collections.Concurrent;
using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Threading.Tasks.Sources;

namespace Target.Dedup.Engine;

internal sealed class HostGate
{
    /// <summary>Set in _state once closed; the bits below it count the requests inside.</summary>
    private const int ClosedBit = 1 << 30;

    /// <summary>Completion sources of operations that finished, for reuse (as many as were ever in flight at once).</summary>
    private readonly ConcurrentQueue<Leaving> _leaving = new();
    private readonly TaskCompletionSource _drained = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int _state;

    /// <summary>Requests inside the gate now.</summary>
    public int Inside => Volatile.Read(ref _state) & ~ClosedBit;

    public bool IsClosed => (Volatile.Read(ref _state) & ClosedBit) != 0;

    /// <summary>Enters unless the gate is closed; a true result must be paired with one <see cref="Exit"/>.</summary>
    public bool TryEnter()
    {
        if ((Interlocked.Increment(ref _state) & ClosedBit) == 0) return true;
        Exit();
        return false;
    }

    public void Exit()
    {
        int state = Interlocked.Decrement(ref _state);
        if (state == ClosedBit) _drained.TrySetResult();
    }

    /// <summary>Refuses every later request; completes when the requests inside have left.</summary>
    public Task CloseAsync()
    {
        int before = Interlocked.Or(ref _state, ClosedBit);
        if ((before & ~ClosedBit) == 0) _drained.TrySetResult();
        return _drained.Task;
    }

    /// <summary>
    /// Runs <paramref name="operation"/> inside the gate: refused with NotOwnerException when the
    /// gate is closed, and leaves when the operation completes or throws. A static lambda and a
    /// struct state keep it allocation-free.
    /// </summary>
    public ValueTask Run<TState>(Func<TState, ValueTask> operation, TState state) => ExitWhenDone(Start(operation, state));

    /// <inheritdoc cref="Run{TState}(Func{TState, ValueTask}, TState)"/>
    public ValueTask<T> Run<TState, T>(Func<TState, ValueTask<T>> operation, TState state) => ExitWhenDone(Start(operation, state));

    /// <summary>Enters and starts the operation; exits again when it throws before returning its task.</summary>
    private TTask Start<TState, TTask>(Func<TState, TTask> operation, TState state)
    {
        Enter();
        try
        {
            return operation(state);
        }
        catch
        {
            Exit();
            throw;
        }
    }

    /// <summary>Enters, or throws NotOwnerException when the gate is closed; pair with one <see cref="Exit"/>.</summary>
    public void Enter()
    {
        if (!TryEnter()) ThrowClosed();
    }

    [DoesNotReturn, MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowClosed() => throw new NotOwnerException("the pool is closing: no new requests");

    /// <summary>Exits when <paramref name="operation"/> completes (at once when it already has).</summary>
    private ValueTask ExitWhenDone(ValueTask operation)
    {
        if (!operation.IsCompleted) return (_leaving.TryDequeue(out Leaving? leaving) ? leaving : new Leaving(this)).Start(operation);
        Exit();
        return operation;
    }

    /// <inheritdoc cref="ExitWhenDone(ValueTask)"/>
    private ValueTask<T> ExitWhenDone<T>(ValueTask<T> operation)
    {
        if (!operation.IsCompleted) return ExitWhenDoneAsync(operation);
        Exit();
        return operation;
    }

    // ValueTask<T> operations (compare-and-write) are rare enough for the runtime's pooled async box,
    // which keeps only a few boxes per core: a device read at QD32 would allocate one per read.
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<T> ExitWhenDoneAsync<T>(ValueTask<T> operation)
    {
        try
        {
            return await operation.ConfigureAwait(false);
        }
        finally
        {
            Exit();
        }
    }

    /// <summary>
    /// What a host sees of an operation that did not complete at once: it completes when the
    /// operation does, right after the request left the gate (on the operation's completing
    /// thread, so no thread hop is added), then goes back to the gate's queue for reuse.
    /// </summary>
    private sealed class Leaving : IValueTaskSource
    {
        private readonly HostGate _gate;
        private readonly Action _operationDone;
        private ManualResetValueTaskSourceCore<bool> _core;
        private ConfiguredValueTaskAwaitable.ConfiguredValueTaskAwaiter _operation;

        public Leaving(HostGate gate)
        {
            _gate = gate;
            _operationDone = OperationDone;
        }

        public ValueTask Start(ValueTask operation)
        {
            var task = new ValueTask(this, _core.Version);
            _operation = operation.ConfigureAwait(false).GetAwaiter();
            _operation.UnsafeOnCompleted(_operationDone);
            return task;
        }

        private void OperationDone()
        {
            Exception? error = null;
            try
            {
                _operation.GetResult();
            }
            catch (Exception e)
            {
                error = e;
            }
            _operation = default;
            _gate.Exit();
            if (error is null) _core.SetResult(true);
            else _core.SetException(error);
        }

        public void GetResult(short token)
        {
            try
            {
                _core.GetResult(token);
            }
            finally
            {
                _core.Reset();
                _gate._leaving.Enqueue(this);
            }
        }

        public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

        public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
            _core.OnCompleted(continuation, state, token, flags);
    }
}
