// Device reads off the caller's thread, two ways:
// - Small reads (up to RingRead.MaxBytes) go through io_uring when the kernel offers it: the
//   caller plans the read and queues it; one ring thread submits the device reads of everything
//   queued with one io_uring_enter, reaps completions in batches and finishes each read (CRC
//   check, copy, completion) itself. No thread hop per read beyond that one thread, and one
//   system call per batch instead of a futex wake-up, a context switch and a pread per read.
// - Larger reads, and every read when io_uring is unavailable, go to a fixed set of read threads
//   doing synchronous preads (so a connection can still have many reads in flight).
// Requests are pooled IValueTaskSource objects: no allocation per read in steady state.
// Invariants: every scheduled request completes exactly once, with the read's exception if any;
// a ring read's buffer slot belongs to it from Rent until its completion has been consumed;
// the ring thread ends only when no device read is in flight (buffers and fd stay valid).
using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using System.Threading.Tasks.Sources;
using Target.Dedup.Device;

namespace Target.Dedup.Engine;

internal sealed unsafe class ReadScheduler : IDisposable
{
    /// <summary>Enough threads to keep a queue depth of 32 on the device.</summary>
    public const int DefaultThreads = 32;

    /// <summary>Ring reads in flight at most (each owns a buffer slot of RingRead.SlotBlocks blocks); more wait on the read threads.</summary>
    public const int RingSlots = 128;

    /// <summary>SQEs: one per run of adjacent chunks, at most a slot's blocks per read.</summary>
    private const uint RingEntries = 256;

    /// <summary>CQEs: room for every device read that can be in flight, plus the wake-up read.</summary>
    private const uint RingCompletions = 4096;

    private const ulong WakeTag = ulong.MaxValue;

    private readonly ConcurrentQueue<ReadRequest> _queue = new();
    private readonly ConcurrentQueue<ReadRequest> _free = new();
    // A kernel-backed semaphore: idle read threads sleep instead of spinning (SemaphoreSlim spins
    // before it blocks, and 32 spinning threads on 2 cores cost more CPU than the reads).
    private readonly Semaphore _pending = new(0, int.MaxValue);
    private readonly Thread[] _threads;
    private readonly Action<Volume, long, Memory<byte>> _read;
    private volatile bool _stopping;

    // ---- io_uring path ----
    private readonly Thread? _ringThread;
    private readonly RingRead[] _ringSlots = [];
    private readonly int[] _freeSlots = [];
    private int _freeSlotCount;
    private readonly object _slotLock = new();
    private readonly ConcurrentQueue<RingRead> _ringQueue = new();
    private byte* _slab;
    private int _eventFd = -1;
    private byte* _wakeBuffer;
    private int _ringSleeping;
    private volatile bool _ringStopping;
    private string? _ringFailure;
    private bool _ringStarted;

    public ReadScheduler(Action<Volume, long, Memory<byte>> read, int threads = DefaultThreads, bool useRing = true)
    {
        _read = read;
        _threads = new Thread[threads];
        for (int i = 0; i < threads; i++)
        {
            _threads[i] = new Thread(Run, maxStackSize: 256 << 10) { IsBackground = true, Name = $"target-read-{i}" };
            _threads[i].Start();
        }
        if (!useRing || Environment.GetEnvironmentVariable("TARGET_NO_IO_URING") == "1") return;

        _eventFd = NativeIo.EventFd(0, NativeIo.O_CLOEXEC);
        if (_eventFd < 0)
        {
            _ringFailure = "eventfd failed";
            return;
        }
        _wakeBuffer = (byte*)NativeMemory.AlignedAlloc(8, 8);
        nuint slabBytes = (nuint)RingSlots * RingRead.SlotBlocks * Pool.ChunkBytes;
        _slab = (byte*)NativeMemory.AlignedAlloc(slabBytes, 4096);
        _ringSlots = new RingRead[RingSlots];
        _freeSlots = new int[RingSlots];
        for (int i = 0; i < RingSlots; i++)
        {
            _ringSlots[i] = new RingRead(this, i, _slab + (long)i * RingRead.SlotBlocks * Pool.ChunkBytes);
            _freeSlots[i] = RingSlots - 1 - i;
        }
        // The ring is made on its own thread: with IORING_SETUP_SINGLE_ISSUER only the creator may submit.
        using var ready = new ManualResetEventSlim();
        _ringThread = new Thread(() => RingLoop(ready, slabBytes), maxStackSize: 256 << 10) { IsBackground = true, Name = "target-ring" };
        _ringThread.Start();
        ready.Wait();
        if (!_ringStarted)
        {
            _ringThread.Join();
            _ringThread = null;
            FreeRingMemory();
            return;
        }
        _freeSlotCount = RingSlots;
    }

    /// <summary>True when small reads go through io_uring.</summary>
    public bool HasRing => _ringThread != null;

    /// <summary>Why io_uring is not used (null when it is, or was not asked for).</summary>
    public string? RingFailure => _ringFailure;

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

    // ---- io_uring path ----

    /// <summary>A free ring slot, or null (no ring, or every slot busy: use the read threads).</summary>
    public RingRead? TryRentRingRead()
    {
        if (_ringThread == null || _ringStopping) return null;
        lock (_slotLock)
        {
            if (_freeSlotCount == 0) return null;
            return _ringSlots[_freeSlots[--_freeSlotCount]];
        }
    }

    internal void ReturnRingRead(RingRead read)
    {
        lock (_slotLock) _freeSlots[_freeSlotCount++] = read.Slot;
    }

    /// <summary>Queues a planned read (its runs set) for the ring thread.</summary>
    public ValueTask SubmitRingRead(RingRead read)
    {
        ValueTask task = new(read, read.Version);
        _ringQueue.Enqueue(read);
        if (Volatile.Read(ref _ringSleeping) != 0 && Interlocked.Exchange(ref _ringSleeping, 0) != 0) WakeRing();
        return task;
    }

    private void WakeRing()
    {
        ulong one = 1;
        while (NativeIo.Write(_eventFd, (byte*)&one, 8) < 0 && Marshal.GetLastPInvokeError() == NativeIo.EINTR) { }
    }

    private void RingLoop(ManualResetEventSlim ready, nuint slabBytes)
    {
        IoUring? ring = IoUring.TryCreate(RingEntries, RingCompletions, out string? failure);
        if (ring == null)
        {
            _ringFailure = failure;
            ready.Set();
            return;
        }
        bool fixedBuffer = ring.TryRegisterBuffer(_slab, slabBytes);
        _ringStarted = true;
        ready.Set();
        int inFlightRuns = 0;
        bool wakeArmed = false;
        RingRead? held = null;
        try
        {
            while (true)
            {
                bool work = false;
                if (!wakeArmed && !_ringStopping && ring.TryPrepareRead(_eventFd, _wakeBuffer, 8, 0, WakeTag, fixedBuffer: false)) wakeArmed = true;
                // (TryPeek would pin the queue's segment and make every later enqueue allocate a new
                // one, so a read that finds the SQ full waits in `held` instead.)
                while (held != null || _ringQueue.TryDequeue(out held))
                {
                    RingRead read = held;
                    if (ring.SqRoom < (uint)read.Runs)
                    {
                        ring.Enter(0);
                        if (ring.SqRoom < (uint)read.Runs) break;
                    }
                    held = null;
                    read.PendingRuns = read.Runs;
                    for (int i = 0; i < read.Runs; i++)
                    {
                        byte* buffer = read.Buffer + (long)read.RunFirst[i] * Pool.ChunkBytes;
                        ring.TryPrepareRead(read.Fd, buffer, read.RunBlocks[i] * Pool.ChunkBytes, read.RunOffset[i],
                            ((ulong)read.Slot << 8) | (uint)i, fixedBuffer);
                    }
                    inFlightRuns += read.Runs;
                    work = true;
                }
                if (ring.HasCqe)
                {
                    while (ring.TryTakeCqe(out IoUring.Cqe cqe))
                    {
                        work = true;
                        if (cqe.UserData == WakeTag)
                        {
                            wakeArmed = false;
                            continue;
                        }
                        RingRead read = _ringSlots[(int)(cqe.UserData >> 8)];
                        read.RunResult[(int)(cqe.UserData & 0xff)] = cqe.Result;
                        inFlightRuns--;
                        if (--read.PendingRuns == 0) read.Finish();
                    }
                }
                if (_ringStopping && inFlightRuns == 0 && !wakeArmed && held == null && _ringQueue.IsEmpty) return;
                if (work)
                {
                    ring.Enter(0);
                    continue;
                }
                // Idle: say so, look once more, then submit and sleep until a completion (a device
                // read, or the wake-up read of the eventfd that SubmitRingRead writes to).
                Interlocked.Exchange(ref _ringSleeping, 1);
                if (held != null || !_ringQueue.IsEmpty)
                {
                    Interlocked.Exchange(ref _ringSleeping, 0);
                    continue;
                }
                ring.Enter(1);
                Interlocked.Exchange(ref _ringSleeping, 0);
            }
        }
        catch (Exception e)
        {
            // io_uring_enter failed for good: nothing more can complete here. Fail loudly.
            Environment.FailFast($"io_uring read thread failed: {e}");
        }
        finally
        {
            ring.Dispose();
        }
    }

    private void FreeRingMemory()
    {
        if (_slab != null) NativeMemory.AlignedFree(_slab);
        _slab = null;
        if (_wakeBuffer != null) NativeMemory.AlignedFree(_wakeBuffer);
        _wakeBuffer = null;
        if (_eventFd >= 0) NativeIo.Close(_eventFd);
        _eventFd = -1;
    }

    public void Dispose()
    {
        _stopping = true;
        _pending.Release(_threads.Length);
        foreach (Thread t in _threads) t.Join(TimeSpan.FromSeconds(5));
        while (_queue.TryDequeue(out ReadRequest? request)) request.Complete(new NotOwnerException("pool closed"));
        if (_ringThread != null)
        {
            // The ring thread finishes what was queued and waits for every device read in flight.
            _ringStopping = true;
            WakeRing();
            _ringThread.Join();
            // Reads queued after the ring thread ended: the client reads them synchronously.
            while (_ringQueue.TryDequeue(out RingRead? read))
            {
                for (int i = 0; i < read.Runs; i++) read.RunResult[i] = RingRead.NotSubmitted;
                read.Finish();
            }
            FreeRingMemory();
        }
    }
}

/// <summary>Scratch for one window of a read: where each block's bytes come from and go to.</summary>
internal sealed class ReadPlan(int capacity)
{
    public int Capacity => Id.Length;
    public readonly uint[] Id = new uint[capacity];
    public readonly uint[] Location = new uint[capacity];
    public readonly uint[] Crc = new uint[capacity];
    public readonly int[] DestinationOffset = new int[capacity];
    public readonly int[] InChunk = new int[capacity];
    public readonly int[] Length = new int[capacity];
    public int Planned;
}

/// <summary>The pool side of a ring read: finishes it on the ring thread once every device read is done.</summary>
internal interface IRingReadClient
{
    void FinishRingRead(RingRead read);
}

/// <summary>
/// One small read through io_uring: the caller's plan (which chunks, where in the log, where in
/// the destination), the runs of adjacent log blocks to read, and a buffer slot of SlotBlocks
/// aligned blocks (block i of the plan lands at block i of the slot).
/// </summary>
internal sealed unsafe class RingRead : IValueTaskSource, IThreadPoolWorkItem
{
    /// <summary>Largest read that goes through the ring (it spans at most SlotBlocks chunks).</summary>
    public const int MaxBytes = 64 << 10;

    /// <summary>Chunks a MaxBytes read can touch when it does not start on a chunk boundary.</summary>
    public const int SlotBlocks = MaxBytes / Pool.ChunkBytes + 1;

    private readonly ReadScheduler _owner;
    // Continuations never run on the ring thread: a reader's next step can block (the segment
    // reuse gate waits while a checkpoint hands segments back, for every read in flight, which
    // only the ring thread can finish; locks; synchronous writes), and the ring would stall with
    // it. Complete queues the read itself (no allocation) and the thread pool completes it.
    private ManualResetValueTaskSourceCore<bool> _core;
    private Exception? _error;

    public RingRead(ReadScheduler owner, int slot, byte* buffer)
    {
        _owner = owner;
        Slot = slot;
        Buffer = buffer;
    }

    public int Slot { get; }

    /// <summary>SlotBlocks aligned blocks, registered with the ring when the kernel allows.</summary>
    public byte* Buffer { get; }

    public Span<byte> BufferSpan => new(Buffer, SlotBlocks * Pool.ChunkBytes);

    /// <summary>Which chunks come from the device and where their bytes go.</summary>
    public readonly ReadPlan Plan = new(SlotBlocks);

    public readonly int[] RunFirst = new int[SlotBlocks];
    public readonly int[] RunBlocks = new int[SlotBlocks];
    public readonly long[] RunOffset = new long[SlotBlocks];
    public readonly int[] RunResult = new int[SlotBlocks];
    public int Runs;
    public int PendingRuns;

    /// <summary>RunResult of a run the ring never read (-ECANCELED): the client reads it synchronously.</summary>
    public const int NotSubmitted = -125;
    public int Fd;

    public IRingReadClient? Client;
    public Memory<byte> Destination;

    public short Version => _core.Version;

    /// <summary>Every device read of this request is done (ring thread): the client checks, copies and completes.</summary>
    public void Finish() => Client!.FinishRingRead(this);

    public void Complete(Exception? error)
    {
        Client = null;
        Destination = default;
        _error = error;
        ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: false);
    }

    /// <summary>On a thread-pool thread: completes the read (its continuation runs here).</summary>
    void IThreadPoolWorkItem.Execute()
    {
        Exception? error = _error;
        _error = null;
        if (error != null) _core.SetException(error);
        else _core.SetResult(true);
    }

    /// <summary>Gives the slot back without completing (the read needed no device access).</summary>
    public void Cancel()
    {
        Client = null;
        Destination = default;
        _owner.ReturnRingRead(this);
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
            _owner.ReturnRingRead(this);
        }
    }

    public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

    public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);
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
