// The write cache and the destager. Host writes land in dirty pages (under the short pool
// lock); the destager takes the oldest pages in batches, fingerprints them outside the lock,
// drops all-zero pages, shares chunks whose bytes match a verified index candidate, appends
// the rest to the log, and once the batch is written maps the blocks and frees the pages. The
// disk's write cache is flushed when a host waits for durability (FLUSH, FUA, `wt`), before a
// checkpoint, when the destager runs dry, and at the latest JournalFlushMs after a write.
// Invariants: the written ticket and the committed ticket only move forward, committed <=
// written; every page queued with a ticket at or below the written one is on the device (its
// batch applied) and every one at or below the committed one is durable (flushed); a page is
// mapped only after its batch was written; a checkpoint names only flushed batches.
using System.Diagnostics;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using Target.Dedup.Device;
using Target.Dedup.Engine;
using Target.Dedup.Format;
using Target.Dedup.Hashing;
using Target.Dedup.Index;

namespace Target.Dedup;

public sealed partial class Pool
{
    private const int MaxCandidates = 4;
    private const int DestageTickMs = 100;

    private readonly WriteCache _cache;
    private readonly AlignedBuffer _verifyBuffer;
    private readonly Signal _destageWake = new(DestageTickMs);
    private readonly Signal _pageFreed = new(DestageTickMs);
    private readonly List<(long Ticket, TaskCompletionSource Done)> _flushWaiters = new();
    private readonly CancellationTokenSource _stop = new();
    private Task? _destager;
    private ReadScheduler? _reads;
    /// <summary>Every page queued with a ticket up to this one is durable (its batch written and flushed).</summary>
    private long _committedTicket;
    /// <summary>Every page queued with a ticket up to this one is written and applied (maybe not flushed yet).</summary>
    private long _writtenTicket;
    /// <summary>Journal writes so far (destage groups and other batches), the last one a submitted flush covers, the last one a completed flush covered.</summary>
    private long _logWrites, _logFlushSubmitted, _logFlushDone;
    /// <summary>When the oldest journal write no flush was submitted for was made (NowMs); 0: none.</summary>
    private long _unflushedSinceMs;
    private long _journalFlushes;

    // Where destage time goes (stats and metrics): whole turns, building and writing groups, waiting
    // for a group's writes and fdatasync, and the number of groups.
    private long _destageTicks;
    private long _destageBuildTicks;
    private long _destageDeviceWaitTicks;
    private long _destageGroups;

    /// <summary>
    /// Destage batches per group, written back to back and applied together (ended by one
    /// fdatasync when a flush is due, see JournalFlushDueLocked). When every group ended with one:
    /// one sync per 1 MiB batch capped a sequential stream at about a quarter of what the disk
    /// takes with one per 8 MiB, and 32 (up to 32 MiB per sync) took sequential streams 10-12%
    /// further than 8 (64: no further).
    /// </summary>
    internal const int MaxGroupBatches = 32;

    /// <summary>
    /// Pages per destage batch: the batch is one gathered write of its header (up to 4 blocks)
    /// and one segment per new chunk's page, and a request of more segments than the disk's
    /// queue takes (virtio-blk: max_segments 254) is split in two.
    /// </summary>
    internal const int MaxBatchPages = 250;

    /// <summary>Combines a batch's data CRC with the next chunk's (computed once, not per chunk).</summary>
    private static readonly CrcShift s_chunkCrcShift = Crc32C.ShiftFor(ChunkBytes);

    /// <summary>One destage batch of a group: its log buffer and what landing its pages needs.</summary>
    private sealed class DestageSlot : IDisposable
    {
        public readonly AlignedBuffer Buffer;
        public readonly int[] Page = new int[MaxBatchBlocks];
        public readonly long[] Key = new long[MaxBatchBlocks];
        public readonly long[] Ticket = new long[MaxBatchBlocks];
        /// <summary>Each page's digest when taken.</summary>
        public readonly PageDigest[] Digest = new PageDigest[MaxBatchBlocks];
        public readonly uint[] NewIds = new uint[MaxBatchBlocks];
        /// <summary>For each new chunk, the position in the batch of the first page holding it.</summary>
        public readonly int[] NewFirst = new int[MaxBatchBlocks];
        /// <summary>For each new chunk, the memory of that page: the device writes the batch's data from there.</summary>
        public readonly nint[] NewMemory = new nint[MaxBatchBlocks];
        /// <summary>Scratch for LandBatch: the page at each position was freed.</summary>
        public readonly bool[] Freed = new bool[MaxBatchBlocks];
        /// <summary>What each page's block mapped to when the batch was built: the reference its Map record drops.</summary>
        public readonly uint[] OldIds = new uint[MaxBatchBlocks];
        /// <summary>OldIds are counted in _pendingDrops (from the end of the build until applied or unwound).</summary>
        public bool DropsCounted;
        /// <summary>
        /// Landed (its new chunks are in the index, and its blocks may be taken by a later batch
        /// that drops them) or unwound (its new ids given back): TryShareInFlight no longer offers
        /// its new chunks.
        /// </summary>
        public bool Settled;
        public int Count;
        public int NewCount;
        public int RecordBytes;
        /// <summary>CRC-32C of the batch's data (its new chunks in order), combined from the chunks' CRCs.</summary>
        public uint DataCrc;
        public long LastTicket;

        /// <summary>Holds the batch's header (its records) at [FixedBytes..MaxHeaderBlocks * ChunkBytes).</summary>
        public DestageSlot(AlignedBuffer buffer) => Buffer = buffer;

        /// <summary>The bytes of new chunk <paramref name="n"/>: its page, which does not change while the batch is in flight.</summary>
        public unsafe ReadOnlySpan<byte> NewChunk(int n) => new((void*)NewMemory[n], ChunkBytes);

        public void Dispose() => Buffer.Dispose();
    }

    private DestageSlot[] _slots = Array.Empty<DestageSlot>();
    /// <summary>Groups one destage turn may pipeline before it hands the commit mutex on.</summary>
    private const int MaxGroupsPerTurn = 4;
    /// <summary>Sets of MaxGroupBatches slots: one group is built while the others' writes and flushes run.</summary>
    private const int SlotSets = 2;
    private readonly WrittenBatch[] _groupWritten = new WrittenBatch[SlotSets * MaxGroupBatches];
    private readonly List<Task>[] _groupWrites = PerSet(() => new List<Task>(MaxGroupBatches));
    /// <summary>
    /// Groups written and not yet applied, oldest first: the task that completes when its writes
    /// (and flush, if it has one) did, null when the log ring carries them; its slot set; its
    /// batches; its number among journal writes (<see cref="_logWrites"/>); whether a flush follows it.
    /// </summary>
    private readonly Queue<GroupInFlight> _groupsInFlight = new(SlotSets);
    private readonly record struct GroupInFlight(Task? Done, int Set, int Count, long Write, bool Flushed);
    /// <summary>The newest group's task (thread-pool writes): the next group's task waits for it, so a group's fdatasync covers every earlier group.</summary>
    private Task? _lastGroupDone;
    /// <summary>io_uring for the destager's writes and flushes (null: thread-pool pwritev/fdatasync tasks).</summary>
    private LogRing? _logRing;

    // Per-batch scratch, used only by the destager under the commit mutex while it builds a batch.
    private readonly Fingerprint[] _batchFp = new Fingerprint[MaxBatchBlocks];
    private readonly uint[] _batchValue = new uint[MaxBatchBlocks];
    private readonly int[] _batchNewIndex = new int[MaxBatchBlocks];
    /// <summary>The first page of the batch holding each new chunk.</summary>
    private readonly int[] _batchFirstOfNew = new int[MaxBatchBlocks];
    /// <summary>The batch being built (DecideBatch reads its cache pages).</summary>
    private DestageSlot? _buildSlot;
    private readonly uint[] _candidateIds = new uint[MaxBatchBlocks * MaxCandidates];
    private readonly uint[] _candidateLocations = new uint[MaxBatchBlocks * MaxCandidates];
    private readonly uint[] _candidateCrcs = new uint[MaxBatchBlocks * MaxCandidates];
    private readonly int[] _candidateCount = new int[MaxBatchBlocks];
    private readonly Dictionary<ulong, int> _batchLocal = new(MaxBatchBlocks);

    /// <summary>
    /// Chunk id -> references that batches built but not yet applied will drop. A batch is built
    /// before the batches ahead of it are applied, and replay applies them in the same order, so a
    /// stored chunk is shared only while it has more references than are about to be dropped:
    /// otherwise an earlier batch frees it and the later Map record names a freed id. A block is in
    /// at most one unapplied batch (a page written again while in flight ends the group), so the
    /// dropped reference is the block's applied mapping at build time. Destage thread, pool lock.
    /// </summary>
    private readonly Dictionary<uint, int> _pendingDrops = new();
    private readonly int[] _prefetchAt = new int[MaxBatchBlocks];
    /// <summary>Page i's first candidate was compared in the read cache (by the destager, or by the writer: <see cref="PageDigest.EqualTo"/>): 1 equal, 2 different, 0 not cached.</summary>
    private readonly byte[] _cachedVerdict = new byte[MaxBatchBlocks];
    private readonly uint[] _prefetchLocations = new uint[MaxBatchBlocks];
    private readonly int[] _prefetchPages = new int[MaxBatchBlocks];
    /// <summary>Stored candidates read ahead for verification; runs of distinct blocks, at most one per page.</summary>
    private AlignedBuffer? _prefetchBufferStore;
    private AlignedBuffer _prefetchBuffer => _prefetchBufferStore ??= new AlignedBuffer(MaxBatchBlocks * ChunkBytes);
    /// <summary>New chunks of the group's earlier batches (not in the index until applied): fingerprint prefix -> (slot, new index).</summary>
    private readonly Dictionary<ulong, (int Slot, int New)>[] _groupNew = PerSet(() => new Dictionary<ulong, (int Slot, int New)>(MaxBatchBlocks * MaxGroupBatches));

    private static T[] PerSet<T>(Func<T> create)
    {
        var items = new T[SlotSets];
        for (int i = 0; i < SlotSets; i++) items[i] = create();
        return items;
    }

    /// <summary>
    /// Destage starts once this many pages are queued and goes on down to the low watermark.
    /// Half a group above the low watermark at most: waiting for 3/4 of a large cache let the
    /// disk idle while the cache filled from 1/4 to 3/4, and halved sequential streams.
    /// </summary>
    private int HighWatermarkPages => Math.Min(_cache.Pages * 3 / 4, LowWatermarkPages + MaxBatchBlocks * MaxGroupBatches / 2);
    /// <summary>Dirty pages kept back to absorb overwrites (a quarter of the cache).</summary>
    private int LowWatermarkPages => _cache.Pages / 4;

    private void StartBackground()
    {
        _reads = new ReadScheduler((volume, offset, destination) => Read(volume, offset, destination.Span));
        _destager = Task.Run(DestageLoopAsync);
        StartCleaner();
    }

    private async Task StopBackgroundAsync()
    {
        _stop.Cancel();
        _destageWake.Set();
        if (_destager != null)
        {
            try { await _destager.ConfigureAwait(false); } catch (OperationCanceledException) { }
        }
        await StopCleanerAsync().ConfigureAwait(false);
        _reads?.Dispose();
        lock (_sync)
        {
            foreach ((long _, TaskCompletionSource done) in _flushWaiters)
                done.TrySetException(new NotOwnerException("pool closed"));
            _flushWaiters.Clear();
        }
    }

    private async Task DestageLoopAsync()
    {
        bool draining = false;
        while (!_stop.IsCancellationRequested)
        {
            await _destageWake.WaitAsync().ConfigureAwait(false);
            while (!_stop.IsCancellationRequested)
            {
                bool urgent, aged, flushDue;
                lock (_sync)
                {
                    if (_cache.QueuedPages >= HighWatermarkPages) draining = true;
                    if (_cache.QueuedPages <= LowWatermarkPages) draining = false;
                    // Under space pressure, drain: an overwritten block whose new version waits in the
                    // cache keeps its old chunk live, and the cleaner would copy it for nothing.
                    urgent = draining || WaitersPendingLocked() || _freeSegments.Count < 2 * FreeSegmentsTarget;
                    aged = _cache.TryPeek(out _, out _, out long since) && NowMs() - since >= _options.DirtyAgeMaxMs;
                    if (!urgent && !aged && _cache.QueuedPages == 0) AdvanceWrittenLocked(_cache.LastTicket);
                    // A turn with nothing to write still flushes (the queue ran dry, or the oldest unflushed write is due).
                    flushDue = JournalFlushDueLocked();
                }
                if (!urgent && !aged && !flushDue) break;
                try
                {
                    await DestageBatchAsync(onlyAged: !urgent).ConfigureAwait(false);
                }
                catch (Exception e)
                {
                    if (e is not NoSpaceException) Fail(e);
                    _log.LogError("destage failed: {Message}", e.Message);
                    FailWaiters(e as StorageException ?? new MediaErrorException(e.Message, e));
                    await Task.Delay(DestageTickMs).ConfigureAwait(false);
                    break;
                }
            }
        }
    }

    private bool WaitersPendingLocked()
    {
        foreach ((long ticket, TaskCompletionSource _) in _flushWaiters)
            if (ticket > _committedTicket) return true;
        return false;
    }

    /// <summary>
    /// Whether the journal writes no flush covers yet are to be flushed now: a host waits for
    /// durability, they are JournalFlushMs old, or the destager ran dry (nothing queued and no
    /// host write for a tick: a stream that the destager keeps up with empties the queue often).
    /// </summary>
    private bool JournalFlushDueLocked() => _logFlushSubmitted < _logWrites && FlushDueLocked();

    /// <summary>Whether a group about to be written (or the writes not flushed yet) should end with a flush.</summary>
    private bool FlushDueLocked() =>
        _options.JournalFlushMs <= 0 || WaitersPendingLocked() ||
        (_cache.QueuedPages == 0 && NowMs() - Volatile.Read(ref _lastHostWriteMs) >= DestageTickMs) ||
        (_unflushedSinceMs != 0 && NowMs() - _unflushedSinceMs >= _options.JournalFlushMs);

    /// <summary>Pages up to <paramref name="ticket"/> are written; durable too when every journal write so far was flushed.</summary>
    private void AdvanceWrittenLocked(long ticket)
    {
        if (ticket > _writtenTicket) _writtenTicket = ticket;
        if (_logFlushDone == _logWrites) AdvanceCommittedLocked(_writtenTicket);
    }

    /// <summary>
    /// Counts a journal write (a destage group, or a batch of its own). Without
    /// <paramref name="flushSubmitted"/> it waits for a later flush; with it, a flush that covers
    /// it and every earlier one was submitted. Caller holds the commit mutex; the number written.
    /// </summary>
    private long CountLogWrite(bool flushSubmitted)
    {
        lock (_sync)
        {
            long write = ++_logWrites;
            if (flushSubmitted)
            {
                _logFlushSubmitted = write;
                _unflushedSinceMs = 0;
            }
            else if (_unflushedSinceMs == 0)
            {
                _unflushedSinceMs = Math.Max(1, NowMs());
            }
            return write;
        }
    }

    /// <summary>A flush that covered journal write <paramref name="write"/> (and every earlier one) returned.</summary>
    private void LogFlushedLocked(long write)
    {
        _journalFlushes++;
        if (write > _logFlushDone) _logFlushDone = write;
        if (_logFlushDone == _logWrites) AdvanceCommittedLocked(_writtenTicket);
    }

    /// <summary>
    /// Flushes the journal if a write is not covered by a flush yet. Caller holds the commit mutex
    /// and has nothing in flight (so every journal write counted has completed).
    /// </summary>
    private void FlushJournalLocked()
    {
        long write;
        lock (_sync)
        {
            write = _logWrites;
            if (_logFlushDone == write) return;
            _logFlushSubmitted = write;
            _unflushedSinceMs = 0;
        }
        FlushLog();
        lock (_sync) LogFlushedLocked(write);
    }

    private void AdvanceCommittedLocked(long ticket)
    {
        if (ticket <= _committedTicket) return;
        _committedTicket = ticket;
        for (int i = _flushWaiters.Count - 1; i >= 0; i--)
        {
            if (_flushWaiters[i].Ticket <= ticket)
            {
                _flushWaiters[i].Done.TrySetResult();
                _flushWaiters.RemoveAt(i);
            }
        }
        _options.Mirror?.Destaged(ticket);
    }

    private void FailWaiters(StorageException e)
    {
        lock (_sync)
        {
            foreach ((long _, TaskCompletionSource done) in _flushWaiters) done.TrySetException(e);
            _flushWaiters.Clear();
        }
    }

    /// <summary>Waits until every page queued up to <paramref name="ticket"/> is durable.</summary>
    private ValueTask WaitForTicketAsync(long ticket, CancellationToken ct)
    {
        TaskCompletionSource done;
        lock (_sync)
        {
            ThrowIfFailed();
            if (ticket <= _committedTicket) return ValueTask.CompletedTask;
            done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _flushWaiters.Add((ticket, done));
        }
        _destageWake.Set();
        return new ValueTask(ct.CanBeCanceled ? done.Task.WaitAsync(ct) : done.Task);
    }

    /// <summary>Makes every write completed before the call durable (FLUSH / SYNCHRONIZE CACHE).</summary>
    internal ValueTask FlushAllAsync(CancellationToken ct)
    {
        long ticket;
        lock (_sync) ticket = _cache.LastTicket;
        return WaitForTicketAsync(ticket, ct);
    }

    private async Task DestageBatchAsync(bool onlyAged)
    {
        await _commit.WaitAsync().ConfigureAwait(false);
        try
        {
            DestageGroupLocked(onlyAged);
        }
        finally
        {
            _commit.Release();
        }
    }

    /// <summary>
    /// Destages in groups: up to MaxGroupBatches batches, each written as soon as it is built,
    /// then an fdatasync for the group if one is due (FlushDueLocked), then each batch applied in
    /// log order and its pages landed. Groups are pipelined over SlotSets sets of slots: while the
    /// writes (and flushes) of the groups before run (in the log ring, or as thread-pool tasks
    /// without it), the next group is built and written; once every set is in use, the oldest
    /// group is applied when its writes (and flush) returned (groups apply in order). A turn that
    /// leaves writes no flush covers flushes at its end when one is due. A turn runs up to
    /// MaxGroupsPerTurn groups, and nothing is in flight when it returns.
    /// Caller holds the commit mutex (so no other metadata change runs). A group stops early
    /// when the queue runs dry, the oldest queued page supersedes one still in a batch, or the
    /// log needs a checkpoint. Chunks new in a batch not yet applied are not in the index, so
    /// later batches share them through per-set tables, checked byte for byte against the
    /// earlier batch's page like an index candidate.
    /// </summary>
    private void DestageGroupLocked(bool onlyAged)
    {
        long turnStart = Stopwatch.GetTimestamp();
        ThrowIfFailed();
        if (_pendingDrops.Count != 0)
        {
            // Nothing is in flight between turns, so nothing can be about to drop a reference.
            _log.LogError("destage: {Count} pending reference drops left over from the last turn; cleared", _pendingDrops.Count);
            lock (_sync) _pendingDrops.Clear();
        }
        if (_slots.Length == 0)
        {
            _slots = new DestageSlot[SlotSets * MaxGroupBatches];
            _slots[0] = new DestageSlot(_logBuffer);
            for (int i = 1; i < _slots.Length; i++) _slots[i] = new DestageSlot(new AlignedBuffer(MaxHeaderBlocks * ChunkBytes));
            string? ringFailure = "NoLogRing";
            if (!_options.NoLogRing) _logRing = LogRing.TryCreate(_device, _slots.Length, 1 + MaxBatchPages, SlotSets, out ringFailure);
            if (_logRing == null) _log.LogInformation("destage writes use thread-pool pwritev ({Reason})", ringFailure);
        }
        // Tables left from the last turn name chunks that are in the index now (or were given back).
        foreach (Dictionary<ulong, (int Slot, int New)> table in _groupNew) table.Clear();
        long now = NowMs();
        int set = 0;
        _groupsInFlight.Clear();
        try
        {
            for (int turn = 0; turn < MaxGroupsPerTurn; turn++)
            {
                int written = WriteGroup(set, onlyAged, now, nothingInFlight: _groupsInFlight.Count == 0);
                if (written == 0) break;
                bool flush;
                lock (_sync) flush = FlushDueLocked();
                Task? done = null;
                if (_logRing != null)
                {
                    if (flush) _logRing.SubmitFlush(set);
                }
                else
                {
                    List<Task> writes = _groupWrites[set];
                    Task? before = _lastGroupDone;
                    done = Task.Run(() =>
                    {
                        // Done only after the groups before (so a flush covers their writes: fdatasync covers completed ones).
                        if (before != null) { try { before.GetAwaiter().GetResult(); } catch (Exception) { } }
                        WaitForWrites(writes, throwOnFailure: true);
                        if (flush) FlushLog();
                    });
                    _lastGroupDone = done;
                }
                _groupsInFlight.Enqueue(new GroupInFlight(done, set, written, CountLogWrite(flush), flush));
                if (_groupsInFlight.Count == SlotSets) CompleteOldestGroup();
                set = (set + 1) % SlotSets;
                if (written < MaxGroupBatches) break;
            }
            while (_groupsInFlight.Count > 0) CompleteOldestGroup();
            _lastGroupDone = null;
            bool flushNow;
            lock (_sync) flushNow = JournalFlushDueLocked();
            if (flushNow) FlushJournalLocked();
        }
        catch (Exception e)
        {
            _lastGroupDone = null;
            // Nothing may still write from the slots' buffers or pages once they are reused.
            foreach (GroupInFlight group in _groupsInFlight) { try { group.Done?.GetAwaiter().GetResult(); } catch (Exception) { } }
            foreach (List<Task> writes in _groupWrites) WaitForWrites(writes, throwOnFailure: false);
            _logRing?.Drain();
            try
            {
                // The groups in flight are on disk: the log goes on after them, so they must be applied.
                while (e is NoSpaceException && _groupsInFlight.Count > 0 && _failure == null) CompleteOldestGroup();
            }
            finally
            {
                // A failed device write or flush has failed the pool: no batch not yet applied ever will be.
                _groupsInFlight.Clear();
                foreach (DestageSlot slot in _slots) UnwindSlot(slot, now);
            }
            throw;
        }
        Interlocked.Add(ref _destageTicks, Stopwatch.GetTimestamp() - turnStart);
        CheckpointIfDue();
    }

    private void CompleteOldestGroup()
    {
        CompleteGroup(_groupsInFlight.Peek());
        _groupsInFlight.Dequeue();
    }

    /// <summary>Builds and writes (without a flush) one group into slot set <paramref name="set"/>; the number of batches written.</summary>
    private int WriteGroup(int set, bool onlyAged, long now, bool nothingInFlight)
    {
        long start = Stopwatch.GetTimestamp();
        try
        {
            return WriteGroupCore(set, onlyAged, now, nothingInFlight);
        }
        finally
        {
            Interlocked.Add(ref _destageBuildTicks, Stopwatch.GetTimestamp() - start);
        }
    }

    private int WriteGroupCore(int set, bool onlyAged, long now, bool nothingInFlight)
    {
        _groupNew[set].Clear();
        int first = set * MaxGroupBatches, written = 0;
        while (written < MaxGroupBatches && BuildBatchLocked(first + written, onlyAged, now, nothingInFlight && written == 0))
        {
            DestageSlot slot = _slots[first + written];
            try
            {
                _groupWritten[first + written] = WriteBatchUnflushed(slot.Buffer, slot.RecordBytes, slot.NewCount, metadataOnly: false, _groupWrites[set], slot.DataCrc, slot.NewMemory, ringSlot: first + written);
            }
            catch (NoSpaceException)
            {
                UnwindSlot(slot, now);
                // The head is already past the batches written before it: they must be flushed
                // and applied (a later batch would link to them), so the group stops here.
                if (written > 0) break;
                throw;
            }
            written++;
            if (_journalBytesSinceCheckpoint + (long)(written + MaxGroupBatches) * MaxHeaderBlocks * ChunkBytes >= _options.CheckpointJournalBytes) break;
        }
        return written;
    }

    /// <summary>
    /// Waits for a group's writes and its flush if it has one (rethrowing a failure), then applies
    /// its batches in order and lands their pages; after a flush, every page landed so far is durable
    /// (the flush ran after every earlier write, and groups land in order).
    /// </summary>
    private void CompleteGroup(GroupInFlight group)
    {
        (Task? done, int set, int count, long write, bool flushed) = group;
        long start = Stopwatch.GetTimestamp();
        if (done != null)
        {
            done.GetAwaiter().GetResult();
        }
        else
        {
            try
            {
                _logRing!.WaitGroup(set, set * MaxGroupBatches, count, flushed);
            }
            catch (IOException e)
            {
                throw JournalFailed(e);
            }
        }
        Interlocked.Add(ref _destageDeviceWaitTicks, Stopwatch.GetTimestamp() - start);
        Interlocked.Increment(ref _destageGroups);
        int first = set * MaxGroupBatches;
        for (int b = first; b < first + count; b++)
        {
            ApplyWritten(_groupWritten[b]);
            LandBatch(_slots[b]);
        }
        if (flushed)
        {
            lock (_sync)
            {
                LogFlushedLocked(write);
                AdvanceCommittedLocked(_writtenTicket);
            }
        }
    }

    /// <summary>Waits for all of a group's device writes (their buffers are reused afterwards); rethrows the first failure.</summary>
    private static void WaitForWrites(List<Task> writes, bool throwOnFailure)
    {
        Exception? first = null;
        foreach (Task write in writes)
        {
            try { write.GetAwaiter().GetResult(); }
            catch (Exception e) { first ??= e; }
        }
        writes.Clear();
        if (first != null && throwOnFailure) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(first);
    }

    /// <summary>A batch that will not be applied: its chunk ids are given back and its pages queued again (a superseded one is freed).</summary>
    private void UnwindSlot(DestageSlot slot, long now)
    {
        lock (_sync)
        {
            for (int n = 0; n < slot.NewCount; n++) _state.Chunks.Unallocate(slot.NewIds[n]);
            bool freed = false;
            for (int i = 0; i < slot.Count; i++)
            {
                if (!_cache.Requeue(slot.Page[i], now)) continue;
                PageLeftCacheLocked(VolumeOfKey(slot.Key[i]));
                freed = true;
            }
            ReleasePendingDropsLocked(slot);
            slot.Settled = true;
            if (freed) { _pageFreed.Set(); _spaceFreed.Set(); }
        }
        slot.Count = 0;
        slot.NewCount = 0;
    }

    /// <summary>
    /// After its batch is applied: frees its pages and write-allocates its new chunks into the read
    /// cache. A page in a batch never changes (a write supersedes it), so a freed page still holds
    /// the chunk it was decided into, and the read cache takes its memory instead of a copy.
    /// </summary>
    private void LandBatch(DestageSlot slot)
    {
        lock (_sync)
        {
            bool freed = false;
            for (int i = 0; i < slot.Count; i++)
            {
                slot.Freed[i] = _cache.Landed(slot.Page[i], slot.Ticket[i]);
                if (slot.Freed[i])
                {
                    PageLeftCacheLocked(VolumeOfKey(slot.Key[i]));
                    freed = true;
                }
            }
            for (int n = 0; n < slot.NewCount; n++) _chunkCache.PrefetchEntry(slot.NewIds[n]);
            for (int n = 0; n < slot.NewCount; n++)
            {
                int i = slot.NewFirst[n];
                if (slot.Freed[i]) _cache.GiveToReadCache(slot.Page[i], _chunkCache, slot.NewIds[n]);
            }
            AdvanceWrittenLocked(slot.LastTicket);
            ReleasePendingDropsLocked(slot);
            slot.Settled = true;
            if (freed) { _pageFreed.Set(); _spaceFreed.Set(); }
        }
        slot.Count = 0;
        slot.NewCount = 0;
    }

    /// <summary>The slot's batch was applied (its drops happened) or will never be: its pending drops end.</summary>
    private void ReleasePendingDropsLocked(DestageSlot slot)
    {
        if (!slot.DropsCounted) return;
        slot.DropsCounted = false;
        for (int i = 0; i < slot.Count; i++)
        {
            uint old = slot.OldIds[i];
            if (old < ChunkTable.FirstChunkId) continue;
            ref int drops = ref CollectionsMarshal.GetValueRefOrNullRef(_pendingDrops, old);
            if (--drops == 0) _pendingDrops.Remove(old);
        }
    }

    /// <summary>
    /// Builds one batch in <paramref name="slot"/> from the oldest queued pages: fingerprints,
    /// verified dedup, new chunk ids, records. False when there was nothing to take.
    /// </summary>
    private bool BuildBatchLocked(int slotIndex, bool onlyAged, long now, bool nothingInFlight)
    {
        DestageSlot slot = _slots[slotIndex];
        int count = 0;
        long lastTicket = 0;
        slot.Count = 0;
        slot.NewCount = 0;
        slot.Settled = false;
        lock (_sync)
        {
            int room = Math.Min(MaxBatchPages, DataRoomLocked());
            while (count < room && _cache.TryPeek(out int page, out long ticket, out long since))
            {
                if (onlyAged && now - since < _options.DirtyAgeMaxMs) break;
                // Written again while in an earlier batch of this group or the one in flight: it goes
                // in a later group (its Map record's old id must be what that batch leaves).
                if (_cache.WaitsForPredecessor(page)) break;
                long pageKey = _cache.Key(page);
                if (!_state.VolumesById.TryGetValue(WriteCache.VolumeOf(pageKey), out VolumeState? owner) || WriteCache.BlockOf(pageKey) >= owner.Map.Blocks)
                {
                    // Written while its volume was being deleted or shrunk, after that swept the cache: nothing
                    // to store, and a Map record for it could never be applied (at run time or in replay).
                    _cache.Drop(page);
                    PageLeftCacheLocked(VolumeOfKey(pageKey));
                    _pageFreed.Set();
                    continue;
                }
                _cache.TakeForBatch(page);
                slot.OldIds[count] = owner.Map.Get(WriteCache.BlockOf(pageKey));
                slot.Page[count] = page;
                slot.Key[count] = pageKey;
                slot.Ticket[count] = ticket;
                slot.Digest[count] = _cache.Digest(page);
                lastTicket = ticket;
                count++;
            }
            slot.Count = count;
            slot.LastTicket = lastTicket;
            if (count == 0)
            {
                // Nothing queued and nothing in flight: every ticket handed out is written.
                if (_cache.QueuedPages == 0 && nothingInFlight) AdvanceWrittenLocked(_cache.LastTicket);
                return false;
            }
        }

        // Decided straight from the cache pages, outside the lock: a page in a batch does not change
        // until the batch lands (a host write goes to a new page that supersedes it), and the
        // device writes the new chunks from their pages, so no page is ever copied.
        _buildSlot = slot;
        int newCount = DecideBatch(count);
        _options.AfterBatchDecidedFromPages?.Invoke();
        slot.Buffer.Slice(0, MaxHeaderBlocks * ChunkBytes).Clear();
        var writer = new RecordWriter(slot.Buffer.Slice(BatchHeader.FixedBytes, MaxRecordBytes));
        uint[] newIds = slot.NewIds;
        lock (_sync)
        {
            for (int n = 0; n < newCount; n++) newIds[n] = _state.Chunks.Allocate();
            // Counted only now: within one batch every reference is added before any is dropped,
            // so this batch's own drops never endanger a chunk it shares (a block rewritten with the
            // bytes it holds shares its own chunk).
            for (int i = 0; i < count; i++)
            {
                uint old = slot.OldIds[i];
                if (old >= ChunkTable.FirstChunkId) CollectionsMarshal.GetValueRefOrAddDefault(_pendingDrops, old, out _)++;
            }
            slot.DropsCounted = true;
        }
        slot.NewCount = newCount;
        uint dataCrc = 0;
        for (int n = 0; n < newCount; n++)
        {
            int i = _batchFirstOfNew[n];
            slot.NewFirst[n] = i;
            slot.NewMemory[n] = _cache.Memory(slot.Page[i]);
            uint chunkCrc = slot.Digest[i].Kind == DigestKind.Data && slot.Digest[i].CrcKnown ? slot.Digest[i].Crc : Crc32C.Compute(slot.NewChunk(n));
            dataCrc = n == 0 ? chunkCrc : Crc32C.Combine(dataCrc, chunkCrc, s_chunkCrcShift);
            writer.NewChunk(newIds[n], n, chunkCrc, _batchFp[i]);
            _groupNew[slotIndex / MaxGroupBatches].TryAdd(_batchFp[i].Low, (slotIndex, n));
        }
        for (int i = 0; i < count; i++)
        {
            if (_batchNewIndex[i] >= 0) _batchValue[i] = newIds[_batchNewIndex[i]];
            writer.Map(WriteCache.VolumeOf(slot.Key[i]), WriteCache.BlockOf(slot.Key[i]), _batchValue[i]);
        }
        slot.DataCrc = dataCrc;
        slot.RecordBytes = writer.Length;
        _buildSlot = null;
        return true;
    }

    /// <summary>Page i of the batch being built (in a batch, so it does not change).</summary>
    private ReadOnlySpan<byte> BuildData(int i) => _cache.Data(_buildSlot!.Page[i]);

    /// <summary>
    /// Fingerprints the batch's pages, finds and verifies their dedup candidates and decides each
    /// page: zero, a stored chunk, a new chunk of an earlier batch in flight, or a new chunk of this
    /// batch (_batchNewIndex, numbered in page order; _batchFirstOfNew: the first page holding
    /// each). The number of new chunks.
    /// </summary>
    private int DecideBatch(int count)
    {
        // Fingerprints, outside the lock: the writer's digest, else computed.
        for (int i = 0; i < count; i++)
        {
            DigestKind known = _buildSlot!.Digest[i].Kind;
            if (known == DigestKind.Zero || (known == DigestKind.None && IsAllZero(BuildData(i)))) { _batchValue[i] = ChunkTable.ZeroId; continue; }
            _batchValue[i] = ChunkTable.HoleId; // undecided
            _batchFp[i] = known == DigestKind.Data ? _buildSlot!.Digest[i].Fingerprint : _fingerprinter.Compute(BuildData(i));
            // A hint for the candidate lookup below (the index only grows under the commit mutex, which we hold).
            _state.Index.PrefetchHome(DedupIndex.HighOf(_batchFp[i].Low));
        }

        // Index candidates, under the lock (the index changes only under the commit mutex we hold,
        // but reads of the chunk table race nothing else either; the lock keeps the rules simple).
        lock (_sync)
        {
            for (int i = 0; i < count; i++)
            {
                _candidateCount[i] = 0;
                _cachedVerdict[i] = 0;
                if (_batchValue[i] == ChunkTable.ZeroId) continue;
                Span<uint> ids = _candidateIds.AsSpan(i * MaxCandidates, MaxCandidates);
                int found = _state.Index.FindCandidates(_batchFp[i].Low, ids);
                ref readonly PageDigest digest = ref _buildSlot!.Digest[i];
                // The writer found the page equal to a stored chunk, which has stayed cached (so not freed) since.
                uint equalTo = digest.EqualTo != 0 && _chunkCache.StillHolds(digest.EqualTo, digest.CachedAt) ? digest.EqualTo : 0;
                int n = 0;
                for (int k = 0; k < found; k++)
                {
                    ChunkEntry e = _state.Chunks[ids[k]];
                    // A chunk whose last references unapplied batches drop is freed before this batch applies.
                    if (_pendingDrops.TryGetValue(ids[k], out int drops) && e.RefCount <= (uint)drops) continue;
                    ids[n] = ids[k];
                    _candidateLocations[i * MaxCandidates + n] = e.Location;
                    _candidateCrcs[i * MaxCandidates + n] = e.Crc;
                    if (ids[n] == equalTo) SwapCandidates(i, 0, n);
                    n++;
                }
                _candidateCount[i] = n;
                if (n > 0 && ids[0] == equalTo) _cachedVerdict[i] = 1;
            }
        }

        PrefetchCandidates(count);

        // Verify candidates byte for byte (a fingerprint match alone never shares a chunk), then decide.
        _batchLocal.Clear();
        int newCount = 0;
        for (int i = 0; i < count; i++)
        {
            _batchNewIndex[i] = -1;
            if (_batchValue[i] == ChunkTable.ZeroId) continue;
            ReadOnlySpan<byte> data = BuildData(i);
            if (_cachedVerdict[i] == 1 || (_prefetchAt[i] >= 0 && PrefetchedEquals(i, data))) _batchValue[i] = _candidateIds[i * MaxCandidates];
            bool firstChecked = _cachedVerdict[i] != 0 || _prefetchAt[i] >= 0;
            for (int k = firstChecked ? 1 : 0; k < _candidateCount[i] && _batchValue[i] == ChunkTable.HoleId; k++)
            {
                if (VerifyStoredChunk(_candidateIds[i * MaxCandidates + k], _candidateLocations[i * MaxCandidates + k], _candidateCrcs[i * MaxCandidates + k], data))
                    _batchValue[i] = _candidateIds[i * MaxCandidates + k];
            }
            if (_batchValue[i] != ChunkTable.HoleId) continue;
            if (TryShareInFlight(_batchFp[i].Low, data, out uint inFlightId))
            {
                _batchValue[i] = inFlightId;
                continue;
            }
            int same = _batchLocal.TryGetValue(_batchFp[i].Low, out int first) ? FindEqualInBatch(first, i) : -1;
            if (same >= 0)
            {
                _batchNewIndex[i] = _batchNewIndex[same];
                continue;
            }
            _batchFirstOfNew[newCount] = i;
            _batchNewIndex[i] = newCount++;
            _batchLocal.TryAdd(_batchFp[i].Low, i);
        }
        return newCount;
    }

    /// <summary>Swaps page i's candidates a and b.</summary>
    private void SwapCandidates(int i, int a, int b)
    {
        int at = i * MaxCandidates;
        (_candidateIds[at + a], _candidateIds[at + b]) = (_candidateIds[at + b], _candidateIds[at + a]);
        (_candidateLocations[at + a], _candidateLocations[at + b]) = (_candidateLocations[at + b], _candidateLocations[at + a]);
        (_candidateCrcs[at + a], _candidateCrcs[at + b]) = (_candidateCrcs[at + b], _candidateCrcs[at + a]);
    }

    /// <summary>
    /// A new chunk of this batch, from <paramref name="first"/> (the first with chunk i's 64-bit prefix) on,
    /// holding chunk i's bytes; -1 if none. Only chunks whose prefixes collide get past the first comparison.
    /// </summary>
    private int FindEqualInBatch(int first, int i)
    {
        ReadOnlySpan<byte> data = BuildData(i);
        ulong prefix = _batchFp[i].Low;
        for (int j = first; j < i; j++)
        {
            if (_batchNewIndex[j] < 0 || _batchFp[j].Low != prefix) continue;
            if (data.SequenceEqual(BuildData(j))) return j;
        }
        return -1;
    }

    private Volume? VolumeOfKey(long key) => _volumes.TryGetValue(WriteCache.VolumeOf(key), out Volume? v) ? v : null;

    /// <summary>A page of <paramref name="volume"/> (null: deleted) left the write cache: its space reservation ends and its volume counts one page less. Caller holds the pool lock.</summary>
    private void PageLeftCacheLocked(Volume? volume)
    {
        ReleasePageReservationLocked();
        volume?.PageLeftCache();
    }

    /// <summary>
    /// Compares the first candidate of every page in the read cache (_cachedVerdict), and reads the
    /// first candidate of every page whose candidate is not in the read cache, sorted by
    /// location, one device read per run of adjacent blocks: rewriting data that is already stored
    /// (a second copy of an image) verifies 256 chunks with a few large reads instead of 256
    /// random 4 KiB ones. _prefetchAt[i] is the block in _prefetchBuffer, or -1.
    /// </summary>
    private void PrefetchCandidates(int count)
    {
        int wanted = 0;
        lock (_sync)
        {
            for (int i = 0; i < count; i++)
            {
                _prefetchAt[i] = -1;
                if (_candidateCount[i] == 0 || _cachedVerdict[i] != 0) continue;
                // In the read cache: compare there and then, in place, all in this one hold of the
                // lock (one lock per chunk collided with writers copying whole requests under it).
                if (_chunkCache.TryCompare(_candidateIds[i * MaxCandidates], BuildData(i), out bool equal))
                {
                    _cachedVerdict[i] = equal ? (byte)1 : (byte)2;
                    continue;
                }
                _prefetchLocations[wanted] = _candidateLocations[i * MaxCandidates];
                _prefetchPages[wanted] = i;
                wanted++;
            }
        }
        if (wanted == 0) return;
        Array.Sort(_prefetchLocations, _prefetchPages, 0, wanted);
        int used = 0;
        for (int start = 0; start < wanted;)
        {
            // A run: locations that follow each other (or repeat: two pages with the same content).
            int end = start + 1;
            while (end < wanted && _prefetchLocations[end] - _prefetchLocations[end - 1] <= 1) end++;
            uint first = _prefetchLocations[start];
            int blocks = (int)(_prefetchLocations[end - 1] - first) + 1;
            try
            {
                _device.Read(Superblock.BlockOffset(first), _prefetchBuffer.Slice(used * ChunkBytes, blocks * ChunkBytes));
                for (int j = start; j < end; j++) _prefetchAt[_prefetchPages[j]] = used + (int)(_prefetchLocations[j] - first);
            }
            catch (IOException e)
            {
                // Each page falls back to reading its candidate alone (which logs what fails).
                _log.LogWarning("dedup verify read of blocks {First}+{Blocks} failed: {Message}", first, blocks, e.Message);
            }
            used += blocks;
            start = end;
        }
    }

    /// <summary>
    /// A new chunk of a batch written but not landed yet (this group or the one in flight) with
    /// these bytes. Never one of a settled batch: once landed, its blocks can be taken by a later
    /// batch that drops the chunk, and only index candidates are checked against pending drops;
    /// once unwound, its ids are free.
    /// </summary>
    private bool TryShareInFlight(ulong prefix, ReadOnlySpan<byte> data, out uint id)
    {
        foreach (Dictionary<ulong, (int Slot, int New)> table in _groupNew)
        {
            if (table.TryGetValue(prefix, out (int Slot, int New) earlier)
                && !_slots[earlier.Slot].Settled
                && data.SequenceEqual(_slots[earlier.Slot].NewChunk(earlier.New)))
            {
                id = _slots[earlier.Slot].NewIds[earlier.New];
                return true;
            }
        }
        id = 0;
        return false;
    }

    /// <summary>Page i's prefetched first candidate passes its CRC and holds the same bytes.</summary>
    private bool PrefetchedEquals(int i, ReadOnlySpan<byte> data)
    {
        ReadOnlySpan<byte> stored = _prefetchBuffer.Slice(_prefetchAt[i] * ChunkBytes, ChunkBytes);
        if (Crc32C.Compute(stored) != _candidateCrcs[i * MaxCandidates])
        {
            _log.LogError("stored chunk at block {Location} fails its CRC; not sharing it", _candidateLocations[i * MaxCandidates]);
            return false;
        }
        return stored.SequenceEqual(data);
    }

    /// <summary>Reads a stored chunk and compares it with <paramref name="data"/>; a read or CRC failure is a mismatch.</summary>
    private bool VerifyStoredChunk(uint id, uint location, uint crc, ReadOnlySpan<byte> data)
    {
        // The read cache holds the chunk's stored bytes (already CRC-checked): compare there, in place.
        lock (_sync)
        {
            if (_chunkCache.TryCompare(id, data, out bool equal)) return equal;
        }
        Span<byte> stored = _verifyBuffer.Span;
        try
        {
            _device.Read(Superblock.BlockOffset(location), stored);
        }
        catch (IOException e)
        {
            _log.LogWarning("dedup verify read at block {Location} failed: {Message}", location, e.Message);
            return false;
        }
        if (Crc32C.Compute(stored) != crc)
        {
            _log.LogError("stored chunk at block {Location} fails its CRC; not sharing it", location);
            return false;
        }
        return stored.SequenceEqual(data);
    }

    internal static bool IsAllZero(ReadOnlySpan<byte> data) => !data.ContainsAnyExcept((byte)0);

    /// <summary>Drops cached pages of a volume range (trim, delete, shrink, copy target). Caller holds the commit mutex.</summary>
    private void DropCachedPages(uint volumeId, long firstBlock, long endBlock)
    {
        var pages = new List<int>();
        lock (_sync)
        {
            _cache.CollectPages(volumeId, firstBlock, endBlock, pages);
            if (pages.Count == 0) return;
            Volume? v = _volumes.TryGetValue(volumeId, out Volume? vv) ? vv : null;
            foreach (int page in pages)
            {
                _cache.Drop(page);
                PageLeftCacheLocked(v);
            }
        }
        _pageFreed.Set();
        _spaceFreed.Set();
    }
}
