// The cleaner (garbage collector). Chunks are immutable and reached only through the chunk
// table, so cleaning a segment means copying its live chunks elsewhere with MoveChunk records
// (maps, snapshots and the index keep the chunk ids), after which the segment holds nothing
// live; the next checkpoint quarantines it and the one after frees it. Moved chunks go to the
// cleaner's own segment (a MovedData record in a header-only batch says where), not the log
// head: data that survived a cleaning tends to live on, and kept apart from new writes its
// segments stay full while the new writes' segments empty out, so later cleanings move less.
// Victims are chosen by cost-benefit: (1 - u) * age / (1 + u), u = live fraction.
// Invariants: a move is applied only after its batch is written (its fdatasync comes with the
// destager's next one; the segment it empties is reused only after two checkpoints, each made
// after a journal flush); a chunk whose stored bytes
// fail their CRC is never moved (its segment stays, and the error is logged); the cleaner
// runs under the commit mutex one batch at a time, so host writes (which go to the cache)
// never wait for it, and destage waits at most one batch.
using System.Diagnostics;
using Microsoft.Extensions.Logging;
using Target.Dedup.Device;
using Target.Dedup.Engine;
using Target.Dedup.Format;
using Target.Dedup.Hashing;
using Target.Dedup.Index;

namespace Target.Dedup;

public sealed partial class Pool
{
    private const int CleanerTickMs = 50;
    /// <summary>Segments above this live fraction are not worth cleaning unless the pool is nearly full.</summary>
    private const double MaxVictimUtilization = 0.90;
    private const double MaxVictimUtilizationWhenFull = 0.99;
    /// <summary>With no host read or write for this long, the cleaner compacts until dead space is under IdleDeadFraction of live.</summary>
    private const int IdleMs = 500;
    private const double IdleDeadFraction = 0.10;
    /// <summary>How long a writer waits for the cleaner to free space before it gets ENOSPC.</summary>
    private const int SpaceWaitMaxMs = 30_000;

    private readonly Signal _cleanerWake = new(CleanerTickMs);
    private readonly Signal _spaceFreed = new(CleanerTickMs);
    private Task? _cleaner;
    private long[] _segmentSealedMs = Array.Empty<long>();
    private AlignedBuffer? _cleanerBuffer;
    private long _gcBytesMoved;
    private long _gcBytesMovedInline;
    private long _gcSegmentsCleaned;
    private long _gcTicks;
    private long _hostBytesWritten;
    /// <summary>Whole-chunk writes of what their block already held (nothing stored; under the pool lock).</summary>
    private long _nopWrites;
    private long _deviceBytesWritten;
    private int _fillWarnedPercent;
    private long _lastHostWriteMs;
    /// <summary>When a host last read (to the millisecond; stored only when it changes, so reads rarely write the line).</summary>
    private long _lastHostReadMs;

    /// <summary>Free segments the cleaner keeps in hand: 2% of the pool, at least 4. Kept small: every
    /// segment held free raises the live fraction of the others, and so the cost of cleaning them.</summary>
    private int FreeSegmentsTarget => Math.Max(4, (int)(_super.SegmentCount * 2 / 100));

    /// <summary>Dead segments gathered before a checkpoint hands them back (checkpoints cost a full metadata write).</summary>
    private int CheckpointBatchSegments => Math.Max(2, (int)(_super.SegmentCount / 64));

    /// <summary>
    /// <see cref="CheckpointBatchSegments"/>, or an eighth of the pool while at least twice
    /// <see cref="FreeSegmentsTarget"/> segments are free (idle compaction): nothing waits for the dead
    /// ones then, and a checkpoint rewrites all metadata (40 MB for 4 GiB of unique data; the
    /// smaller batch wrote five a second while compacting under a read load).
    /// </summary>
    private int CheckpointBatchSegmentsWith(int free) =>
        free >= 2 * FreeSegmentsTarget ? Math.Max(CheckpointBatchSegments, (int)(_super.SegmentCount / 8)) : CheckpointBatchSegments;

    private readonly List<uint> _victimChunks = new();
    /// <summary>The segment moved chunks are written to (NoSegment until the cleaner needs one; not kept across restarts).</summary>
    private uint _coldSegment = BatchHeader.NoSegment;
    private uint _coldOffsetBlocks;

    private void StartCleaner()
    {
        _segmentSealedMs = new long[_super.SegmentCount];
        Array.Fill(_segmentSealedMs, NowMs());
        _cleanerBuffer = new AlignedBuffer(_super.SegmentBytes);
        _cleaner = Task.Run(CleanerLoopAsync);
    }

    private async Task StopCleanerAsync()
    {
        _cleanerWake.Set();
        if (_cleaner != null)
        {
            try { await _cleaner.ConfigureAwait(false); } catch (OperationCanceledException) { }
        }
        _cleanerBuffer?.Dispose();
    }

    private void SegmentSealed(uint segment)
    {
        if (segment < _segmentSealedMs.Length) _segmentSealedMs[segment] = NowMs();
    }

    private async Task CleanerLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            await _cleanerWake.WaitAsync().ConfigureAwait(false);
            if (_stop.IsCancellationRequested || _failure != null) break;
            try
            {
                WarnOnFill();
                while (!_stop.IsCancellationRequested && await CleanOnceAsync().ConfigureAwait(false))
                {
                }
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                _log.LogError("cleaner: {Message}", e.Message);
                await Task.Delay(CleanerTickMs * 10).ConfigureAwait(false);
            }
        }
    }

    /// <summary>One step of cleaning; true when it did work and more may be needed.</summary>
    private async Task<bool> CleanOnceAsync()
    {
        int free, quarantined, dead;
        uint victim;
        lock (_sync)
        {
            free = _freeSegments.Count;
            long lastHostIoMs = Math.Max(Volatile.Read(ref _lastHostWriteMs), Volatile.Read(ref _lastHostReadMs));
            bool idleCompaction = NowMs() - lastHostIoMs > IdleMs && DeadBlocksLocked() > _state.Chunks.LiveCount * IdleDeadFraction + BlocksPerSegment / 2;
            if (free >= FreeSegmentsTarget && !idleCompaction) return false;
            quarantined = _quarantine.Count;
            dead = CountDeadSegmentsLocked();
            victim = PickVictimLocked(free);
            if (victim != BatchHeader.NoSegment)
            {
                // Moving a victim first costs its live blocks (and headers) at the head: only clean
                // when that fits beside the space dirty pages have reserved, or the cleaner would
                // eat the room acknowledged writes are promised.
                int live = _state.SegmentLive[victim];
                long cost = live + (long)MaxHeaderBlocks * ((live + MaxBatchBlocks - 1) / MaxBatchBlocks + 1);
                if (FreeBlocksLocked() + ColdRoomLocked() - _reservedBlocks < cost) victim = BatchHeader.NoSegment;
            }
        }
        bool checkpointDue = dead + quarantined >= CheckpointBatchSegmentsWith(free)
            || (dead + quarantined > 0 && (free < 2 || victim == BatchHeader.NoSegment));
        if (checkpointDue)
        {
            // Dead segments come back through checkpoints: quarantined ones now, dead ones at the next.
            await _commit.WaitAsync(_stop.Token).ConfigureAwait(false);
            try
            {
                ThrowIfFailed();
                WriteCheckpointLocked("space");
            }
            finally
            {
                _commit.Release();
            }
            _spaceFreed.Set();
            return true;
        }
        if (victim == BatchHeader.NoSegment) return false;
        await _commit.WaitAsync(_stop.Token).ConfigureAwait(false);
        try
        {
            ThrowIfFailed();
            return CleanSegmentLocked(victim);
        }
        finally
        {
            _commit.Release();
        }
    }

    /// <summary>Blocks in used segments (other than the head and next) that hold nothing live, plus quarantined segments.</summary>
    private long DeadBlocksLocked()
    {
        long dead = (long)_quarantine.Count * BlocksPerSegment;
        for (uint s = 0; s < _segments.Length; s++)
        {
            if (_segments[s] == SegmentState.Used && !IsOpenSegmentLocked(s))
                dead += BlocksPerSegment - _state.SegmentLive[s];
        }
        return dead;
    }

    private int CountDeadSegmentsLocked()
    {
        int dead = 0;
        for (uint s = 0; s < _segments.Length; s++)
        {
            if (_segments[s] == SegmentState.Used && !IsOpenSegmentLocked(s) && _state.SegmentLive[s] == 0) dead++;
        }
        return dead;
    }

    private uint PickVictimLocked(int free)
    {
        double maxUtilization = free <= 2 ? MaxVictimUtilizationWhenFull : MaxVictimUtilization;
        long now = NowMs();
        uint best = BatchHeader.NoSegment;
        double bestScore = 0;
        for (uint s = 0; s < _segments.Length; s++)
        {
            // Dead segments (nothing live) need only a checkpoint, not cleaning.
            if (_segments[s] != SegmentState.Used || IsOpenSegmentLocked(s) || _state.SegmentLive[s] == 0) continue;
            double u = (double)_state.SegmentLive[s] / BlocksPerSegment;
            if (u > maxUtilization) continue;
            // Cleaning must gain more than the headers the moves cost.
            if (BlocksPerSegment - _state.SegmentLive[s] <= 2 * MaxHeaderBlocks) continue;
            double age = 1 + (now - _segmentSealedMs[s]);
            double score = (1 - u) * age / (1 + u);
            if (score > bestScore) { bestScore = score; best = s; }
        }
        return best;
    }

    /// <summary>Moves all of a victim's live chunks to the head, a batch at a time. Caller holds the commit mutex.</summary>
    private bool CleanSegmentLocked(uint victim)
    {
        long start = Stopwatch.GetTimestamp();
        uint first = victim * (uint)BlocksPerSegment, end = first + (uint)BlocksPerSegment;
        Span<byte> segmentData = _cleanerBuffer!.Span;
        _device.Read(_super.SegmentOffset(victim), segmentData);

        // Metadata changes only under the commit mutex, which we hold: the chunk table is still.
        ChunkTable chunks = _state.Chunks;
        _victimChunks.Clear();
        for (uint id = ChunkTable.FirstChunkId; id < chunks.HighWater; id++)
        {
            ChunkEntry e = chunks[id];
            if (e.RefCount != 0 && e.Location >= first && e.Location < end) _victimChunks.Add(id);
        }

        Span<byte> dataArea = _logBuffer.Slice(MaxHeaderBlocks * ChunkBytes, MaxBatchBlocks * ChunkBytes);
        bool corrupt = false;
        int next = 0;
        while (next < _victimChunks.Count)
        {
            _logBuffer.Slice(0, MaxHeaderBlocks * ChunkBytes).Clear();
            var writer = new RecordWriter(_logBuffer.Slice(BatchHeader.FixedBytes, MaxRecordBytes));
            int moved = 0;
            int room;
            uint coldLocation;
            lock (_sync)
            {
                coldLocation = ColdPlacementLocked(_victimChunks.Count - next, out room);
                if (coldLocation == BatchHeader.NoSegment) room = DataRoomLocked();
            }
            for (; next < _victimChunks.Count && moved < room; next++)
            {
                uint id = _victimChunks[next];
                ChunkEntry e = chunks[id];
                ReadOnlySpan<byte> data = segmentData.Slice((int)(e.Location - first) * ChunkBytes, ChunkBytes);
                if (Crc32C.Compute(data) != e.Crc)
                {
                    if (!corrupt) _log.LogError("cleaner: chunk {Id} at block {Location} fails its CRC; segment {Segment} is kept", id, e.Location, victim);
                    corrupt = true;
                    continue;
                }
                data.CopyTo(dataArea.Slice(moved * ChunkBytes, ChunkBytes));
                writer.MoveChunk(id, moved);
                moved++;
            }
            if (moved == 0) break;
            if (coldLocation == BatchHeader.NoSegment)
            {
                WriteBatch(writer.Length, moved, metadataOnly: true, lazy: true);
                _gcBytesMovedInline += (long)moved * ChunkBytes;
            }
            else
            {
                // The data goes to the cleaner's segment; the batch (header only) records where.
                // Both reach the disk with the next fdatasync; replay checks the data's CRC.
                ReadOnlySpan<byte> movedData = dataArea[..(moved * ChunkBytes)];
                writer.MovedData(coldLocation, moved, Crc32C.Compute(movedData));
                WriteLogBytes(Superblock.BlockOffset(coldLocation), _logBuffer, MaxHeaderBlocks * ChunkBytes, moved * ChunkBytes);
                WriteBatch(writer.Length, 0, metadataOnly: true, lazy: true);
                lock (_sync)
                {
                    _deviceBytesWritten += (long)moved * ChunkBytes;
                    _coldOffsetBlocks += (uint)moved;
                    if (_coldOffsetBlocks >= BlocksPerSegment)
                    {
                        SegmentSealed(_coldSegment);
                        _coldSegment = BatchHeader.NoSegment;
                    }
                }
            }
            _gcBytesMoved += (long)moved * ChunkBytes;
        }
        if (_state.SegmentLive[victim] == 0) _gcSegmentsCleaned++;
        _gcTicks += Stopwatch.GetTimestamp() - start;
        if (corrupt)
        {
            // Leave it: the checker reports it; cleaning it again would find the same.
            lock (_sync) _segmentSealedMs[victim] = long.MaxValue / 2;
            return false;
        }
        return true;
    }

    /// <summary>A segment the head, the log's next segment or the cleaner's segment is being written in.</summary>
    private bool IsOpenSegmentLocked(uint s) => s == _headSegment || s == _nextSegment || s == _coldSegment;

    /// <summary>Blocks left in the cleaner's segment (only moved chunks go there).</summary>
    private long ColdRoomLocked() => _coldSegment == BatchHeader.NoSegment ? 0 : BlocksPerSegment - _coldOffsetBlocks;

    /// <summary>
    /// Where the next batch of moved chunks goes: the cleaner's own segment (returns the block to
    /// write at and the room there), so data that survived cleaning is not mixed with new writes
    /// and segments age apart; or NoSegment to move inline in the log (when opening a segment for
    /// moved data would eat into space promised to dirty pages, or no segment is free).
    /// </summary>
    private uint ColdPlacementLocked(int chunksLeft, out int room)
    {
        room = 0;
        if (_coldSegment == BatchHeader.NoSegment)
        {
            long headers = (long)MaxHeaderBlocks * ((chunksLeft + MaxBatchBlocks - 1) / MaxBatchBlocks + 1);
            if (_freeSegments.Count == 0 || FreeBlocksLocked() - BlocksPerSegment - _reservedBlocks < headers + MetadataReserveBlocks)
                return BatchHeader.NoSegment;
            _coldSegment = _freeSegments.Pop();
            _segments[_coldSegment] = SegmentState.Used;
            _coldOffsetBlocks = 0;
        }
        room = (int)Math.Min(MaxBatchBlocks, BlocksPerSegment - _coldOffsetBlocks);
        return _coldSegment * (uint)BlocksPerSegment + _coldOffsetBlocks;
    }

    /// <summary>True when the cleaner can give back at least a segment's worth (so a writer should wait, not fail).</summary>
    private bool SpaceReclaimableLocked()
    {
        // Moving live chunks also costs header blocks: ask for a clear margin.
        return _quarantine.Count > 0 || DeadBlocksLocked() >= 2L * BlocksPerSegment;
    }

    private void WarnOnFill()
    {
        int[] thresholds = _options.FillWarningPercents;
        if (thresholds.Length == 0) return;
        long capacityBlocks = (long)_super.SegmentCount * BlocksPerSegment;
        int percent;
        lock (_sync) percent = (int)(_state.Chunks.LiveCount * 100 / Math.Max(1, capacityBlocks));
        int crossed = 0;
        foreach (int t in thresholds) if (percent >= t && t > crossed) crossed = t;
        if (crossed > _fillWarnedPercent)
            _log.LogWarning("pool {Uuid} is {Percent}% full of live data (warning threshold {Threshold}%)", Uuid, percent, crossed);
        _fillWarnedPercent = crossed;
    }
}
