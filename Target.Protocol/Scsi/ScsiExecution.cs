// A task's reusable completion for a command whose I/O did not complete at once: ExecuteAsync
// hands out a ValueTask over it instead of an async state machine box, so a READ or WRITE that
// the volume completes later (an io_uring read, a write waiting for cache space) allocates
// nothing. Invariants: one command at a time per task (the transport reuses a task only after it
// observed the last execution's result); a failure of the I/O becomes sense through the logical
// unit before the ValueTask completes, so the ValueTask itself never faults.
using System.Runtime.CompilerServices;
using System.Threading.Tasks.Sources;

namespace Target.Protocol.Scsi;

public sealed class ScsiExecution : IValueTaskSource
{
    private readonly ScsiTask _task;
    private readonly Action _onIoCompleted;
    private ManualResetValueTaskSourceCore<bool> _core;
    private ConfiguredValueTaskAwaitable.ConfiguredValueTaskAwaiter _io;
    private ScsiLogicalUnit? _unit;

    internal ScsiExecution(ScsiTask task)
    {
        _task = task;
        _onIoCompleted = OnIoCompleted;
    }

    /// <summary>Completes (never faulting) once <paramref name="io"/> did, its failure turned into sense by <paramref name="unit"/>.</summary>
    internal ValueTask Await(ValueTask io, ScsiLogicalUnit unit)
    {
        _unit = unit;
        _core.Reset();
        short version = _core.Version;
        _io = io.ConfigureAwait(false).GetAwaiter();
        _io.UnsafeOnCompleted(_onIoCompleted);
        return new ValueTask(this, version);
    }

    private void OnIoCompleted()
    {
        try
        {
            _io.GetResult();
        }
        catch (Exception ex)
        {
            _unit!.FailCommand(_task, ex);
        }
        _io = default;
        _unit = null;
        _core.SetResult(true);
    }

    void IValueTaskSource.GetResult(short token) => _core.GetResult(token);

    ValueTaskSourceStatus IValueTaskSource.GetStatus(short token) => _core.GetStatus(token);

    void IValueTaskSource.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);
}
