// A volume decorator that counts operations, bytes, errors and latency per op type.
// Invariants: every call is forwarded unchanged (same arguments, same exceptions); the fast path
// (inner call completed synchronously) allocates nothing, the slow path a pooled completion object.
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Threading.Tasks.Sources;
using Target.Dedup;

namespace Target.Metrics;

public sealed class MeteredVolume : IBlockVolume
{
    private readonly IBlockVolume _inner;
    private readonly VolumeMetrics _metrics;

    public MeteredVolume(IBlockVolume inner, VolumeMetrics? metrics = null)
    {
        _inner = inner;
        _metrics = metrics ?? new VolumeMetrics();
    }

    public IBlockVolume Inner => _inner;

    public VolumeMetrics Metrics => _metrics;

    public string Name => _inner.Name;
    public long SizeBytes => _inner.SizeBytes;
    public int LogicalBlockSize => _inner.LogicalBlockSize;
    public int PreferredBlockSize => _inner.PreferredBlockSize;
    public Guid Uuid => _inner.Uuid;
    public VolumeCapabilities Capabilities => _inner.Capabilities;

    public ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken ct)
    {
        long start = Stopwatch.GetTimestamp();
        ValueTask task;
        try
        {
            task = _inner.ReadAsync(offset, destination, ct);
        }
        catch
        {
            _metrics[VolumeOp.Read].Failed();
            throw;
        }
        return Complete(task, VolumeOp.Read, destination.Length, start);
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, WriteFlags flags, CancellationToken ct)
    {
        long start = Stopwatch.GetTimestamp();
        ValueTask task;
        try
        {
            task = _inner.WriteAsync(offset, source, flags, ct);
        }
        catch
        {
            _metrics[VolumeOp.Write].Failed();
            throw;
        }
        return Complete(task, VolumeOp.Write, source.Length, start);
    }

    public ValueTask FlushAsync(CancellationToken ct)
    {
        long start = Stopwatch.GetTimestamp();
        ValueTask task;
        try
        {
            task = _inner.FlushAsync(ct);
        }
        catch
        {
            _metrics[VolumeOp.Flush].Failed();
            throw;
        }
        return Complete(task, VolumeOp.Flush, 0, start);
    }

    public ValueTask TrimAsync(long offset, long length, CancellationToken ct)
    {
        long start = Stopwatch.GetTimestamp();
        ValueTask task;
        try
        {
            task = _inner.TrimAsync(offset, length, ct);
        }
        catch
        {
            _metrics[VolumeOp.Trim].Failed();
            throw;
        }
        return Complete(task, VolumeOp.Trim, length, start);
    }

    public ValueTask WriteZeroesAsync(long offset, long length, ZeroFlags flags, CancellationToken ct)
    {
        long start = Stopwatch.GetTimestamp();
        ValueTask task;
        try
        {
            task = _inner.WriteZeroesAsync(offset, length, flags, ct);
        }
        catch
        {
            _metrics[VolumeOp.WriteZeroes].Failed();
            throw;
        }
        return Complete(task, VolumeOp.WriteZeroes, length, start);
    }

    public ValueTask<ExtentList> GetAllocationAsync(long offset, long length, CancellationToken ct)
    {
        long start = Stopwatch.GetTimestamp();
        ValueTask<ExtentList> task;
        try
        {
            task = _inner.GetAllocationAsync(offset, length, ct);
        }
        catch
        {
            _metrics[VolumeOp.BlockStatus].Failed();
            throw;
        }
        return Complete(task, VolumeOp.BlockStatus, length, start);
    }

    public ValueTask<bool> CompareAndWriteAsync(long offset, ReadOnlyMemory<byte> expected, ReadOnlyMemory<byte> source, CancellationToken ct)
    {
        long start = Stopwatch.GetTimestamp();
        ValueTask<bool> task;
        try
        {
            task = _inner.CompareAndWriteAsync(offset, expected, source, ct);
        }
        catch
        {
            _metrics[VolumeOp.CompareAndWrite].Failed();
            throw;
        }
        return Complete(task, VolumeOp.CompareAndWrite, source.Length, start);
    }

    public ValueTask CopyAsync(long sourceOffset, IBlockVolume destination, long destinationOffset, long length, CancellationToken ct)
    {
        // The engine shares chunks only between its own volumes: hand it the undecorated one.
        IBlockVolume target = destination is MeteredVolume metered ? metered.Inner : destination;
        long start = Stopwatch.GetTimestamp();
        ValueTask task;
        try
        {
            task = _inner.CopyAsync(sourceOffset, target, destinationOffset, length, ct);
        }
        catch
        {
            _metrics[VolumeOp.Copy].Failed();
            throw;
        }
        return Complete(task, VolumeOp.Copy, length, start);
    }

    private ValueTask Complete(ValueTask task, VolumeOp op, long bytes, long start)
    {
        if (task.IsCompletedSuccessfully)
        {
            task.GetAwaiter().GetResult();
            _metrics[op].Completed(bytes, start);
            return default;
        }
        return AwaitAsync(task, op, bytes, start);
    }

    private ValueTask<T> Complete<T>(ValueTask<T> task, VolumeOp op, long bytes, long start)
    {
        if (task.IsCompletedSuccessfully)
        {
            T result = task.Result;
            _metrics[op].Completed(bytes, start);
            return new ValueTask<T>(result);
        }
        return AwaitAsync(task, op, bytes, start);
    }

    /// <summary>
    /// An inner call still running: a pooled completion records the metrics when it ends. (The
    /// pooling async builder allocated here: its boxes are rented on the connection's thread and
    /// returned on the I/O thread that completes the call, so its per-thread caches stay empty.)
    /// </summary>
    private ValueTask AwaitAsync(ValueTask task, VolumeOp op, long bytes, long start) => PendingOperation.Start(task, _metrics[op], bytes, start);

    /// <summary>A pooled IValueTaskSource that completes after the inner ValueTask, counting it as done or failed.</summary>
    private sealed class PendingOperation : IValueTaskSource
    {
        private static readonly ConcurrentQueue<PendingOperation> s_free = new();

        private readonly Action _onInnerCompleted;
        private ManualResetValueTaskSourceCore<bool> _core;
        private ConfiguredValueTaskAwaitable.ConfiguredValueTaskAwaiter _inner;
        private OpMetrics? _metrics;
        private long _bytes;
        private long _start;

        private PendingOperation() => _onInnerCompleted = OnInnerCompleted;

        public static ValueTask Start(ValueTask inner, OpMetrics metrics, long bytes, long start)
        {
            if (!s_free.TryDequeue(out PendingOperation? operation)) operation = new PendingOperation();
            operation._metrics = metrics;
            operation._bytes = bytes;
            operation._start = start;
            var outer = new ValueTask(operation, operation._core.Version);
            operation._inner = inner.ConfigureAwait(false).GetAwaiter();
            operation._inner.UnsafeOnCompleted(operation._onInnerCompleted);
            return outer;
        }

        private void OnInnerCompleted()
        {
            OpMetrics metrics = _metrics!;
            try
            {
                _inner.GetResult();
            }
            catch (Exception e)
            {
                _inner = default;
                metrics.Failed();
                _core.SetException(e);
                return;
            }
            _inner = default;
            metrics.Completed(_bytes, _start);
            _core.SetResult(true);
        }

        void IValueTaskSource.GetResult(short token)
        {
            try
            {
                _core.GetResult(token);
            }
            finally
            {
                _core.Reset();
                _metrics = null;
                s_free.Enqueue(this);
            }
        }

        ValueTaskSourceStatus IValueTaskSource.GetStatus(short token) => _core.GetStatus(token);

        void IValueTaskSource.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
            => _core.OnCompleted(continuation, state, token, flags);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<T> AwaitAsync<T>(ValueTask<T> task, VolumeOp op, long bytes, long start)
    {
        T result;
        try
        {
            result = await task.ConfigureAwait(false);
        }
        catch
        {
            _metrics[op].Failed();
            throw;
        }
        _metrics[op].Completed(bytes, start);
        return result;
    }
}
