// The write cache: dirty 4 KiB pages in one aligned native slab, found by (volume id, block).
// All members are called with the pool lock held. Destage order is first-dirtied first; each
// time a page enters the destage queue it takes a ticket, so "every page dirtied before
// ticket T is durable" is a single number (the committed ticket).
// A page in a destage batch (InFlight) never changes until the batch lands: a write to its block
// goes to a new page that supersedes it (copy-on-write), so the destager fingerprints the pages
// and the device writes them without copying them.
// Invariants: _byKey maps each key to its newest page; a page is Free, or in _byKey, or
// superseded and InFlight (it leaves when its batch lands or is unwound); a Dirty page has
// exactly one live entry in the queue (matching its ticket); a page with a predecessor (the
// superseded page of its key still in a batch) is not taken into a batch until that one lands.
// A page's 4 KiB lives wherever _memory points; a free page's memory may be swapped with a
// read-cache slot (GiveToReadCache).
using Target.Dedup.Device;
using Target.Dedup.Hashing;
using Target.Dedup.Index;

namespace Target.Dedup.Engine;

internal enum DigestKind : byte
{
    /// <summary>Not known (a partial write changed the page): the destager computes it.</summary>
    None = 0,
    Data = 1,
    /// <summary>All bytes zero (no fingerprint or CRC).</summary>
    Zero = 2,
}

/// <summary>
/// What the destager needs of a page's bytes, computed by the writer from its source while the
/// bytes are hot in the CPU cache (a whole-chunk write), so destage does not read a page back
/// from memory just to fingerprint it.
/// </summary>
internal readonly struct PageDigest(DigestKind kind, Fingerprint fingerprint, uint crc, bool crcKnown = true, uint equalTo = 0, long cachedAt = 0)
{
    public static readonly PageDigest None = default;

    public readonly DigestKind Kind = kind;
    public readonly Fingerprint Fingerprint = fingerprint;
    /// <summary>CRC-32C of the page's 4 KiB, if <see cref="CrcKnown"/>.</summary>
    public readonly uint Crc = crc;
    /// <summary>
    /// False for a page the writer found equal to a stored chunk before computing its CRC (only
    /// a new chunk needs it; the destager computes it if the page still becomes one).
    /// </summary>
    public readonly bool CrcKnown = crcKnown;
    /// <summary>
    /// A stored chunk the writer compared byte for byte with these bytes (in the read cache,
    /// while they were hot) and found equal; 0 if none. It still holds them while it stays in
    /// that read-cache entry (<see cref="CachedAt"/>, <see cref="ChunkCache.StillHolds"/>): a
    /// chunk's bytes change only by its id being freed and reused, and a freed id leaves the cache.
    /// </summary>
    public readonly uint EqualTo = equalTo;
    /// <summary>The read-cache entry <see cref="EqualTo"/> was compared in (a <see cref="ChunkCache"/> stamp).</summary>
    public readonly long CachedAt = cachedAt;

    public PageDigest WithEqualChunk(uint id, long cachedAt) => new(Kind, Fingerprint, Crc, CrcKnown, id, cachedAt);

    public PageDigest WithCrc(uint crc) => new(Kind, Fingerprint, crc, true, EqualTo, CachedAt);

    /// <summary>
    /// The digest of a whole chunk (its CRC too if <paramref name="withCrc"/>); <paramref name="index"/>'s
    /// home slot for the fingerprint is prefetched before the CRC runs.
    /// </summary>
    public static PageDigest Of(ReadOnlySpan<byte> chunk, IFingerprinter fingerprinter, DedupIndex index, bool withCrc)
    {
        if (Pool.IsAllZero(chunk)) return new PageDigest(DigestKind.Zero, default, 0);
        Fingerprint fingerprint = fingerprinter.Compute(chunk);
        index.PrefetchHome(DedupIndex.HighOf(fingerprint.Low));
        return withCrc
            ? new PageDigest(DigestKind.Data, fingerprint, Crc32C.Compute(chunk))
            : new PageDigest(DigestKind.Data, fingerprint, 0, crcKnown: false);
    }
}

internal enum PageState : byte
{
    Free = 0,
    /// <summary>Waiting in the destage queue.</summary>
    Dirty = 1,
    /// <summary>In a destage batch that is not durable yet: its bytes do not change.</summary>
    InFlight = 2,
}

internal sealed unsafe class WriteCache : IDisposable
{
    public const int PageBytes = 4096;

    private byte* _slab;
    private readonly nint[] _memory;
    private readonly long[] _key;
    private readonly PageState[] _state;
    private readonly long[] _ticket;
    private readonly long[] _dirtySinceMs;
    private readonly PageDigest[] _digest;
    /// <summary>The page this one superseded while that was in a batch (until it lands), else -1.</summary>
    private readonly int[] _predecessor;
    /// <summary>For a superseded page: the page that superseded it, else -1.</summary>
    private readonly int[] _successor;
    private readonly int[] _freeStack;
    private int _freeCount;
    private readonly Dictionary<long, int> _byKey;
    private readonly Queue<(int Page, long Ticket)> _queue;

    public WriteCache(int pages)
    {
        Pages = pages;
        // Native and long-addressed: a cache of 2 GiB or more does not fit an int offset. Zeroed
        // and sector-aligned (O_DIRECT writes go straight from its pages).
        _slab = LargeMemory.Allocate((nuint)pages * PageBytes);
        _memory = new nint[pages];
        for (int i = 0; i < pages; i++) _memory[i] = (nint)(_slab + (long)i * PageBytes);
        _key = new long[pages];
        _state = new PageState[pages];
        _ticket = new long[pages];
        _dirtySinceMs = new long[pages];
        _digest = new PageDigest[pages];
        _predecessor = new int[pages];
        _successor = new int[pages];
        Array.Fill(_predecessor, -1);
        Array.Fill(_successor, -1);
        _freeStack = new int[pages];
        for (int i = 0; i < pages; i++) _freeStack[i] = pages - 1 - i;
        _freeCount = pages;
        _byKey = new Dictionary<long, int>(pages);
        _queue = new Queue<(int, long)>(pages);
    }

    public int Pages { get; }

    public int UsedPages => Pages - _freeCount;

    /// <summary>Pages waiting in the queue (Dirty).</summary>
    public int QueuedPages { get; private set; }

    public long LastTicket { get; private set; }

    public static long KeyOf(uint volumeId, long block) => ((long)volumeId << 40) | block;

    public static uint VolumeOf(long key) => (uint)(key >> 40);

    public static long BlockOf(long key) => key & ((1L << 40) - 1);

    public Span<byte> Data(int page)
    {
        ObjectDisposedException.ThrowIf(_slab == null, this);
        return new Span<byte>((byte*)_memory[page], PageBytes);
    }

    /// <summary>The address of the page's 4 KiB (4096-aligned); it stays put while the page is in use.</summary>
    public nint Memory(int page) => _memory[page];

    /// <summary>
    /// A page just freed by Landed still holds chunk <paramref name="id"/>'s bytes: the read cache
    /// takes its memory as that chunk's entry (no copy) and the page gets the evicted slot's memory.
    /// </summary>
    public void GiveToReadCache(int page, ChunkCache cache, uint id)
    {
        if (_state[page] != PageState.Free) throw new InvalidOperationException($"page {page} is in use; only a free page's memory can go to the read cache");
        cache.Adopt(id, ref _memory[page]);
    }

    public PageState State(int page) => _state[page];

    public long Key(int page) => _key[page];

    public long Ticket(int page) => _ticket[page];

    /// <summary>The digest given with the page's last write (None after a partial write).</summary>
    public ref readonly PageDigest Digest(int page) => ref _digest[page];

    public bool TryFind(long key, out int page) => _byKey.TryGetValue(key, out page);

    public bool HasFreePage => _freeCount > 0;

    /// <summary>Takes a free page for a key not in the cache; the caller fills it and calls MarkDirty.</summary>
    public int Add(long key)
    {
        if (_freeCount == 0) throw new InvalidOperationException("write cache full");
        int page = _freeStack[--_freeCount];
        _key[page] = key;
        _state[page] = PageState.InFlight; // not queued yet; MarkDirty queues it
        _byKey.Add(key, page);
        return page;
    }

    /// <summary>
    /// A write to a key whose page is in a batch in flight: takes a free page for the key (the new
    /// newest page; reads and writes go there from now on) and leaves the old one to its batch.
    /// With <paramref name="copyBytes"/> the new page starts with the old page's bytes (for a
    /// partial write). The caller fills it and calls MarkDirty (isNew: true).
    /// </summary>
    public int Supersede(int page, bool copyBytes)
    {
        if (_state[page] != PageState.InFlight || _successor[page] >= 0) throw new InvalidOperationException($"page {page} is not the newest page of a batch in flight");
        if (_freeCount == 0) throw new InvalidOperationException("write cache full");
        long key = _key[page];
        int newer = _freeStack[--_freeCount];
        _key[newer] = key;
        _state[newer] = PageState.InFlight; // not queued yet; MarkDirty queues it
        _byKey[key] = newer;
        _predecessor[newer] = page;
        _successor[page] = newer;
        if (copyBytes) Data(page).CopyTo(Data(newer));
        return newer;
    }

    /// <summary>The page superseded an older page of its key that is still in a batch: it must wait for that batch to land.</summary>
    public bool WaitsForPredecessor(int page) => _predecessor[page] >= 0;

    /// <summary>
    /// Records that the page was written (in the same lock hold as the write), with the digest of
    /// its bytes now (PageDigest.None if the caller does not know them all); queues it unless it
    /// already waits in the queue. Only a page just added or superseding (isNew) or a Dirty one
    /// is ever written: a page in a batch is superseded instead.
    /// </summary>
    public void MarkDirty(int page, long nowMs, bool isNew, in PageDigest digest)
    {
        _digest[page] = digest;
        PageState s = _state[page];
        if (!isNew)
        {
            if (s != PageState.Dirty) throw new InvalidOperationException($"page {page} was written in place while in a batch");
            return;
        }
        _state[page] = PageState.Dirty;
        _ticket[page] = ++LastTicket;
        _dirtySinceMs[page] = nowMs;
        _queue.Enqueue((page, LastTicket));
        QueuedPages++;
    }

    /// <summary>The oldest queued page, skipping stale entries; false when none.</summary>
    public bool TryPeek(out int page, out long ticket, out long dirtySinceMs)
    {
        while (_queue.TryPeek(out (int Page, long Ticket) head))
        {
            if (_state[head.Page] == PageState.Dirty && _ticket[head.Page] == head.Ticket)
            {
                page = head.Page;
                ticket = head.Ticket;
                dirtySinceMs = _dirtySinceMs[page];
                return true;
            }
            _queue.Dequeue();
        }
        page = -1;
        ticket = 0;
        dirtySinceMs = 0;
        return false;
    }

    /// <summary>Takes the page returned by TryPeek out of the queue into a batch (the caller checked WaitsForPredecessor).</summary>
    public void TakeForBatch(int page)
    {
        _queue.Dequeue();
        _state[page] = PageState.InFlight;
        QueuedPages--;
    }

    /// <summary>After the batch holding this page is durable: frees it (its bytes stay until the page is reused).</summary>
    public bool Landed(int page, long batchTicket)
    {
        if (_state[page] != PageState.InFlight || _ticket[page] != batchTicket) return false;
        Free(page);
        return true;
    }

    /// <summary>A batch failed: its page goes back to the queue, or is freed if a newer page superseded it (true).</summary>
    public bool Requeue(int page, long nowMs)
    {
        if (_state[page] != PageState.InFlight) return false;
        if (_successor[page] >= 0)
        {
            Free(page);
            return true;
        }
        MarkDirty(page, nowMs, isNew: true, _digest[page]);
        return false;
    }

    /// <summary>Drops a page (trim, delete, overwrite by copy). The page must not be in a batch in flight.</summary>
    public void Drop(int page)
    {
        if (_state[page] == PageState.InFlight) throw new InvalidOperationException($"page {page} is in a batch in flight; it cannot be dropped");
        if (_state[page] == PageState.Dirty) QueuedPages--;
        Free(page);
    }

    private void Free(int page)
    {
        if (_successor[page] >= 0)
        {
            // Superseded: the key belongs to the newer page, which no longer waits for this one.
            _predecessor[_successor[page]] = -1;
            _successor[page] = -1;
        }
        else
        {
            _byKey.Remove(_key[page]);
        }
        if (_predecessor[page] >= 0)
        {
            _successor[_predecessor[page]] = -1;
            _predecessor[page] = -1;
        }
        _state[page] = PageState.Free;
        _ticket[page] = 0;
        _freeStack[_freeCount++] = page;
    }

    /// <summary>Keys of pages of one volume in [firstBlock, endBlock), for trim/delete.</summary>
    public void CollectPages(uint volumeId, long firstBlock, long endBlock, List<int> pages)
    {
        long span = endBlock - firstBlock;
        if (span <= _byKey.Count)
        {
            for (long b = firstBlock; b < endBlock; b++)
                if (_byKey.TryGetValue(KeyOf(volumeId, b), out int page)) pages.Add(page);
            return;
        }
        foreach (KeyValuePair<long, int> kv in _byKey)
        {
            if (VolumeOf(kv.Key) != volumeId) continue;
            long b = BlockOf(kv.Key);
            if (b >= firstBlock && b < endBlock) pages.Add(kv.Value);
        }
    }

    public void Dispose()
    {
        if (_slab != null)
        {
            LargeMemory.Free(_slab, (nuint)Pages * PageBytes);
            _slab = null;
        }
    }
}
