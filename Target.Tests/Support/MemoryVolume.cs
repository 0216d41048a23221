// A RAM-only IBlockVolume for protocol tests (NBD, iSCSI). Sparse: 4 KiB pages in a dictionary.
// Invariants it keeps (and tests may rely on):
// - a page is a Hole (absent), Zero (present, no data: written as zeroes with NoHole) or Data;
//   Hole and Zero pages read as zeros;
// - every method range-checks first and throws OutOfRangeException, ReadOnlyVolumeException or the
//   injected fault BEFORE changing anything, so a failed write leaves the bytes unchanged;
// - failures surface as a faulted ValueTask (like an async engine), never as a synchronous throw;
// - all operations are serialised by one lock: each is atomic with respect to the others.
using Target.Dedup;

namespace Target.Tests.Support;

public sealed class MemoryVolume : IBlockVolume
{
    public const int PageBytes = 4096;

    private readonly object _lock = new();
    // Absent: hole. Null value: zero page (allocated in the host's view, no data). Array: data.
    private readonly Dictionary<long, byte[]?> _pages = new();
    private readonly VolumeCapabilities _baseCapabilities;

    public MemoryVolume(string name, long sizeBytes,
        VolumeCapabilities capabilities = VolumeCapabilities.VolatileWriteCache | VolumeCapabilities.Trim | VolumeCapabilities.WriteZeroes
            | VolumeCapabilities.FastZero | VolumeCapabilities.BlockStatus | VolumeCapabilities.CopyByReference,
        int logicalBlockSize = 512)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        if (sizeBytes <= 0 || sizeBytes % PageBytes != 0)
            throw new ArgumentOutOfRangeException(nameof(sizeBytes), sizeBytes, $"size must be a positive multiple of {PageBytes}");
        if (logicalBlockSize is not (512 or 4096))
            throw new ArgumentOutOfRangeException(nameof(logicalBlockSize), logicalBlockSize, "logical block size must be 512 or 4096");
        Name = name;
        SizeBytes = sizeBytes;
        LogicalBlockSize = logicalBlockSize;
        _baseCapabilities = capabilities & ~VolumeCapabilities.ReadOnly;
        ReadOnly = (capabilities & VolumeCapabilities.ReadOnly) != 0;
    }

    public string Name { get; }

    public long SizeBytes { get; }

    public int LogicalBlockSize { get; }

    public int PreferredBlockSize => PageBytes;

    public Guid Uuid { get; } = Guid.NewGuid();

    public VolumeCapabilities Capabilities => ReadOnly ? _baseCapabilities | VolumeCapabilities.ReadOnly : _baseCapabilities;

    /// <summary>Writes, trims, zeroes and copies into this volume fail with ReadOnlyVolumeException.</summary>
    public bool ReadOnly { get; set; }

    /// <summary>Writes, zeroes and copies into this volume fail with NoSpaceException (reads, trims and flushes still work).</summary>
    public bool FailWritesWithNoSpace { get; set; }

    /// <summary>When set, every operation first calls this with the operation name ("read", "write", ...) and throws what it returns.</summary>
    public Func<string, long, Exception?>? FaultInjector { get; set; }

    /// <summary>When set, operations complete asynchronously after this delay (per operation name and offset); zero completes at once.</summary>
    public Func<string, long, TimeSpan>? Latency { get; set; }

    public long ReadCount => Interlocked.Read(ref _readCount);
    public long WriteCount => Interlocked.Read(ref _writeCount);
    public long FuaWriteCount => Interlocked.Read(ref _fuaWriteCount);
    public long FlushCount => Interlocked.Read(ref _flushCount);
    public long TrimCount => Interlocked.Read(ref _trimCount);
    public long WriteZeroesCount => Interlocked.Read(ref _writeZeroesCount);
    public long AllocationQueryCount => Interlocked.Read(ref _allocationQueryCount);

    /// <summary>Flags of the last WriteZeroesAsync call.</summary>
    public ZeroFlags LastZeroFlags { get; private set; }

    private long _readCount, _writeCount, _fuaWriteCount, _flushCount, _trimCount, _writeZeroesCount, _allocationQueryCount;

    // ---- IBlockVolume ----

    public ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken ct)
    {
        if (Latency is not null || FaultInjector is not null) return Run("read", offset, () => DoRead(offset, destination.Span), ct);
        try
        {
            ct.ThrowIfCancellationRequested();
            DoRead(offset, destination.Span);
            return default;
        }
        catch (Exception ex)
        {
            return ValueTask.FromException(ex);
        }
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, WriteFlags flags, CancellationToken ct)
    {
        if (Latency is not null || FaultInjector is not null) return Run("write", offset, () => DoWrite(offset, source.Span, flags), ct);
        try
        {
            ct.ThrowIfCancellationRequested();
            DoWrite(offset, source.Span, flags);
            return default;
        }
        catch (Exception ex)
        {
            return ValueTask.FromException(ex);
        }
    }

    private void DoRead(long offset, Span<byte> destination)
    {
        CheckRange(offset, destination.Length);
        Interlocked.Increment(ref _readCount);
        lock (_lock) CopyOut(offset, destination);
    }

    private void DoWrite(long offset, ReadOnlySpan<byte> source, WriteFlags flags)
    {
        CheckWritable();
        CheckRange(offset, source.Length);
        CheckSpace();
        Interlocked.Increment(ref _writeCount);
        if ((flags & WriteFlags.Fua) != 0) Interlocked.Increment(ref _fuaWriteCount);
        lock (_lock) CopyIn(offset, source);
    }

    public ValueTask FlushAsync(CancellationToken ct)
        => Run("flush", 0, () => { Interlocked.Increment(ref _flushCount); }, ct);

    public ValueTask TrimAsync(long offset, long length, CancellationToken ct)
        => Run("trim", offset, () =>
        {
            CheckWritable();
            CheckRange(offset, length);
            Interlocked.Increment(ref _trimCount);
            lock (_lock) ZeroRange(offset, length, wholePageKind: null);
        }, ct);

    public ValueTask WriteZeroesAsync(long offset, long length, ZeroFlags flags, CancellationToken ct)
        => Run("write_zeroes", offset, () =>
        {
            if ((flags & ZeroFlags.Fast) != 0 && (_baseCapabilities & VolumeCapabilities.FastZero) == 0)
                throw new FastZeroUnsupportedException("fast zero not supported");
            CheckWritable();
            CheckRange(offset, length);
            CheckSpace();
            Interlocked.Increment(ref _writeZeroesCount);
            LastZeroFlags = flags;
            lock (_lock) ZeroRange(offset, length, wholePageKind: (flags & ZeroFlags.NoHole) != 0 ? ExtentKind.Zero : null);
        }, ct);

    public ValueTask<ExtentList> GetAllocationAsync(long offset, long length, CancellationToken ct)
        => Run("allocation", offset, () =>
        {
            CheckRange(offset, length);
            Interlocked.Increment(ref _allocationQueryCount);
            var extents = new ExtentList();
            long end = offset + length;
            lock (_lock)
            {
                long position = offset;
                while (position < end)
                {
                    long page = position / PageBytes;
                    long pageEnd = Math.Min(end, (page + 1) * PageBytes);
                    extents.Add(position, pageEnd - position, KindOfPageLocked(page));
                    position = pageEnd;
                }
            }
            return extents;
        }, ct);

    public ValueTask<bool> CompareAndWriteAsync(long offset, ReadOnlyMemory<byte> expected, ReadOnlyMemory<byte> source, CancellationToken ct)
        => Run("compare_and_write", offset, () =>
        {
            if (expected.Length != source.Length) throw new ArgumentException("expected and source lengths differ");
            CheckWritable();
            CheckRange(offset, source.Length);
            CheckSpace();
            lock (_lock)
            {
                var current = new byte[expected.Length];
                CopyOut(offset, current);
                if (!current.AsSpan().SequenceEqual(expected.Span)) return false;
                Interlocked.Increment(ref _writeCount);
                CopyIn(offset, source.Span);
                return true;
            }
        }, ct);

    public ValueTask CopyAsync(long sourceOffset, IBlockVolume destination, long destinationOffset, long length, CancellationToken ct)
        => Run("copy", sourceOffset, () =>
        {
            CheckRange(sourceOffset, length);
            if (destinationOffset < 0 || length > destination.SizeBytes || destinationOffset > destination.SizeBytes - length)
                throw new Target.Dedup.OutOfRangeException($"copy destination [{destinationOffset}, +{length}) outside {destination.Name}");
            if (destination is MemoryVolume target)
            {
                target.CheckWritable();
                target.CheckSpace();
            }
            var bytes = new byte[length];
            lock (_lock) CopyOut(sourceOffset, bytes);
            if (destination is MemoryVolume memoryTarget)
            {
                lock (memoryTarget._lock) memoryTarget.CopyIn(destinationOffset, bytes);
            }
            else
            {
                destination.WriteAsync(destinationOffset, bytes, WriteFlags.None, ct).AsTask().GetAwaiter().GetResult();
            }
        }, ct);

    // ---- test helpers (synchronous, no fault injection) ----

    /// <summary>Bytes as a host would read them.</summary>
    public byte[] Snapshot(long offset, int length)
    {
        CheckRange(offset, length);
        var bytes = new byte[length];
        lock (_lock) CopyOut(offset, bytes);
        return bytes;
    }

    /// <summary>Writes without counting, checks or faults (test setup).</summary>
    public void Fill(long offset, ReadOnlySpan<byte> bytes)
    {
        CheckRange(offset, bytes.Length);
        lock (_lock) CopyIn(offset, bytes);
    }

    public ExtentKind KindOfPage(long pageIndex)
    {
        lock (_lock) return KindOfPageLocked(pageIndex);
    }

    /// <summary>Pages holding data (not holes, not zero pages).</summary>
    public int DataPageCount
    {
        get
        {
            lock (_lock)
            {
                int count = 0;
                foreach (byte[]? page in _pages.Values) if (page is not null) count++;
                return count;
            }
        }
    }

    // ---- internals ----

    private ValueTask Run(string operation, long offset, Action action, CancellationToken ct)
    {
        ValueTask<bool> task = Run(operation, offset, () =>
        {
            action();
            return true;
        }, ct);
        if (task.IsCompletedSuccessfully) return default;
        return new ValueTask(task.AsTask());
    }

    private ValueTask<T> Run<T>(string operation, long offset, Func<T> action, CancellationToken ct)
    {
        TimeSpan delay = Latency?.Invoke(operation, offset) ?? TimeSpan.Zero;
        if (delay > TimeSpan.Zero) return RunLaterAsync(operation, offset, action, delay, ct);
        try
        {
            ct.ThrowIfCancellationRequested();
            if (FaultInjector?.Invoke(operation, offset) is { } fault) throw fault;
            return ValueTask.FromResult(action());
        }
        catch (Exception ex)
        {
            return ValueTask.FromException<T>(ex);
        }
    }

    private async ValueTask<T> RunLaterAsync<T>(string operation, long offset, Func<T> action, TimeSpan delay, CancellationToken ct)
    {
        await Task.Delay(delay, ct).ConfigureAwait(false);
        if (FaultInjector?.Invoke(operation, offset) is { } fault) throw fault;
        return action();
    }

    private void CheckRange(long offset, long length)
    {
        if (offset < 0 || length < 0 || length > SizeBytes || offset > SizeBytes - length)
            throw new Target.Dedup.OutOfRangeException($"range [{offset}, +{length}) is outside volume '{Name}' of {SizeBytes} bytes");
    }

    private void CheckWritable()
    {
        if (ReadOnly) throw new ReadOnlyVolumeException($"volume '{Name}' is read-only");
    }

    private void CheckSpace()
    {
        if (FailWritesWithNoSpace) throw new NoSpaceException($"no space left for volume '{Name}'");
    }

    private ExtentKind KindOfPageLocked(long page)
    {
        if (!_pages.TryGetValue(page, out byte[]? data)) return ExtentKind.Hole;
        return data is null ? ExtentKind.Zero : ExtentKind.Data;
    }

    private void CopyOut(long offset, Span<byte> destination)
    {
        int done = 0;
        while (done < destination.Length)
        {
            long position = offset + done;
            long page = position / PageBytes;
            int inPage = (int)(position % PageBytes);
            int count = Math.Min(PageBytes - inPage, destination.Length - done);
            Span<byte> target = destination.Slice(done, count);
            if (_pages.TryGetValue(page, out byte[]? data) && data is not null) data.AsSpan(inPage, count).CopyTo(target);
            else target.Clear();
            done += count;
        }
    }

    private void CopyIn(long offset, ReadOnlySpan<byte> source)
    {
        int done = 0;
        while (done < source.Length)
        {
            long position = offset + done;
            long page = position / PageBytes;
            int inPage = (int)(position % PageBytes);
            int count = Math.Min(PageBytes - inPage, source.Length - done);
            if (!_pages.TryGetValue(page, out byte[]? data) || data is null)
            {
                data = new byte[PageBytes];
                _pages[page] = data;
            }
            source.Slice(done, count).CopyTo(data.AsSpan(inPage, count));
            done += count;
        }
    }

    /// <summary>Zeroes a range: whole pages become holes (or zero pages), partial pages get zero bytes.</summary>
    private void ZeroRange(long offset, long length, ExtentKind? wholePageKind)
    {
        long end = offset + length;
        long position = offset;
        while (position < end)
        {
            long page = position / PageBytes;
            int inPage = (int)(position % PageBytes);
            long count = Math.Min(PageBytes - inPage, end - position);
            if (inPage == 0 && count == PageBytes)
            {
                if (wholePageKind == ExtentKind.Zero) _pages[page] = null;
                else _pages.Remove(page);
            }
            else if (_pages.TryGetValue(page, out byte[]? data) && data is not null)
            {
                data.AsSpan(inPage, (int)count).Clear();
            }
            position += count;
        }
    }
}
