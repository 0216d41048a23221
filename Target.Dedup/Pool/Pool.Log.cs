// The log: batches appended at the head of the current segment, each one aligned write, many
// of them made durable by one fdatasync (group commit; when, see Pool.Cache.cs); segment
// chaining through each header's nextSegment; recovery
// (newest valid checkpoint + replay of the tail, stopping at the first torn or stale batch);
// checkpoints and the segment free list.
// Invariants: a batch is applied to memory only after it is written (durable: after a flush,
// which every checkpoint is preceded by, see Pool.Cache.cs); the head never passes
// into a segment that is not Free; the log between the newest durable checkpoint's position
// and the head is never overwritten.
using System.Diagnostics;
using Microsoft.Extensions.Logging;
using Target.Dedup.Device;
using Target.Dedup.Engine;
using Target.Dedup.Format;

namespace Target.Dedup;

public sealed partial class Pool
{
    /// <summary>Data blocks per destage batch: 1 MiB, one write.</summary>
    internal const int MaxBatchBlocks = 256;
    /// <summary>Header sectors a batch may use: 256 new chunks and 256 map records need 3.</summary>
    internal const int MaxHeaderBlocks = 4;
    private const int MaxRecordBytes = MaxHeaderBlocks * ChunkBytes - BatchHeader.FixedBytes;

    private readonly SegmentState[] _segments;
    private readonly Stack<uint> _freeSegments = new();
    private readonly List<uint> _quarantine = new();
    private readonly AlignedBuffer _logBuffer;
    private uint _headSegment;
    private uint _headOffsetBlocks;
    private uint _nextSegment = BatchHeader.NoSegment;
    private ulong _nextSeq = 1;
    /// <summary>headerCrc of the last batch in the log: the chain link the next batch carries (0 before the first).</summary>
    private uint _lastHeaderCrc;
    private ulong _checkpointSeq;
    private long _checkpointsWritten;
    private long _checkpointTicks;
    private long _journalBytesSinceCheckpoint;
    private long _reservedBlocks;
    private DateTimeOffset? _lastRecoveryTime;
    private double _lastRecoveryMs;
    private volatile Exception? _failure;

    private int BlocksPerSegment => _super.BlocksPerSegment;

    /// <summary>Blocks the log can still take: free segments, the rest of the head segment, the reserved next segment.</summary>
    private long FreeBlocksLocked()
    {
        long blocks = (long)_freeSegments.Count * BlocksPerSegment + (BlocksPerSegment - _headOffsetBlocks);
        if (_nextSegment != BatchHeader.NoSegment) blocks += BlocksPerSegment;
        return blocks;
    }

    /// <summary>A batch that would leave fewer blocks than this at the end of a segment moves on instead.</summary>
    private const int MinDataRoomBlocks = 16;

    /// <summary>
    /// Data blocks the next batch may carry so that it still fits in the head segment: batches are
    /// cut to the room left rather than leaving the segment's tail unused (a 1 MiB batch and its
    /// header would otherwise waste up to a quarter of each 4 MiB segment).
    /// </summary>
    private int DataRoomLocked()
    {
        int room = BlocksPerSegment - (int)_headOffsetBlocks - MaxHeaderBlocks;
        // With no next segment the tail is the last space there is: use it however small.
        if (room < MinDataRoomBlocks && (_nextSegment != BatchHeader.NoSegment || room < 1)) return MaxBatchBlocks;
        return Math.Min(MaxBatchBlocks, room);
    }

    /// <summary>Blocks kept back for metadata-only batches (trim, delete) so a full pool can still free space.</summary>
    private long MetadataReserveBlocks => BlocksPerSegment / 2;

    /// <summary>
    /// Blocks dirty pages leave to the cleaner: the live rest of one victim segment and its batch
    /// headers. Without it a large write cache in front of a nearly full pool reserves every free
    /// block, the cleaner never finds room to move a victim, and writers end in ENOSPC although
    /// most of the pool is dead.
    /// </summary>
    private long CleanerReserveBlocks => BlocksPerSegment + (long)MaxHeaderBlocks * (BlocksPerSegment / MaxBatchBlocks + 2);

    /// <summary>Space check for a page about to become dirty: 1 data block plus a worst-case header share.</summary>
    private bool TryReserveForPageLocked()
    {
        if (FreeBlocksLocked() - _reservedBlocks - 2 < MetadataReserveBlocks + CleanerReserveBlocks) return false;
        _reservedBlocks += 2;
        return true;
    }

    private void ReleasePageReservationLocked() => _reservedBlocks -= 2;

    private void Recover()
    {
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        Checkpoint.Header? best = null;
        int bestSlot = -1;
        foreach (int slot in new[] { 0, 1 })
        {
            Checkpoint.Header? h = Checkpoint.TryReadHeader(Checkpoint.PathOf(_options.Directory, slot), _poolTag, out string? problem);
            if (h == null)
            {
                if (problem != "missing") _log.LogWarning("checkpoint-{Slot} ignored: {Problem}", slot, problem);
                continue;
            }
            if (best == null || h.Seq > best.Seq) { best = h; bestSlot = slot; }
        }
        CheckpointPosition position;
        if (best != null)
        {
            SegmentState[] loaded = Checkpoint.Load(Checkpoint.PathOf(_options.Directory, bestSlot), _state);
            Array.Copy(loaded, _segments, loaded.Length);
            position = best.Position;
            _checkpointSeq = best.Seq;
        }
        else
        {
            // A new pool: the log starts at segment 0, segment 1 is next.
            position = new CheckpointPosition(1, 0, 0, 1, 0);
            _segments[0] = SegmentState.Used;
        }
        _headSegment = position.Segment;
        _headOffsetBlocks = position.OffsetBlocks;
        _nextSegment = position.NextSegment;
        _nextSeq = position.LogSeq;
        _lastHeaderCrc = position.PreviousHeaderCrc;
        _segments[_headSegment] = SegmentState.Used;
        if (_nextSegment != BatchHeader.NoSegment) _segments[_nextSegment] = SegmentState.Used;

        int replayed = Replay();

        for (uint s = 0; s < _segments.Length; s++)
        {
            // The cleaner's segment of moved data is taken after a checkpoint that still lists it
            // free; the replayed moves into it make it used.
            if (_segments[s] == SegmentState.Free && _state.SegmentLive[s] > 0) _segments[s] = SegmentState.Used;
            if (_segments[s] == SegmentState.Free) _freeSegments.Push(s);
            else if (_segments[s] == SegmentState.Quarantined) _quarantine.Add(s);
        }
        ReverseFreeStack();
        SyncVolumeObjects();
        _lastRecoveryMs = ElapsedMs(start);
        _lastRecoveryTime = DateTimeOffset.UtcNow;
        _log.LogInformation("pool {Uuid} opened: checkpoint {Checkpoint}, replayed {Batches} journal batches in {Ms:F0} ms; {Volumes} volumes, {Chunks} unique chunks",
            Uuid, best?.Seq ?? 0, replayed, _lastRecoveryMs, _state.VolumesById.Count, _state.Chunks.LiveCount);
        // Bound the next replay: everything replayed now goes into a fresh checkpoint.
        // Also when the log has no next segment but free ones exist: the checkpoint announces one.
        if (!_checkOnly && (replayed > 0 || best == null || (_nextSegment == BatchHeader.NoSegment && _freeSegments.Count > 0))) WriteCheckpointLocked("open");
    }

    private void ReverseFreeStack()
    {
        // Lowest segment numbers first, so a new pool fills from the front.
        uint[] items = _freeSegments.ToArray();
        _freeSegments.Clear();
        foreach (uint s in items) _freeSegments.Push(s);
    }

    /// <summary>Replays batches from the head position; leaves the head after the last valid one.</summary>
    private int Replay()
    {
        int batches = 0;
        using var header = new AlignedBuffer(MaxHeaderBlocks * ChunkBytes);
        using var data = new AlignedBuffer(MaxBatchBlocks * ChunkBytes);
        while (true)
        {
            if (TryReadBatch(_headSegment, _headOffsetBlocks, header, data, out BatchHeader.Info info))
            {
                ApplyReplayed(header, info, _headSegment, _headOffsetBlocks);
                _headOffsetBlocks += (uint)(info.HeaderBlocks + info.DataBlocks);
                _nextSegment = info.NextSegment;
                if (_nextSegment != BatchHeader.NoSegment) _segments[_nextSegment] = SegmentState.Used;
                batches++;
                continue;
            }
            // Not at this position: the writer may have moved on to the next segment.
            if (_nextSegment != BatchHeader.NoSegment && TryReadBatch(_nextSegment, 0, header, data, out info))
            {
                _headSegment = _nextSegment;
                _headOffsetBlocks = 0;
                _segments[_headSegment] = SegmentState.Used;
                ApplyReplayed(header, info, _headSegment, 0);
                _headOffsetBlocks = (uint)(info.HeaderBlocks + info.DataBlocks);
                _nextSegment = info.NextSegment;
                if (_nextSegment != BatchHeader.NoSegment) _segments[_nextSegment] = SegmentState.Used;
                batches++;
                continue;
            }
            return batches;
        }
    }

    private void ApplyReplayed(AlignedBuffer header, BatchHeader.Info info, uint segment, uint offsetBlocks)
    {
        uint dataStart = segment * (uint)BlocksPerSegment + offsetBlocks + (uint)info.HeaderBlocks;
        try
        {
            _state.ApplyBatch(header.Slice(BatchHeader.FixedBytes, info.RecordBytes), dataStart, replaying: true);
        }
        catch (Exception e) when (e is InvalidDataException or InvalidOperationException or OutOfRangeException)
        {
            throw new InvalidDataException($"journal batch {info.Seq} at segment {segment}+{offsetBlocks} is valid on disk but cannot be applied: {e.Message}; run `target pool check`", e);
        }
        _nextSeq = info.Seq + 1;
        _lastHeaderCrc = info.HeaderCrc;
        _journalBytesSinceCheckpoint += (long)info.HeaderBlocks * ChunkBytes;
    }

    /// <summary>Reads and fully validates the batch at a position (magic, pool, sequence, header and data CRCs).</summary>
    private bool TryReadBatch(uint segment, uint offsetBlocks, AlignedBuffer header, AlignedBuffer data, out BatchHeader.Info info)
    {
        info = default;
        if (offsetBlocks + 1 > BlocksPerSegment) return false;
        long offset = Superblock.BlockOffset(segment * (uint)BlocksPerSegment + offsetBlocks);
        try
        {
            _device.Read(offset, header.Slice(0, ChunkBytes));
        }
        catch (IOException e)
        {
            _log.LogWarning("journal read at segment {Segment}+{Offset} failed ({Message}); treating it as the end of the log", segment, offsetBlocks, e.Message);
            return false;
        }
        if (!BatchHeader.TryReadFixed(header.Slice(0, ChunkBytes), _poolTag, out info)) return false;
        if (info.Seq != _nextSeq) return false;
        // A batch of an earlier run, left beyond a head that recovery moved back (a lost write), can carry
        // the expected sequence number at the expected place; it never links to the batch before it.
        if (info.PreviousHeaderCrc != _lastHeaderCrc) return false;
        if (info.HeaderBlocks > MaxHeaderBlocks || info.DataBlocks > MaxBatchBlocks) return false;
        if (offsetBlocks + info.HeaderBlocks + info.DataBlocks > BlocksPerSegment) return false;
        try
        {
            if (info.HeaderBlocks > 1) _device.Read(offset + ChunkBytes, header.Slice(ChunkBytes, (info.HeaderBlocks - 1) * ChunkBytes));
            if (!BatchHeader.CrcMatches(header.Slice(0, info.HeaderBlocks * ChunkBytes))) return false;
            if (info.DataBlocks > 0)
            {
                Span<byte> d = data.Slice(0, info.DataBlocks * ChunkBytes);
                _device.Read(offset + (long)info.HeaderBlocks * ChunkBytes, d);
                if (Hashing.Crc32C.Compute(d) != info.DataCrc) return false;
            }
            if (!MovedDataIntact(header.Slice(BatchHeader.FixedBytes, info.RecordBytes), data)) return false;
        }
        catch (IOException e)
        {
            _log.LogWarning("journal read at segment {Segment}+{Offset} failed ({Message}); treating it as the end of the log", segment, offsetBlocks, e.Message);
            return false;
        }
        return true;
    }

    /// <summary>
    /// The cleaner's batches may carry their data outside the batch (a MovedData record): it was
    /// written before the batch but shares its fdatasync, so a crash can leave the batch durable
    /// and the data torn; such a batch ends the log like one whose own data is torn.
    /// </summary>
    private bool MovedDataIntact(ReadOnlySpan<byte> records, AlignedBuffer data)
    {
        var reader = new RecordReader(records);
        try
        {
            while (reader.Next(out LogRecord r))
            {
                if (r.Type != RecordType.MovedData) continue;
                if (r.Count < 1 || r.Count > MaxBatchBlocks || (long)r.Value + r.Count > (long)_super.SegmentCount * BlocksPerSegment) return false;
                Span<byte> d = data.Slice(0, (int)r.Count * ChunkBytes);
                _device.Read(Superblock.BlockOffset(r.Value), d);
                if (Hashing.Crc32C.Compute(d) != r.Crc) return false;
            }
        }
        catch (InvalidDataException)
        {
            // The header's CRC held, so this is no torn write: let applying it report the problem.
        }
        return true;
    }

    /// <summary>Builds, writes and applies a metadata-only batch. Caller holds the commit mutex.</summary>
    private void CommitRecords(RecordBuilder build)
    {
        ThrowIfFailed();
        int headerBytes = MaxHeaderBlocks * ChunkBytes;
        Span<byte> area = _logBuffer.Slice(0, headerBytes);
        area.Clear();
        var writer = new RecordWriter(area[BatchHeader.FixedBytes..]);
        build(ref writer);
        WriteBatch(writer.Length, 0, metadataOnly: true);
    }

    internal delegate void RecordBuilder(ref RecordWriter writer);

    /// <summary>A batch on its way to the device: not applied.</summary>
    private readonly struct WrittenBatch(AlignedBuffer buffer, int headerStart, int headerBlocks, int recordBytes, int totalBlocks, uint dataStart)
    {
        public AlignedBuffer Buffer { get; } = buffer;
        public int HeaderStart { get; } = headerStart;
        public int HeaderBlocks { get; } = headerBlocks;
        public int RecordBytes { get; } = recordBytes;
        public int TotalBlocks { get; } = totalBlocks;
        public uint DataStart { get; } = dataStart;
    }

    /// <summary>
    /// Writes the batch whose records are at _logBuffer[FixedBytes..] and whose data blocks sit
    /// at _logBuffer[MaxHeaderBlocks * ChunkBytes..]; fdatasyncs unless <paramref name="lazy"/> (the
    /// fdatasync makes the destage groups written before it durable too; a lazy batch waits for the
    /// next flush like a destage group); applies it. Caller holds the commit mutex, with nothing in flight.
    /// </summary>
    private void WriteBatch(int recordBytes, int dataBlocks, bool metadataOnly, bool lazy = false)
    {
        WrittenBatch batch = WriteBatchUnflushed(_logBuffer, recordBytes, dataBlocks, metadataOnly);
        CountLogWrite(flushSubmitted: false);
        if (!lazy) FlushJournalLocked();
        ApplyWritten(batch);
        CheckpointIfDue();
    }

    // The thread-pool writes (no log ring) as methods of their own: a lambda in WriteBatchUnflushed
    // would capture its parameters, and C# allocates that closure on every call, ring or not.
    private Task WriteLogGatheredTask(long offset, AlignedBuffer buffer, int headerStart, int headerBytes, nint[] dataPages, int dataBlocks) =>
        Task.Run(() => WriteLogGathered(offset, buffer, headerStart, headerBytes, dataPages, dataBlocks));

    private Task WriteLogBytesTask(long offset, AlignedBuffer buffer, int start, int bytes) =>
        Task.Run(() => WriteLogBytes(offset, buffer, start, bytes));

    /// <summary>
    /// Writes one batch from <paramref name="buffer"/> (records at [FixedBytes..], data at
    /// [MaxHeaderBlocks * ChunkBytes..]) at the head and moves the head past it, without a
    /// flush: batches written back to back share one fdatasync (FlushLog) when one is due, and are
    /// applied (ApplyWritten, in order) once written. With <paramref name="writes"/>, the device write
    /// runs on the thread pool (added to the list) while the caller builds the next batch; the
    /// caller waits for all of them before the flush. <paramref name="knownDataCrc"/>: the data's
    /// CRC-32C when the caller already has it (combined from the chunks' CRCs). With
    /// <paramref name="dataPages"/> (and the CRC known), the data blocks are not in the buffer but
    /// at those 4 KiB addresses, which must not change until the write completed: the device
    /// gathers them after the header; with the log ring, the write is submitted there as
    /// <paramref name="ringSlot"/> (and reaped by its group's WaitGroup) instead of a task in
    /// <paramref name="writes"/>. Caller holds the commit mutex.
    /// </summary>
    private WrittenBatch WriteBatchUnflushed(AlignedBuffer buffer, int recordBytes, int dataBlocks, bool metadataOnly, List<Task>? writes = null, uint? knownDataCrc = null, nint[]? dataPages = null, int ringSlot = -1)
    {
        if (dataPages != null && dataBlocks > 0 && knownDataCrc == null) throw new ArgumentException("a batch gathered from pages needs its data CRC", nameof(knownDataCrc));
        int headerBlocks = BatchHeader.HeaderBlocks(recordBytes);
        if (headerBlocks > MaxHeaderBlocks) throw new InvalidOperationException("batch header too large");
        int totalBlocks = headerBlocks + dataBlocks;
        uint segment, offsetBlocks;
        lock (_sync)
        {
            if (_headOffsetBlocks + totalBlocks > BlocksPerSegment)
            {
                if (_nextSegment == BatchHeader.NoSegment)
                    throw new NoSpaceException("pool full: no free segment for the log");
                SegmentSealed(_headSegment);
                _headSegment = _nextSegment;
                _headOffsetBlocks = 0;
                if (_freeSegments.Count < FreeSegmentsTarget) _cleanerWake.Set();
                _nextSegment = _freeSegments.Count > 0 ? _freeSegments.Pop() : BatchHeader.NoSegment;
                if (_nextSegment != BatchHeader.NoSegment) _segments[_nextSegment] = SegmentState.Used;
            }
            if (!metadataOnly && FreeBlocksLocked() - totalBlocks < 0) throw new NoSpaceException("pool full");
            segment = _headSegment;
            offsetBlocks = _headOffsetBlocks;
        }

        // The header sits right before the data: move the records so the write is contiguous.
        int headerStart = (MaxHeaderBlocks - headerBlocks) * ChunkBytes;
        Span<byte> bytes = buffer.Span;
        if (headerStart > 0)
        {
            bytes.Slice(BatchHeader.FixedBytes, recordBytes).CopyTo(bytes[(headerStart + BatchHeader.FixedBytes)..]);
            bytes.Slice(headerStart + BatchHeader.FixedBytes + recordBytes, headerBlocks * ChunkBytes - BatchHeader.FixedBytes - recordBytes).Clear();
        }
        else
        {
            bytes.Slice(BatchHeader.FixedBytes + recordBytes, headerBlocks * ChunkBytes - BatchHeader.FixedBytes - recordBytes).Clear();
        }
        Span<byte> header = bytes.Slice(headerStart, headerBlocks * ChunkBytes);
        uint dataCrc = dataBlocks == 0 ? 0 : knownDataCrc ?? Hashing.Crc32C.Compute(bytes.Slice(MaxHeaderBlocks * ChunkBytes, dataBlocks * ChunkBytes));
        ulong seq = _nextSeq;
        BatchHeader.WriteFixed(header, seq, 0, _poolTag, headerBlocks, dataBlocks, recordBytes, _nextSegment, dataCrc, _lastHeaderCrc);
        BatchHeader.Seal(header);
        uint headerCrc = System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(header[4..]);

        long offset = Superblock.BlockOffset(segment * (uint)BlocksPerSegment + offsetBlocks);
        if (dataPages != null)
        {
            int headerBytes = headerBlocks * ChunkBytes;
            if (_logRing != null && ringSlot >= 0)
            {
                try
                {
                    _logRing.SubmitWrite(ringSlot, offset, buffer.Slice(headerStart, headerBytes), dataPages.AsSpan(0, dataBlocks));
                }
                catch (IOException e)
                {
                    throw JournalFailed(e);
                }
            }
            else if (writes == null) WriteLogGathered(offset, buffer, headerStart, headerBytes, dataPages, dataBlocks);
            else writes.Add(WriteLogGatheredTask(offset, buffer, headerStart, headerBytes, dataPages, dataBlocks));
        }
        else if (writes == null) WriteLogBytes(offset, buffer, headerStart, totalBlocks * ChunkBytes);
        else writes.Add(WriteLogBytesTask(offset, buffer, headerStart, totalBlocks * ChunkBytes));
        lock (_sync)
        {
            // The next batch goes after this one and links to it; a failed flush fails the pool.
            _headOffsetBlocks = offsetBlocks + (uint)totalBlocks;
            _nextSeq = seq + 1;
            _lastHeaderCrc = headerCrc;
        }
        return new WrittenBatch(buffer, headerStart, headerBlocks, recordBytes, totalBlocks, segment * (uint)BlocksPerSegment + offsetBlocks + (uint)headerBlocks);
    }

    private void WriteLogBytes(long offset, AlignedBuffer buffer, int start, int length)
    {
        try
        {
            _device.Write(offset, buffer.Slice(start, length));
        }
        catch (IOException e)
        {
            throw JournalFailed(e);
        }
    }

    private void WriteLogGathered(long offset, AlignedBuffer buffer, int headerStart, int headerBytes, nint[] dataPages, int dataBlocks)
    {
        try
        {
            _device.WriteGathered(offset, buffer.Slice(headerStart, headerBytes), dataPages.AsSpan(0, dataBlocks));
        }
        catch (IOException e)
        {
            throw JournalFailed(e);
        }
    }

    /// <summary>The fdatasync that makes every batch written since the last one durable.</summary>
    private void FlushLog()
    {
        try
        {
            _device.Flush();
        }
        catch (IOException e)
        {
            throw JournalFailed(e);
        }
    }

    /// <summary>Applies a written batch, exactly as replay would, from the bytes written. Caller holds the commit mutex.</summary>
    private void ApplyWritten(in WrittenBatch batch)
    {
        lock (_sync)
        {
            _journalBytesSinceCheckpoint += (long)batch.HeaderBlocks * ChunkBytes;
            _deviceBytesWritten += (long)batch.TotalBlocks * ChunkBytes;
            _state.ApplyBatch(batch.Buffer.Slice(batch.HeaderStart + BatchHeader.FixedBytes, batch.RecordBytes), batch.DataStart, replaying: false);
            SyncVolumeObjects();
        }
    }

    private void CheckpointIfDue()
    {
        if (_journalBytesSinceCheckpoint >= _options.CheckpointJournalBytes) WriteCheckpointLocked("journal size");
    }

    /// <summary>Writes a checkpoint at the head position. Caller holds the commit mutex (or is recovering).</summary>
    /// <param name="reason">Why (for the log).</param>
    private void WriteCheckpointLocked(string reason)
    {
        ThrowIfFailed();
        // The checkpoint describes every batch applied so far: they must be durable before it is.
        long flushStart = Stopwatch.GetTimestamp();
        FlushJournalLocked();
        long flushEnd = Stopwatch.GetTimestamp();
        ulong seq = _checkpointSeq + 1;
        int slot = (int)(seq & 1);
        CheckpointPosition position;
        SegmentState[] segments;
        List<uint> nowDead = new();
        uint next;
        lock (_sync)
        {
            next = _nextSegment;
            if (next == BatchHeader.NoSegment)
            {
                // The log ran out of segments, so no batch header announces a next one, and the head could
                // never move on even after space is freed. This checkpoint's position announces one (free,
                // or freed by this checkpoint); the log moves into it only after the checkpoint is durable.
                if (_freeSegments.Count > 0) next = _freeSegments.Peek();
                else if (_quarantine.Count > 0) next = _quarantine[0];
            }
            position = new CheckpointPosition(_nextSeq, _headSegment, _headOffsetBlocks, next, _lastHeaderCrc);
            // Segments before the head that hold no live chunk are not needed by this checkpoint:
            // quarantine them now, and reuse them after the next checkpoint is durable.
            for (uint s = 0; s < _segments.Length; s++)
            {
                if (_segments[s] == SegmentState.Used && !IsOpenSegmentLocked(s) && _state.SegmentLive[s] == 0)
                    nowDead.Add(s);
            }
            segments = (SegmentState[])_segments.Clone();
            foreach (uint s in nowDead) segments[s] = SegmentState.Quarantined;
            foreach (uint s in _quarantine) segments[s] = SegmentState.Free;
            if (next != BatchHeader.NoSegment) segments[next] = SegmentState.Used;
        }
        // Metadata changes only under the commit mutex, which the caller holds, so the state is
        // still while it is written; reads and cache writes go on meanwhile.
        long writeStart = Stopwatch.GetTimestamp();
        Checkpoint.Write(Checkpoint.PathOf(_options.Directory, slot), seq, _poolTag, position, _state, segments);
        long writeEnd = Stopwatch.GetTimestamp();
        Interlocked.Add(ref _checkpointTicks, writeEnd - writeStart);
        Interlocked.Increment(ref _checkpointsWritten);
        // The flush is timed apart: on a disk that stalls writes while it flushes, it is what a checkpoint costs a stream.
        if (_log.IsEnabled(LogLevel.Debug))
            _log.LogDebug("checkpoint {Seq} ({Reason}): journal flush {FlushMs:F1} ms, checkpoint write {WriteMs:F1} ms; {Quarantined} segments quarantined, {Free} free",
                seq, reason, Stopwatch.GetElapsedTime(flushStart, flushEnd).TotalMilliseconds, Stopwatch.GetElapsedTime(writeStart, writeEnd).TotalMilliseconds, nowDead.Count, segments.Count(s => s == SegmentState.Free));
        // Quarantined segments become reusable: wait out every device read that may have looked
        // up a location in one of them (readers hold the gate from lookup to the end of the read).
        _reuseGate.EnterWriteLock();
        try
        {
            lock (_sync)
            {
                _checkpointSeq = seq;
                _journalBytesSinceCheckpoint = 0;
                foreach (uint s in _quarantine) { _segments[s] = SegmentState.Free; _freeSegments.Push(s); }
                _quarantine.Clear();
                foreach (uint s in nowDead) { _segments[s] = SegmentState.Quarantined; _quarantine.Add(s); }
                if (next != _nextSegment)
                {
                    uint[] free = _freeSegments.Where(s => s != next).Reverse().ToArray();
                    _freeSegments.Clear();
                    foreach (uint s in free) _freeSegments.Push(s);
                    _segments[next] = SegmentState.Used;
                    _nextSegment = next;
                }
            }
        }
        finally
        {
            _reuseGate.ExitWriteLock();
        }
    }

    /// <summary>
    /// A journal write or flush failed: the pool fails (nothing may be written after a write that
    /// may be lost). Returns the pool's failure, for the caller to throw.
    /// </summary>
    private Exception JournalFailed(IOException e)
    {
        Fail(new MediaErrorException($"journal write failed: {e.Message}", e));
        return _failure!;
    }

    private void Fail(Exception e)
    {
        if (_failure != null) return;
        _failure = e;
        _log.LogCritical(e, "pool {Uuid} failed: writes are refused until restart; reads go on", Uuid);
    }

    private void ThrowIfFailed()
    {
        if (_failure is { } f) throw f as StorageException ?? new MediaErrorException(f.Message, f);
    }
}
