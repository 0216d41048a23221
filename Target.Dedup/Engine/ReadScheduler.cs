// Device reads off the caller's thread: a fixed set of I/O threads runs reads that need the
// device, so a protocol connection can have many reads in flight (the device sees queue
// depth) while reads served from the cache or holes complete inline. Requests are pooled
// IValueTaskSource objects: no allocation per read in steady state.
// Invariant: every scheduled request completes exactly once, with the read's exception if any.
using System.Collections.Concurrent;
using System.Threading.Tasks.Sources;

namespace Target.Dedup.Engine;

internal sealed class ReadScheduler : IDisposable
{
    /// <summary>Enough threads to keep a queue depth of 32 on the device.</summary>
    public const int DefaultThreads = 32;

    private readonly ConcurrentQueue<ReadRequest> _queue = new();
    private readonly ConcurrentQueue<ReadRequest> _free = new();
    // A kernel-backed semaphore: idle read threads sleep instead of spinning (SemaphoreSlim spins
    // before it blocks, and 32 spinning threads on 2 cores cost more CPU than the reads).
    private readonly Semaphore _pending = new(0, int.MaxValue);
    private readonly Thread[] _threads;
    private readonly Action<Volume, long, Memory<byte>> _read;
    private volatile bool _stopping;

    public ReadScheduler(Action<Volume, long, Memory<byte>> read, int threads = DefaultThreads)
    {
        _read = read;
        _threads = new Thread[threads];
        for (int i = 0; i < threads; i++)
        {
            _threads[i] = new Thread(Run, maxStackSize: 256 << 10) { IsBackground = true, Name = $"target-read-{i}" };
            _threads[i].Start();
        }
    }

    public ValueTask ReadAsync(Volume volume, long offset, Memory<byte> destination)
    {
        if (!_free.TryDequeue(out ReadRequest? request)) request = new ReadRequest(this);
        request.Prepare(volume, offset, destination);
        _queue.Enqueue(request);
        _pending.Release();
        return new ValueTask(request, request.Version);
    }

    private void Run()
    {
        while (true)
        {
            _pending.WaitOne();
            if (_stopping) return;
            if (!_queue.TryDequeue(out ReadRequest? request)) continue;
            Exception? error = null;
            try
            {
                _read(request.Volume!, request.Offset, request.Destination);
            }
            catch (Exception e)
            {
                error = e;
            }
            request.Complete(error);
        }
    }

    internal void Return(ReadRequest request) => _free.Enqueue(request);

    public void Dispose()
    {
        _stopping = true;
        _pending.Release(_threads.Length);
        foreach (Thread t in _threads) t.Join(TimeSpan.FromSeconds(5));
        while (_queue.TryDequeue(out ReadRequest? request)) request.Complete(new NotOwnerException("pool closed"));
    }
}

internal sealed class ReadRequest(ReadScheduler owner) : IValueTaskSource
{
    private ManualResetValueTaskSourceCore<bool> _core;

    public Volume? Volume { get; private set; }
    public long Offset { get; private set; }
    public Memory<byte> Destination { get; private set; }
    public short Version => _core.Version;

    public void Prepare(Volume volume, long offset, Memory<byte> destination)
    {
        Volume = volume;
        Offset = offset;
        Destination = destination;
    }

    public void Complete(Exception? error)
    {
        Volume = null;
        Destination = default;
        if (error != null) _core.SetException(error);
        else _core.SetResult(true);
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
            owner.Return(this);
        }
    }

    public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

    public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);
}
