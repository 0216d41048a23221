// A thin volume as the protocols see it (IBlockVolume). Range checks happen here, again, on
// purpose; the I/O itself is the pool's. Every request passes the pool's host gate for as long as
// it runs, so a closing pool refuses new requests (NotOwnerException) and waits for the rest.
using Target.Dedup.Engine;

namespace Target.Dedup;

public sealed class Volume : IBlockVolume
{
    private readonly Pool _pool;
    private int _cachedPages;

    internal Volume(Pool pool, VolumeState state)
    {
        _pool = pool;
        State = state;
    }

    internal VolumeState State { get; }

    public string Name => State.Name;

    public long SizeBytes => State.SizeBytes;

    public int LogicalBlockSize => State.LogicalBlockSize;

    public int PreferredBlockSize => Pool.ChunkBytes;

    public Guid Uuid => State.Uuid;

    public WriteMode WriteMode => _pool.WriteMode;

    public VolumeCapabilities Capabilities =>
        VolumeCapabilities.Trim | VolumeCapabilities.WriteZeroes | VolumeCapabilities.FastZero | VolumeCapabilities.BlockStatus |
        VolumeCapabilities.CopyByReference | (WriteMode == WriteMode.WriteThrough ? VolumeCapabilities.None : VolumeCapabilities.VolatileWriteCache);

    /// <summary>Pages of this volume in the write cache (pool lock held by callers).</summary>
    internal int CachedPages => _cachedPages;

    internal void PageEnteredCache() => _cachedPages++;

    internal void PageLeftCache() => _cachedPages--;

    public ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken ct)
    {
        CheckRange(offset, destination.Length);
        return _pool.Hosts.Run(static s => s.Volume._pool.ReadAsync(s.Volume, s.Offset, s.Destination), (Volume: this, Offset: offset, Destination: destination));
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, WriteFlags flags, CancellationToken ct)
    {
        CheckRange(offset, source.Length);
        return _pool.Hosts.Run(static s => s.Volume._pool.WriteAsync(s.Volume, s.Offset, s.Source, s.Flags, s.Ct), (Volume: this, Offset: offset, Source: source, Flags: flags, Ct: ct));
    }

    public ValueTask FlushAsync(CancellationToken ct) => _pool.Hosts.Run(static s => s.Pool.FlushAllAsync(s.Ct), (Pool: _pool, Ct: ct));

    public ValueTask TrimAsync(long offset, long length, CancellationToken ct) =>
        SetRangeAsync(offset, length, Index.ChunkTable.HoleId, fua: false, ct);

    public ValueTask WriteZeroesAsync(long offset, long length, ZeroFlags flags, CancellationToken ct) =>
        SetRangeAsync(offset, length, (flags & ZeroFlags.NoHole) != 0 ? Index.ChunkTable.ZeroId : Index.ChunkTable.HoleId, (flags & ZeroFlags.Fua) != 0, ct);

    private ValueTask SetRangeAsync(long offset, long length, uint value, bool fua, CancellationToken ct)
    {
        CheckRange(offset, length);
        return _pool.Hosts.Run(static s => s.Volume._pool.SetRangeAsync(s.Volume, s.Offset, s.Length, s.Value, s.Fua, s.Ct),
            (Volume: this, Offset: offset, Length: length, Value: value, Fua: fua, Ct: ct));
    }

    public ValueTask<ExtentList> GetAllocationAsync(long offset, long length, CancellationToken ct)
    {
        CheckRange(offset, length);
        return _pool.Hosts.Run(static s => ValueTask.FromResult(s.Volume._pool.GetAllocation(s.Volume, s.Offset, s.Length)), (Volume: this, Offset: offset, Length: length));
    }

    public ValueTask<bool> CompareAndWriteAsync(long offset, ReadOnlyMemory<byte> expected, ReadOnlyMemory<byte> source, CancellationToken ct)
    {
        if (expected.Length != source.Length) throw new ArgumentException("compare and write: expected and source lengths differ");
        CheckRange(offset, source.Length);
        return _pool.Hosts.Run(static s => s.Volume._pool.CompareAndWriteAsync(s.Volume, s.Offset, s.Expected, s.Source, s.Ct),
            (Volume: this, Offset: offset, Expected: expected, Source: source, Ct: ct));
    }

    public ValueTask CopyAsync(long sourceOffset, IBlockVolume destination, long destinationOffset, long length, CancellationToken ct)
    {
        CheckRange(sourceOffset, length);
        if (destination is not Volume target) throw new ArgumentException("copy by reference needs a volume of the same pool");
        target.CheckRange(destinationOffset, length);
        return _pool.Hosts.Run(static s => s.Volume._pool.CopyAsync(s.Volume, s.SourceOffset, s.Target, s.TargetOffset, s.Length, s.Ct),
            (Volume: this, SourceOffset: sourceOffset, Target: target, TargetOffset: destinationOffset, Length: length, Ct: ct));
    }

    public VolumeStats GetStats() => _pool.VolumeStatsOf(this);

    internal VolumeStats StatsLocked() => new()
    {
        Name = Name,
        Uuid = Uuid,
        SizeBytes = SizeBytes,
        LogicalBlockSize = LogicalBlockSize,
        WriteMode = WriteModes.ToText(WriteMode),
        MappedBytes = State.Map.DataBlocks * Pool.ChunkBytes,
        ZeroChunks = State.Map.ZeroBlocks,
        DirtyBytes = (long)_cachedPages * Pool.ChunkBytes,
        RamBytes = State.Map.RamBytes,
    };

    private void CheckRange(long offset, long length)
    {
        if (State.Deleted) throw new NotFoundException($"volume {Name} was deleted");
        if (offset < 0 || length < 0 || offset > SizeBytes || length > SizeBytes - offset)
            throw new OutOfRangeException($"{offset}+{length} is outside volume {Name} ({SizeBytes} bytes)");
    }

    public override string ToString() => Name;
}
