// Host I/O: reads (cache, then map, then chunk table, then an O_DIRECT read checked against
// the chunk's CRC), writes into the cache (read-modify-write for partial chunks), trim and
// write-zeroes as journalled map ranges, allocation queries, compare-and-write, and copy by
// reference. Invariant: a read never returns bytes that fail their CRC; unmapped reads are zeros.
using System.Buffers;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using Microsoft.Extensions.Logging;
using Target.Dedup.Device;
using Target.Dedup.Engine;
using Target.Dedup.Format;
using Target.Dedup.Hashing;
using Target.Dedup.Index;

namespace Target.Dedup;

public sealed partial class Pool : IRingReadClient
{
    /// <summary>Blocks read with one device request at most (1 MiB): runs of chunks that lie next to each other in the log.</summary>
    private const int MaxReadRunBlocks = 256;

    private readonly ChunkCache _chunkCache;

    /// <summary>
    /// Held (read side) from looking up a chunk's location to the end of the device read, so a
    /// segment is never handed back for reuse while a read of it is in flight. Lock order: gate, then _sync.
    /// </summary>
    private readonly ReuseGate _reuseGate = new();

    [ThreadStatic] private static AlignedBuffer? t_readBuffer;
    [ThreadStatic] private static ReadPlan? t_readPlan;

    private static AlignedBuffer ReadBuffer => t_readBuffer ??= new AlignedBuffer(MaxReadRunBlocks * ChunkBytes);

    /// <summary>True when small device reads go through io_uring (false: read threads only, e.g. when the kernel forbids it).</summary>
    internal bool ReadsUseIoUring => _reads?.HasRing == true && _device is FileDevice;

    internal VolumeStats VolumeStatsOf(Volume volume)
    {
        lock (_sync) return volume.StatsLocked();
    }

    /// <summary>
    /// Completes inline when the caches and holes cover the range; otherwise small reads go to the
    /// device through io_uring (finished on the ring thread) and others to a read thread.
    /// </summary>
    internal ValueTask ReadAsync(Volume volume, long offset, Memory<byte> destination)
    {
        long now = NowMs();
        if (Volatile.Read(ref _lastHostReadMs) != now) Volatile.Write(ref _lastHostReadMs, now);
        if (destination.Length <= RingRead.MaxBytes && _device is FileDevice file && _reads!.TryRentRingRead() is { } ring)
            return ReadWithRing(ring, file, volume, offset, destination);
        if (TryReadWithoutDevice(volume, offset, destination.Span)) return ValueTask.CompletedTask;
        return _reads!.ReadAsync(volume, offset, destination);
    }

    /// <summary>Plans the read under the lock (memory serves what it can), then queues the device reads of the rest on the ring.</summary>
    private ValueTask ReadWithRing(RingRead read, FileDevice file, Volume volume, long offset, Memory<byte> destination)
    {
        int planned;
        _reuseGate.EnterRead();
        try
        {
            int done = 0;
            lock (_sync) planned = PlanWindowLocked(volume, offset, destination.Span, ref done, read.Plan);
            Debug.Assert(done == destination.Length, "a ring read fits one planning window");
        }
        catch
        {
            _reuseGate.ExitRead();
            read.Cancel();
            throw;
        }
        if (planned == 0)
        {
            _reuseGate.ExitRead();
            read.Cancel();
            return ValueTask.CompletedTask;
        }
        // Runs of chunks that lie next to each other in the log: one device read each. Chunk i of
        // the plan lands at block i of the slot, so a run reads straight into consecutive blocks.
        read.Plan.Planned = planned;
        int runs = 0;
        for (int i = 0; i < planned;)
        {
            int run = 1;
            while (i + run < planned && read.Plan.Location[i + run] == read.Plan.Location[i] + run) run++;
            read.RunFirst[runs] = i;
            read.RunBlocks[runs] = run;
            read.RunOffset[runs] = Superblock.BlockOffset(read.Plan.Location[i]);
            runs++;
            i += run;
        }
        read.Runs = runs;
        read.Fd = file.Descriptor;
        read.Client = this;
        read.Destination = destination;
        return _reads!.SubmitRingRead(read);
    }

    /// <summary>On the ring thread: every device read of <paramref name="read"/> is done; check, copy, cache, complete.</summary>
    void IRingReadClient.FinishRingRead(RingRead read)
    {
        Exception? error = null;
        try
        {
            Span<byte> slot = read.BufferSpan;
            Span<byte> destination = read.Destination.Span;
            for (int r = 0; r < read.Runs; r++)
            {
                int first = read.RunFirst[r], blocks = read.RunBlocks[r];
                Span<byte> stored = slot.Slice(first * ChunkBytes, blocks * ChunkBytes);
                if (read.RunResult[r] != stored.Length)
                {
                    // Short, failed or never submitted: read it again synchronously, which retries
                    // short transfers and turns a real error into a MediaErrorException.
                    if (read.RunResult[r] < 0 && read.RunResult[r] != RingRead.NotSubmitted)
                        _log.LogWarning("io_uring read of {Blocks} chunks at block {Location} failed (errno {Errno}); retrying with pread", blocks, read.Plan.Location[first], -read.RunResult[r]);
                    ReadStoredRunInto(read.Plan.Location[first], stored);
                }
                for (int k = first; k < first + blocks; k++)
                {
                    Span<byte> chunk = slot.Slice(k * ChunkBytes, ChunkBytes);
                    CheckStoredCrc(chunk, read.Plan.Location[k], read.Plan.Crc[k]);
                    chunk.Slice(read.Plan.InChunk[k], read.Plan.Length[k]).CopyTo(destination.Slice(read.Plan.DestinationOffset[k], read.Plan.Length[k]));
                }
            }
            if (_chunkCache.Slots > 0)
            {
                lock (_sync)
                {
                    for (int k = 0; k < read.Plan.Planned; k++)
                        CacheIfCurrentLocked(read.Plan.Id[k], read.Plan.Location[k], read.Plan.Crc[k], slot.Slice(k * ChunkBytes, ChunkBytes));
                }
            }
        }
        catch (Exception e)
        {
            error = e;
        }
        finally
        {
            _reuseGate.ExitRead();
        }
        read.Complete(error);
    }

    /// <summary>Caches a chunk just read only when it is still that chunk's bytes: the id may have been freed and reused meanwhile.</summary>
    private void CacheIfCurrentLocked(uint id, uint location, uint crc, ReadOnlySpan<byte> chunk)
    {
        if (!_state.Chunks.IsLive(id)) return;
        ChunkEntry e = _state.Chunks[id];
        if (e.Location == location && e.Crc == crc) _chunkCache.Insert(id, chunk);
    }

    /// <summary>Serves the read from cache pages, holes and the read cache only; false (having copied some) when a stored chunk is needed.</summary>
    private bool TryReadWithoutDevice(Volume volume, long offset, Span<byte> destination)
    {
        int done = 0;
        lock (_sync) return PlanWindowLocked(volume, offset, destination, ref done, plan: null) == 0 && done == destination.Length;
    }

    /// <summary>
    /// Walks the range from <paramref name="done"/> under the pool lock, copying what memory holds
    /// (dirty pages, holes and zeros, the read cache) and noting in <paramref name="plan"/> the
    /// chunks that must come from the device, up to MaxReadRunBlocks of them. Without a plan it
    /// stops at the first such chunk. Returns how many chunks were planned.
    /// </summary>
    private int PlanWindowLocked(Volume volume, long offset, Span<byte> destination, ref int done, ReadPlan? plan)
    {
        int planned = 0;
        int capacity = plan?.Capacity ?? MaxReadRunBlocks;
        while (done < destination.Length && planned < capacity)
        {
            long position = offset + done;
            long block = position / ChunkBytes;
            int inChunk = (int)(position % ChunkBytes);
            int n = Math.Min(ChunkBytes - inChunk, destination.Length - done);
            if (volume.CachedPages > 0 && _cache.TryFind(WriteCache.KeyOf(volume.State.Id, block), out int page))
            {
                _cache.Data(page).Slice(inChunk, n).CopyTo(destination.Slice(done, n));
            }
            else
            {
                uint id = volume.State.Map.Get(block);
                if (id < ChunkTable.FirstChunkId)
                {
                    destination.Slice(done, n).Clear();
                }
                else if (!_chunkCache.TryCopy(id, inChunk, destination.Slice(done, n)))
                {
                    if (plan == null) return 1;
                    ChunkEntry e = _state.Chunks[id];
                    plan.Id[planned] = id;
                    plan.Location[planned] = e.Location;
                    plan.Crc[planned] = e.Crc;
                    plan.DestinationOffset[planned] = done;
                    plan.InChunk[planned] = inChunk;
                    plan.Length[planned] = n;
                    planned++;
                }
            }
            done += n;
        }
        return planned;
    }

    /// <summary>Reads synchronously: cache, map, then the device, coalescing chunks that are adjacent in the log into one read.</summary>
    internal void Read(Volume volume, long offset, Span<byte> destination)
    {
        // A caller holding _sync (compare-and-write) already keeps segments from being reused.
        if (Monitor.IsEntered(_sync))
        {
            ReadGuarded(volume, offset, destination);
            return;
        }
        _reuseGate.EnterRead();
        try
        {
            ReadGuarded(volume, offset, destination);
        }
        finally
        {
            _reuseGate.ExitRead();
        }
    }

    private void ReadGuarded(Volume volume, long offset, Span<byte> destination)
    {
        ReadPlan plan = t_readPlan ??= new ReadPlan(MaxReadRunBlocks);
        int done = 0;
        while (done < destination.Length)
        {
            // Plan one window of up to MaxReadRunBlocks blocks under the lock.
            int planned;
            lock (_sync) planned = PlanWindowLocked(volume, offset, destination, ref done, plan);
            // Then read runs of consecutive log blocks with one device read each.
            for (int i = 0; i < planned;)
            {
                int run = 1;
                while (i + run < planned && plan.Location[i + run] == plan.Location[i] + run) run++;
                Span<byte> stored = ReadStoredRun(plan.Location[i], run);
                for (int k = 0; k < run; k++)
                {
                    Span<byte> chunk = stored.Slice(k * ChunkBytes, ChunkBytes);
                    CheckStoredCrc(chunk, plan.Location[i + k], plan.Crc[i + k]);
                    chunk.Slice(plan.InChunk[i + k], plan.Length[i + k]).CopyTo(destination.Slice(plan.DestinationOffset[i + k], plan.Length[i + k]));
                }
                if (_chunkCache.Slots > 0)
                {
                    lock (_sync)
                    {
                        for (int k = 0; k < run; k++)
                            CacheIfCurrentLocked(plan.Id[i + k], plan.Location[i + k], plan.Crc[i + k], stored.Slice(k * ChunkBytes, ChunkBytes));
                    }
                }
                i += run;
            }
        }
    }

    private Span<byte> ReadStoredRun(uint location, int blocks)
    {
        Span<byte> stored = ReadBuffer.Slice(0, blocks * ChunkBytes);
        ReadStoredRunInto(location, stored);
        return stored;
    }

    /// <summary>Reads whole chunks from <paramref name="location"/> into an aligned buffer; a device error is a MediaErrorException.</summary>
    private void ReadStoredRunInto(uint location, Span<byte> stored)
    {
        try
        {
            _device.Read(Superblock.BlockOffset(location), stored);
        }
        catch (IOException e)
        {
            int blocks = stored.Length / ChunkBytes;
            _log.LogError("read of {Blocks} chunks at block {Location} failed: {Message}", blocks, location, e.Message);
            throw new MediaErrorException($"device read failed at block {location}: {e.Message}", e);
        }
    }

    private void CheckStoredCrc(ReadOnlySpan<byte> chunk, uint location, uint crc)
    {
        if (Crc32C.Compute(chunk) != crc)
        {
            _log.LogError("chunk at block {Location} fails its CRC: the data on the device is corrupt", location);
            throw new MediaErrorException($"stored data at block {location} is corrupt (CRC mismatch)");
        }
    }

    /// <summary>Reads one stored chunk into this thread's aligned buffer and checks its CRC.</summary>
    private Span<byte> ReadStored(uint location, uint crc)
    {
        Span<byte> stored = ReadStoredRun(location, 1);
        CheckStoredCrc(stored, location, crc);
        return stored;
    }

    /// <summary>Chunks a write stores per hold of the pool lock (256 KiB of copying at most).</summary>
    private const int ChunksPerLockHold = 64;

    internal ValueTask WriteAsync(Volume volume, long offset, ReadOnlyMemory<byte> source, WriteFlags flags, CancellationToken ct)
    {
        ThrowIfFailed();
        Interlocked.Add(ref _hostBytesWritten, source.Length);
        Volatile.Write(ref _lastHostWriteMs, NowMs());
        int done = 0;
        long lastTicket = 0;
        bool wakeDestager = false;
        // One lock acquisition per up to 64 chunks that need no wait (not one per chunk: a 1 MiB
        // write would otherwise take the pool lock 256 times against the destager; not all of a
        // large write either, so readers and the destager wait at most a 256 KiB copy).
        // Each hold's whole chunks are fingerprinted first, outside the lock and while the bytes
        // are hot (the destager would read them back from memory to do it). A hold of several
        // chunks is compared with the stored chunks their fingerprints name first, in a short hold
        // of its own, so only the chunks not found stored pay for their CRC; a single chunk gets
        // its CRC up front and is compared in the hold that stores it (one lock hold, not two).
        bool stuck = false;
        Span<PageDigest> digests = stackalloc PageDigest[ChunksPerLockHold];
        while (done < source.Length && !stuck)
        {
            ReadOnlySpan<byte> rest = source.Span[done..];
            bool several = rest.Length > ChunkBytes;
            int planned = DigestPieces(offset + done, rest, digests, withCrc: !several);
            if (several)
            {
                lock (_sync) MatchCachedChunksLocked(offset + done, rest, digests[..planned]);
                AddMissingCrcs(offset + done, rest, digests[..planned]);
            }
            lock (_sync)
            {
                for (int n = 0; n < planned; n++)
                {
                    if (TryPutFastLocked(volume, offset + done, source.Span[done..], digests[n], ref done, ref lastTicket, ref wakeDestager, compare: !several)) continue;
                    stuck = true;
                    break;
                }
            }
        }
        if (wakeDestager) _destageWake.Set();
        if (done < source.Length) return WriteSlowAsync(volume, offset, source, done, lastTicket, flags, ct);
        return FinishWrite(volume, offset, source, lastTicket, flags, ct);
    }

    /// <summary>
    /// Digests of the chunk pieces of <paramref name="source"/> (at volume byte <paramref name="position"/>),
    /// as many as fit in <paramref name="digests"/>: whole chunks get theirs, partial pieces None. Returns the pieces covered.
    /// </summary>
    private int DigestPieces(long position, ReadOnlySpan<byte> source, Span<PageDigest> digests, bool withCrc)
    {
        int pieces = 0, at = 0;
        while (pieces < digests.Length && at < source.Length)
        {
            int n = PieceBytes(position + at, source.Length - at);
            digests[pieces++] = n == ChunkBytes ? PageDigest.Of(source.Slice(at, n), _fingerprinter, _state.Index, withCrc) : PageDigest.None;
            at += n;
        }
        return pieces;
    }

    /// <summary>The bytes of the chunk piece at volume byte <paramref name="position"/>, with <paramref name="left"/> bytes to write.</summary>
    private static int PieceBytes(long position, int left) => Math.Min(ChunkBytes - (int)(position % ChunkBytes), left);

    /// <summary>Compares each whole data piece with the read-cached chunk its fingerprint names (<see cref="WithEqualCachedChunkLocked"/>). Caller holds the pool lock.</summary>
    private void MatchCachedChunksLocked(long position, ReadOnlySpan<byte> source, Span<PageDigest> digests)
    {
        int at = 0;
        for (int k = 0; k < digests.Length; k++)
        {
            int n = PieceBytes(position + at, source.Length - at);
            digests[k] = WithEqualCachedChunkLocked(digests[k], source.Slice(at, n));
            at += n;
        }
    }

    /// <summary>The CRC of each whole data piece that was not found equal to a stored chunk.</summary>
    private static void AddMissingCrcs(long position, ReadOnlySpan<byte> source, Span<PageDigest> digests)
    {
        int at = 0;
        for (int k = 0; k < digests.Length; k++)
        {
            int n = PieceBytes(position + at, source.Length - at);
            if (digests[k].Kind == DigestKind.Data && digests[k].EqualTo == 0) digests[k] = digests[k].WithCrc(Crc32C.Compute(source.Slice(at, n)));
            at += n;
        }
    }

    private ValueTask FinishWrite(Volume volume, long offset, ReadOnlyMemory<byte> source, long lastTicket, WriteFlags flags, CancellationToken ct)
    {
        WriteMode mode = _options.WriteMode;
        if (mode == WriteMode.WriteBack && _options.Mirror is { } mirror) return mirror.MirrorAsync(volume.Uuid, offset, source, ct);
        if (mode != WriteMode.OneWayWriteBack || (flags & WriteFlags.Fua) != 0 || mode == WriteMode.WriteBack)
            return WaitForTicketAsync(lastTicket, ct);
        return ValueTask.CompletedTask;
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteSlowAsync(Volume volume, long offset, ReadOnlyMemory<byte> source, int done, long lastTicket, WriteFlags flags, CancellationToken ct)
    {
        while (done < source.Length)
        {
            bool wakeDestager = false, stored;
            PageDigest digest = default;
            DigestPieces(offset + done, source.Span[done..], new Span<PageDigest>(ref digest), withCrc: true);
            lock (_sync) stored = TryPutFastLocked(volume, offset + done, source.Span[done..], digest, ref done, ref lastTicket, ref wakeDestager);
            if (wakeDestager) _destageWake.Set();
            if (stored) continue;
            await PutSlowAsync(volume, offset + done, source[done..], digest, ct).ConfigureAwait(false);
            // PutSlowAsync stored exactly one chunk piece; account for it.
            long position = offset + done;
            int n = Math.Min(ChunkBytes - (int)(position % ChunkBytes), source.Length - done);
            lock (_sync) lastTicket = Math.Max(lastTicket, _cache.LastTicket);
            done += n;
        }
        await FinishWrite(volume, offset, source, lastTicket, flags, ct).ConfigureAwait(false);
    }

    /// <summary>
    /// Stores one chunk piece without waiting: into an existing page, or a new page for a whole
    /// chunk. False when it needs to wait (no free page) or to read old data (partial chunk).
    /// Caller holds the pool lock; <paramref name="wakeDestager"/> is set when the queue passed
    /// the high watermark (the caller wakes the destager after releasing the lock).
    /// </summary>
    /// <param name="compare">Whether to compare a whole chunk with its read-cached candidate here (false when the caller did).</param>
    private bool TryPutFastLocked(Volume volume, long position, ReadOnlySpan<byte> source, in PageDigest digest, ref int done, ref long lastTicket, ref bool wakeDestager, bool compare = true)
    {
        long block = position / ChunkBytes;
        int inChunk = (int)(position % ChunkBytes);
        int n = Math.Min(ChunkBytes - inChunk, source.Length);
        long key = WriteCache.KeyOf(volume.State.Id, block);
        PageDigest written = n != ChunkBytes ? PageDigest.None : compare ? WithEqualCachedChunkLocked(digest, source[..n]) : digest;
        if (RewritesStoredChunkLocked(volume, block, key, written))
        {
            _nopWrites++;
            // What the block holds came from a written batch that may not be flushed yet: FUA and wt wait for it.
            lastTicket = Math.Max(lastTicket, _writtenTicket);
            done += n;
            return true;
        }
        int page = WritablePageLocked(key, wholeChunk: n == ChunkBytes, out bool isNew);
        if (page < 0) return false;
        source[..n].CopyTo(_cache.Data(page)[inChunk..]);
        _cache.MarkDirty(page, NowMs(), isNew, written);
        if (isNew)
        {
            volume.PageEnteredCache();
            if (_cache.QueuedPages >= HighWatermarkPages) wakeDestager = true;
        }
        lastTicket = Math.Max(lastTicket, _cache.Ticket(page));
        done += n;
        return true;
    }

    /// <summary>
    /// A whole-chunk write of exactly what its block holds, with nothing of the block in the
    /// write cache: nothing to store (ZFS calls it a nop-write). For data, the writer compared the
    /// bytes with the stored chunk the map names (its verdict, trusted while that chunk stays in the
    /// read-cache entry compared: a live chunk's bytes never change, and a freed id leaves the
    /// cache); for zeros, the map says zero. The map holds only applied, so written, batches (durable
    /// once the written ticket is committed, which a FUA or wt nop-write waits for), and
    /// no page of the block is queued or in flight, so nothing newer is on its way. Caller holds
    /// the pool lock.
    /// </summary>
    private bool RewritesStoredChunkLocked(Volume volume, long block, long key, in PageDigest digest)
    {
        if (digest.Kind == DigestKind.Data ? digest.EqualTo == 0 : digest.Kind != DigestKind.Zero) return false;
        uint mapped = volume.State.Map.Get(block);
        if (mapped != (digest.Kind == DigestKind.Zero ? ChunkTable.ZeroId : digest.EqualTo) || _cache.TryFind(key, out _)) return false;
        return digest.Kind == DigestKind.Zero || _chunkCache.StillHolds(digest.EqualTo, digest.CachedAt);
    }

    /// <summary>
    /// <paramref name="digest"/> with the stored chunk that holds <paramref name="chunk"/>'s bytes,
    /// when the index's first candidate is in the read cache and compares equal: the comparison
    /// runs here, while the writer's bytes are hot, instead of in the destager against a page
    /// gone cold (rewriting data already stored; the destager trusts it while the chunk stays in
    /// the read-cache entry compared, so was not freed). Caller holds the pool lock (the index and
    /// the read cache change under it).
    /// </summary>
    private PageDigest WithEqualCachedChunkLocked(in PageDigest digest, ReadOnlySpan<byte> chunk)
    {
        if (digest.Kind != DigestKind.Data || _chunkCache.Slots == 0) return digest;
        uint candidate = 0;
        if (_state.Index.FindCandidates(digest.Fingerprint.Low, new Span<uint>(ref candidate)) == 0) return digest;
        return _chunkCache.TryCompare(candidate, chunk, out bool equal, out long stamp) && equal
            ? digest.WithEqualChunk(candidate, stamp)
            : digest;
    }

    /// <summary>
    /// The page a write into <paramref name="key"/> goes to, without waiting: the key's Dirty page;
    /// or a new one, for a whole chunk of a key not cached or for a key whose page is in a batch in
    /// flight (copy-on-write: the batch keeps its bytes; the new page starts with them unless the
    /// write covers the whole chunk). -1 when that needs a free page or space not there now, or old
    /// bytes from the device (a partial chunk not cached). Caller holds the pool lock, and fills the
    /// page and marks it dirty with <paramref name="isNew"/> in the same hold.
    /// </summary>
    private int WritablePageLocked(long key, bool wholeChunk, out bool isNew)
    {
        bool cached = _cache.TryFind(key, out int page);
        isNew = !cached || _cache.State(page) != PageState.Dirty;
        if (!isNew) return page;
        if ((!cached && !wholeChunk) || !_cache.HasFreePage || !TryReserveForPageLocked()) return -1;
        return cached ? _cache.Supersede(page, copyBytes: !wholeChunk) : _cache.Add(key);
    }

    /// <summary>The slow path for one chunk piece: waits for a free page, reads the old chunk for a partial write.</summary>
    /// <param name="digest">The piece's digest if it is a whole chunk (else None).</param>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask PutSlowAsync(Volume volume, long position, ReadOnlyMemory<byte> source, PageDigest digest, CancellationToken ct)
    {
        long block = position / ChunkBytes;
        int inChunk = (int)(position % ChunkBytes);
        int n = Math.Min(ChunkBytes - inChunk, source.Length);
        long key = WriteCache.KeyOf(volume.State.Id, block);
        bool partial = n != ChunkBytes;
        // Old bytes only for a partial chunk, rented: this path runs per request while the cache is full.
        byte[]? old = partial ? ArrayPool<byte>.Shared.Rent(ChunkBytes) : null;
        long spaceDeadline = 0;
        try
        {
            while (true)
            {
                ct.ThrowIfCancellationRequested();
                ThrowIfFailed();
                bool needPage;
                uint observed;
                lock (_sync)
                {
                    needPage = !_cache.HasFreePage;
                    observed = volume.State.Map.Get(block);
                }
                if (needPage)
                {
                    _destageWake.Set();
                    await _pageFreed.WaitAsync().ConfigureAwait(false);
                    continue;
                }
                if (partial)
                {
                    if (observed >= ChunkTable.FirstChunkId) ReadMappedChunk(observed, old.AsSpan(0, ChunkBytes));
                    else Array.Clear(old!, 0, ChunkBytes);
                }
                lock (_sync)
                {
                    bool cached = _cache.TryFind(key, out int page);
                    if (cached && _cache.State(page) == PageState.Dirty)
                    {
                        source.Span[..n].CopyTo(_cache.Data(page)[inChunk..]);
                        _cache.MarkDirty(page, NowMs(), isNew: false, partial ? PageDigest.None : digest);
                        return;
                    }
                    if (!_cache.HasFreePage) continue;
                    if (!cached && volume.State.Map.Get(block) != observed) continue;
                    if (TryReserveForPageLocked())
                    {
                        // A page in a batch in flight keeps its bytes: the write goes to a copy (WritablePageLocked).
                        page = cached ? _cache.Supersede(page, copyBytes: partial) : _cache.Add(key);
                        Span<byte> data = _cache.Data(page);
                        if (partial && !cached) old.AsSpan(0, ChunkBytes).CopyTo(data);
                        source.Span[..n].CopyTo(data[inChunk..]);
                        _cache.MarkDirty(page, NowMs(), isNew: true, partial ? PageDigest.None : digest);
                        volume.PageEnteredCache();
                        if (_cache.QueuedPages >= HighWatermarkPages) _destageWake.Set();
                        return;
                    }
                    // No space: wait while the cleaner (or destage of dedupable pages) can give some back.
                    // Dirty pages hold a worst-case reservation (a data block and a whole header block
                    // each); destaging them gives back what they do not use, so wait for that too.
                    if (!SpaceReclaimableLocked() && _reservedBlocks == 0) throw new NoSpaceException($"pool {Uuid} is full");
                    if (spaceDeadline == 0) spaceDeadline = NowMs() + SpaceWaitMaxMs;
                    else if (NowMs() > spaceDeadline) throw new NoSpaceException($"pool {Uuid} is full (the cleaner freed no space in {SpaceWaitMaxMs / 1000} s)");
                }
                _cleanerWake.Set();
                _destageWake.Set();
                await _spaceFreed.WaitAsync().ConfigureAwait(false);
            }
        }
        finally
        {
            if (old != null) ArrayPool<byte>.Shared.Return(old);
        }
    }

    /// <summary>Reads a mapped chunk's bytes; the chunk may be freed meanwhile, which the caller detects by re-checking the map.</summary>
    private void ReadMappedChunk(uint id, Span<byte> destination)
    {
        _reuseGate.EnterRead();
        try
        {
            uint location, crc;
            lock (_sync)
            {
                if (!_state.Chunks.IsLive(id)) { destination.Clear(); return; }
                if (_chunkCache.TryCopy(id, 0, destination)) return;
                ChunkEntry e = _state.Chunks[id];
                location = e.Location;
                crc = e.Crc;
            }
            ReadStored(location, crc).CopyTo(destination);
        }
        finally
        {
            _reuseGate.ExitRead();
        }
    }

    /// <summary>Trim (value 0) or write-zeroes (0 or 1) of a byte range: partial chunks are zero-filled through the cache; whole chunks become one journalled map range.</summary>
    internal async ValueTask SetRangeAsync(Volume volume, long offset, long length, uint value, bool fua, CancellationToken ct)
    {
        ThrowIfFailed();
        if (length == 0) return;
        long end = offset + length;
        long firstFull = (offset + ChunkBytes - 1) / ChunkBytes;
        long endFull = end / ChunkBytes;
        if (firstFull >= endFull)
        {
            await WriteZeroBytesAsync(volume, offset, length, fua, ct).ConfigureAwait(false);
            return;
        }
        if (offset < firstFull * ChunkBytes) await WriteZeroBytesAsync(volume, offset, firstFull * ChunkBytes - offset, fua, ct).ConfigureAwait(false);
        if (end > endFull * ChunkBytes) await WriteZeroBytesAsync(volume, endFull * ChunkBytes, end - endFull * ChunkBytes, fua, ct).ConfigureAwait(false);
        await _commit.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            DropCachedPages(volume.State.Id, firstFull, endFull);
            CommitRecords((ref RecordWriter w) => w.MapRange(volume.State.Id, firstFull, endFull - firstFull, value));
        }
        finally
        {
            _commit.Release();
        }
        _cleanerWake.Set();
    }

    private static readonly ReadOnlyMemory<byte> s_zeroChunk = new byte[ChunkBytes];

    private async ValueTask WriteZeroBytesAsync(Volume volume, long offset, long length, bool fua, CancellationToken ct)
    {
        while (length > 0)
        {
            int n = (int)Math.Min(length, ChunkBytes - offset % ChunkBytes);
            await WriteAsync(volume, offset, s_zeroChunk[..n], fua ? WriteFlags.Fua : WriteFlags.None, ct).ConfigureAwait(false);
            offset += n;
            length -= n;
        }
    }

    internal ExtentList GetAllocation(Volume volume, long offset, long length)
    {
        var extents = new ExtentList();
        long end = offset + length;
        lock (_sync)
        {
            long position = offset;
            var map = volume.State.Map;
            bool checkCache = volume.CachedPages > 0;
            while (position < end)
            {
                long block = position / ChunkBytes;
                long next = Math.Min(end, (block + 1) * ChunkBytes);
                if (!checkCache)
                {
                    long allocated = map.NextAllocatedPageStart(block);
                    if (allocated > block)
                    {
                        next = Math.Min(end, allocated * ChunkBytes);
                        extents.Add(position, next - position, ExtentKind.Hole);
                        position = next;
                        continue;
                    }
                }
                ExtentKind kind;
                if (checkCache && _cache.TryFind(WriteCache.KeyOf(volume.State.Id, block), out _)) kind = ExtentKind.Data;
                else
                {
                    uint id = map.Get(block);
                    kind = id == ChunkTable.HoleId ? ExtentKind.Hole : id == ChunkTable.ZeroId ? ExtentKind.Zero : ExtentKind.Data;
                }
                extents.Add(position, next - position, kind);
                position = next;
            }
        }
        return extents;
    }

    private readonly SemaphoreSlim _compareAndWrite = new(1, 1);

    /// <summary>
    /// Compare and write, atomic against every other writer: the compare and the cache update
    /// happen under one hold of the pool lock (the current bytes are read under it too).
    /// </summary>
    internal async ValueTask<bool> CompareAndWriteAsync(Volume volume, long offset, ReadOnlyMemory<byte> expected, ReadOnlyMemory<byte> source, CancellationToken ct)
    {
        ThrowIfFailed();
        await _compareAndWrite.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            long firstBlock = offset / ChunkBytes;
            long endBlock = (offset + source.Length + ChunkBytes - 1) / ChunkBytes;
            int blocks = (int)(endBlock - firstBlock);
            byte[] current = new byte[source.Length];
            byte[]? oldChunk = null;
            long lastTicket = 0;
            bool wakeDestager = false;
            while (true)
            {
                ct.ThrowIfCancellationRequested();
                lock (_sync)
                {
                    if (_cache.Pages - _cache.UsedPages >= blocks)
                    {
                        Read(volume, offset, current);
                        if (!current.AsSpan().SequenceEqual(expected.Span)) return false;
                        int done = 0;
                        while (done < source.Length)
                        {
                            // No digest: the destager fingerprints these pages itself (compare-and-write is rare).
                            if (!TryPutFastLocked(volume, offset + done, source.Span[done..], PageDigest.None, ref done, ref lastTicket, ref wakeDestager))
                            {
                                // A partial chunk not in the cache: its old bytes are in `current`.
                                long position = offset + done;
                                long block = position / ChunkBytes;
                                int inChunk = (int)(position % ChunkBytes);
                                int n = Math.Min(ChunkBytes - inChunk, source.Length - done);
                                // Read the old chunk before the page joins the cache: once it is there, a read of
                                // this block returns the page's bytes, which are still those of its previous use.
                                oldChunk ??= new byte[ChunkBytes];
                                Read(volume, block * ChunkBytes, oldChunk);
                                if (!TryReserveForPageLocked()) throw new NoSpaceException($"pool {Uuid} is full");
                                int page = _cache.Add(WriteCache.KeyOf(volume.State.Id, block));
                                Span<byte> data = _cache.Data(page);
                                oldChunk.CopyTo(data);
                                source.Span.Slice(done, n).CopyTo(data[inChunk..]);
                                _cache.MarkDirty(page, NowMs(), isNew: true, PageDigest.None);
                                volume.PageEnteredCache();
                                lastTicket = Math.Max(lastTicket, _cache.Ticket(page));
                                done += n;
                            }
                        }
                        break;
                    }
                }
                _destageWake.Set();
                await _pageFreed.WaitAsync().ConfigureAwait(false);
            }
            if (wakeDestager) _destageWake.Set();
            await FinishWrite(volume, offset, source, lastTicket, WriteFlags.None, ct).ConfigureAwait(false);
            return true;
        }
        finally
        {
            _compareAndWrite.Release();
        }
    }

    /// <summary>Copies by reference: whole chunks share the source's chunk ids (one journal record); unaligned copies move bytes.</summary>
    internal async ValueTask CopyAsync(Volume source, long sourceOffset, Volume destination, long destinationOffset, long length, CancellationToken ct)
    {
        ThrowIfFailed();
        if (length == 0) return;
        if (sourceOffset % ChunkBytes != 0 || destinationOffset % ChunkBytes != 0 || length % ChunkBytes != 0)
        {
            byte[] buffer = new byte[Math.Min(length, 1L << 20)];
            for (long done = 0; done < length; done += buffer.Length)
            {
                int n = (int)Math.Min(buffer.Length, length - done);
                Read(source, sourceOffset + done, buffer.AsSpan(0, n));
                await WriteAsync(destination, destinationOffset + done, buffer.AsMemory(0, n), WriteFlags.None, ct).ConfigureAwait(false);
            }
            return;
        }
        long sourceBlock = sourceOffset / ChunkBytes, destinationBlock = destinationOffset / ChunkBytes, count = length / ChunkBytes;
        while (true)
        {
            // The source's dirty pages must be in the map before the map is copied.
            await FlushAllAsync(ct).ConfigureAwait(false);
            await _commit.WaitAsync(ct).ConfigureAwait(false);
            try
            {
                var pending = new List<int>();
                lock (_sync) _cache.CollectPages(source.State.Id, sourceBlock, sourceBlock + count, pending);
                if (pending.Count > 0) continue;
                DropCachedPages(destination.State.Id, destinationBlock, destinationBlock + count);
                CommitRecords((ref RecordWriter w) => w.CopyRange(source.State.Id, sourceBlock, destination.State.Id, destinationBlock, count));
                return;
            }
            finally
            {
                _commit.Release();
            }
        }
    }
}
