// The pool's metadata in memory: chunk table, dedup index, volume maps, per-segment live
// counts. It changes only by applying journal records, through ApplyBatch, both at run time
// (right after a batch is durable) and during recovery replay — one code path, so replay
// rebuilds exactly the state the running pool had.
// Invariants: refcount(c) == number of map entries equal to c over all volumes; a chunk is in
// the index iff it is live; SegmentLive[s] == number of live chunks located in segment s.
using Target.Dedup.Format;
using Target.Dedup.Index;
using Target.Dedup.Maps;

namespace Target.Dedup.Engine;

internal sealed class VolumeState : IDisposable
{
    public VolumeState(uint id, Guid uuid, string name, long sizeBytes, int logicalBlockSize)
    {
        Id = id;
        Uuid = uuid;
        Name = name;
        SizeBytes = sizeBytes;
        LogicalBlockSize = logicalBlockSize;
        Map = new VolumeMap(sizeBytes / Superblock.ChunkBytes);
    }

    public uint Id { get; }
    public Guid Uuid { get; }
    public string Name { get; }
    public long SizeBytes { get; set; }
    public int LogicalBlockSize { get; }
    public VolumeMap Map { get; }
    public bool Deleted { get; set; }

    public void Dispose() => Map.Dispose();
}

internal sealed class PoolState : IDisposable
{
    private readonly int _blocksPerSegment;

    public PoolState(uint segmentCount, int blocksPerSegment)
    {
        _blocksPerSegment = blocksPerSegment;
        Chunks = new ChunkTable();
        Index = new DedupIndex(Chunks);
        SegmentLive = new int[segmentCount];
    }

    public ChunkTable Chunks { get; }
    public DedupIndex Index { get; }
    public int[] SegmentLive { get; }
    public Dictionary<uint, VolumeState> VolumesById { get; } = new();
    public Dictionary<string, VolumeState> VolumesByName { get; } = new(StringComparer.Ordinal);
    public uint NextVolumeId { get; set; } = 1;

    /// <summary>Told when a chunk's refcount reaches zero and its id is released (caches keyed by id drop it).</summary>
    public Action<uint>? ChunkFreed { get; set; }

    /// <summary>Told ahead (prefetch only) of a chunk the batch being applied is likely to free.</summary>
    public Action<uint>? FreeingChunk { get; set; }

    public uint SegmentOf(uint location) => (uint)(location / (uint)_blocksPerSegment);

    /// <summary>Applies one durable batch. <paramref name="replaying"/>: chunk ids come from the records (not pre-allocated).</summary>
    public void ApplyBatch(ReadOnlySpan<byte> records, uint dataStartBlock, bool replaying)
    {
        PrefetchForBatch(records);
        // Pass 1: new chunks, and every reference a Map record adds, before any reference is
        // dropped, so a chunk shared and unshared within one batch is never freed in between.
        // MoveChunk data indexes count from the batch's data, or from its MovedData record's location.
        uint moveBase = dataStartBlock;
        var reader = new RecordReader(records);
        while (reader.Next(out LogRecord r))
        {
            if (r.Type == RecordType.MovedData)
            {
                if (r.Count < 1 || SegmentOf(r.Value) >= SegmentLive.Length || SegmentOf(r.Value + (uint)r.Count - 1) != SegmentOf(r.Value))
                    throw new InvalidDataException($"moved data at block {r.Value} (+{r.Count}) is not within one segment of the pool");
                moveBase = r.Value;
            }
            else if (r.Type == RecordType.NewChunk)
            {
                if (replaying) Chunks.Claim(r.ChunkId);
                ref ChunkEntry e = ref Chunks[r.ChunkId];
                e.Location = dataStartBlock + (uint)r.DataIndex;
                e.RefCount = 0;
                e.Crc = r.Crc;
                e.FpHigh = DedupIndex.HighOf(r.Fingerprint.Low);
                Chunks.MarkLive(r.ChunkId);
                Index.Insert(r.ChunkId, r.Fingerprint.Low);
                SegmentLive[SegmentOf(e.Location)]++;
            }
            else if (r.Type == RecordType.Map)
            {
                AddRef(r.ChunkId);
            }
        }
        reader = new RecordReader(records);
        while (reader.Next(out LogRecord r))
        {
            switch (r.Type)
            {
                case RecordType.NewChunk:
                case RecordType.MovedData:
                    break;
                case RecordType.MoveChunk:
                    MoveChunk(r.ChunkId, moveBase + (uint)r.DataIndex);
                    break;
                case RecordType.Map:
                    DropRef(Volume(r.VolumeId).Map.Set(r.Block, r.ChunkId));
                    break;
                case RecordType.MapRange:
                    SetRange(Volume(r.VolumeId).Map, r.Block, r.Count, r.Value);
                    break;
                case RecordType.CopyRange:
                    CopyRange(Volume(r.VolumeId).Map, r.Block, Volume(r.DestinationVolumeId).Map, r.DestinationBlock, r.Count);
                    break;
                case RecordType.CreateVolume:
                    AddVolume(new VolumeState(r.VolumeId, r.Uuid, r.Name!, r.SizeBytes, r.LogicalBlockSize));
                    break;
                case RecordType.DeleteVolume:
                    RemoveVolume(Volume(r.VolumeId));
                    break;
                case RecordType.ResizeVolume:
                    Resize(Volume(r.VolumeId), r.SizeBytes);
                    break;
                default:
                    throw new InvalidDataException($"unexpected record {r.Type}");
            }
        }
    }

    /// <summary>
    /// Hints only: loads what applying a batch's Map and NewChunk records will touch into the CPU
    /// cache ahead of time, so the chunk-table entries and index slots of its 256 blocks are
    /// fetched from memory side by side rather than one after the other: the entries of the
    /// chunks each Map record adds and drops first, then (once those arrived) the index slots a
    /// drop may clear and a new chunk fills.
    /// </summary>
    private void PrefetchForBatch(ReadOnlySpan<byte> records)
    {
        var reader = new RecordReader(records);
        while (reader.Next(out LogRecord r))
        {
            if (r.Type == RecordType.NewChunk) Index.PrefetchHome(DedupIndex.HighOf(r.Fingerprint.Low));
            else if (r.Type == RecordType.Map && VolumesById.TryGetValue(r.VolumeId, out VolumeState? v) && (ulong)r.Block < (ulong)v.Map.Blocks)
            {
                Chunks.Prefetch(r.ChunkId);
                Chunks.Prefetch(v.Map.Get(r.Block));
            }
        }
        reader = new RecordReader(records);
        while (reader.Next(out LogRecord r))
        {
            if (r.Type != RecordType.Map || !VolumesById.TryGetValue(r.VolumeId, out VolumeState? v) || (ulong)r.Block >= (ulong)v.Map.Blocks) continue;
            uint old = v.Map.Get(r.Block);
            if (old < ChunkTable.FirstChunkId || old >= Chunks.HighWater) continue;
            ref ChunkEntry e = ref Chunks[old];
            Index.PrefetchHome(e.FpHigh);
            if (e.RefCount == 1) FreeingChunk?.Invoke(old);
        }
    }

    public void AddVolume(VolumeState volume)
    {
        if (VolumesById.ContainsKey(volume.Id) || VolumesByName.ContainsKey(volume.Name))
            throw new InvalidDataException($"volume {volume.Name} (id {volume.Id}) exists twice");
        VolumesById.Add(volume.Id, volume);
        VolumesByName.Add(volume.Name, volume);
        if (volume.Id >= NextVolumeId) NextVolumeId = volume.Id + 1;
    }

    public VolumeState Volume(uint id) =>
        VolumesById.TryGetValue(id, out VolumeState? v) ? v : throw new InvalidDataException($"journal names unknown volume id {id}");

    public void AddRef(uint id)
    {
        if (id < ChunkTable.FirstChunkId) return;
        ref ChunkEntry e = ref Chunks[id];
        e.RefCount++;
    }

    public void DropRef(uint id)
    {
        if (id < ChunkTable.FirstChunkId) return;
        ref ChunkEntry e = ref Chunks[id];
        if (e.RefCount == 0) throw new InvalidDataException($"refcount of chunk {id} below zero");
        if (--e.RefCount == 0)
        {
            Index.Remove(id);
            SegmentLive[SegmentOf(e.Location)]--;
            Chunks.Release(id);
            ChunkFreed?.Invoke(id);
        }
    }

    /// <summary>The cleaner copied a live chunk to the log head: only its location changes (maps and index keep the id).</summary>
    private void MoveChunk(uint id, uint location)
    {
        ref ChunkEntry e = ref Chunks[id];
        if (e.RefCount == 0) throw new InvalidDataException($"move of chunk {id}, which is not live");
        SegmentLive[SegmentOf(e.Location)]--;
        e.Location = location;
        SegmentLive[SegmentOf(location)]++;
    }

    private void SetRange(VolumeMap map, long block, long count, uint value)
    {
        long end = block + count;
        if (count < 0 || end > map.Blocks) throw new InvalidDataException("map range beyond volume");
        if (value == ChunkTable.HoleId)
        {
            // Skip unallocated map pages: trimming a mostly empty volume costs what is mapped.
            for (long b = map.NextAllocatedPageStart(block); b < end; b = map.NextAllocatedPageStart(b + 1))
                DropRef(map.Set(b, value));
            return;
        }
        for (long b = block; b < end; b++) DropRef(map.Set(b, value));
    }

    private void CopyRange(VolumeMap source, long sourceBlock, VolumeMap destination, long destinationBlock, long count)
    {
        if (count < 0 || sourceBlock + count > source.Blocks || destinationBlock + count > destination.Blocks)
            throw new InvalidDataException("copy range beyond volume");
        bool backwards = ReferenceEquals(source, destination) && destinationBlock > sourceBlock;
        for (long i = 0; i < count; i++)
        {
            long k = backwards ? count - 1 - i : i;
            uint id = source.Get(sourceBlock + k);
            AddRef(id);
            DropRef(destination.Set(destinationBlock + k, id));
        }
    }

    private void RemoveVolume(VolumeState volume)
    {
        SetRange(volume.Map, 0, volume.Map.Blocks, ChunkTable.HoleId);
        VolumesById.Remove(volume.Id);
        VolumesByName.Remove(volume.Name);
        volume.Deleted = true;
        volume.Dispose();
    }

    private void Resize(VolumeState volume, long sizeBytes)
    {
        long blocks = sizeBytes / Superblock.ChunkBytes;
        if (blocks < volume.Map.Blocks) SetRange(volume.Map, blocks, volume.Map.Blocks - blocks, ChunkTable.HoleId);
        volume.Map.Resize(blocks);
        volume.SizeBytes = sizeBytes;
    }

    public long MapRamBytes()
    {
        long total = 0;
        foreach (VolumeState v in VolumesById.Values) total += v.Map.RamBytes;
        return total;
    }

    public void Dispose()
    {
        foreach (VolumeState v in VolumesById.Values) v.Dispose();
        Index.Dispose();
        Chunks.Dispose();
    }
}
