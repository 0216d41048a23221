// A read cache of clean stored chunks, keyed by chunk id (so a chunk shared by many blocks or
// volumes is cached once). CLOCK replacement over one native slab. Called with the pool lock
// held. Invariant: an entry's bytes are the chunk's stored bytes; an id leaves the cache when
// its chunk is freed (ids are reused), and the cleaner's moves do not change bytes. Each slot's
// 4 KiB lives wherever _memory points: Adopt swaps a slot's memory with a write-cache page that
// holds the chunk's bytes, so a landed page enters the cache without a copy. Each slot has a
// generation, bumped whenever its id changes: a stamp (slot, generation) taken at a comparison
// tells later whether the id has stayed cached since, so was not freed (StillHolds).
// A bitmap over chunk ids says which are cached: most chunks freed (every overwrite frees one)
// or read are not, and a bit test costs less than a miss in the id -> slot table. Invariant: an
// id's bit is set exactly while the table holds it.
using Target.Dedup.Device;

namespace Target.Dedup.Engine;

internal sealed unsafe class ChunkCache : IDisposable
{
    private const int PageBytes = 4096;
    private const uint Empty = 0;

    private byte* _slab;
    private readonly nint[] _memory;
    private readonly uint[] _idOf;
    private readonly bool[] _referenced;
    /// <summary>Per slot, bumped whenever the slot's id changes (taken for another id, or removed).</summary>
    private readonly uint[] _generation;
    private readonly IdSlotTable _slotOf;
    /// <summary>Bit per chunk id: set while the id is cached. Grows (doubling) with the highest id cached.</summary>
    private ulong[] _cached = new ulong[1024];
    private int _hand;

    public ChunkCache(long bytes)
    {
        Slots = (int)Math.Min(int.MaxValue / 2, Math.Max(0, bytes / PageBytes));
        _idOf = new uint[Slots];
        _memory = new nint[Slots];
        _referenced = new bool[Slots];
        _generation = new uint[Slots];
        _slotOf = new IdSlotTable(Slots);
        if (Slots > 0) _slab = LargeMemory.Allocate((nuint)Slots * PageBytes);
        for (int i = 0; i < Slots; i++) _memory[i] = (nint)(_slab + (long)i * PageBytes);
    }

    public int Slots { get; }

    public long Hits { get; private set; }

    public long Misses { get; private set; }

    public int Count => _slotOf.Count;

    public bool TryCopy(uint id, int offset, Span<byte> destination)
    {
        if (!TryGetSlot(id, out int slot))
        {
            Misses++;
            return false;
        }
        Hits++;
        _referenced[slot] = true;
        new ReadOnlySpan<byte>((byte*)_memory[slot] + offset, destination.Length).CopyTo(destination);
        return true;
    }

    public bool Contains(uint id) => IsCached(id);

    /// <summary>Prefetches where the table keeps (or would keep) <paramref name="id"/>: before a batch's removals and adds.</summary>
    public void PrefetchEntry(uint id)
    {
        if (Slots > 0) _slotOf.PrefetchHome(id);
    }

    private bool IsCached(uint id)
    {
        ulong[] cached = _cached;
        uint word = id >> 6;
        return word < (uint)cached.Length && (cached[word] & (1UL << (int)id)) != 0;
    }

    private bool TryGetSlot(uint id, out int slot)
    {
        if (IsCached(id)) return _slotOf.TryGet(id, out slot);
        slot = -1;
        return false;
    }

    private void MarkCached(uint id, bool cached)
    {
        uint word = id >> 6;
        if (word >= (uint)_cached.Length)
        {
            if (!cached) return;
            Array.Resize(ref _cached, (int)Math.Max(2L * _cached.Length, word + 1L));
        }
        if (cached) _cached[word] |= 1UL << (int)id;
        else _cached[word] &= ~(1UL << (int)id);
    }

    /// <summary>Compares a cached chunk with <paramref name="data"/> in place; false when the id is not cached.</summary>
    public bool TryCompare(uint id, ReadOnlySpan<byte> data, out bool equal) => TryCompare(id, data, out equal, out _);

    /// <summary>
    /// As <see cref="TryCompare(uint, ReadOnlySpan{byte}, out bool)"/>, with a stamp of the entry compared:
    /// <see cref="StillHolds"/> tells later whether the id has stayed in the cache since.
    /// </summary>
    public bool TryCompare(uint id, ReadOnlySpan<byte> data, out bool equal, out long stamp)
    {
        if (!TryGetSlot(id, out int slot))
        {
            equal = false;
            stamp = 0;
            return false;
        }
        Hits++;
        _referenced[slot] = true;
        equal = new ReadOnlySpan<byte>((byte*)_memory[slot], PageBytes).SequenceEqual(data);
        stamp = ((long)slot << 32) | _generation[slot];
        return true;
    }

    /// <summary>
    /// Whether <paramref name="id"/> has stayed in the cache, in the same entry, since
    /// <paramref name="stamp"/> was taken. An id leaves the cache when its chunk is freed, so true
    /// means the chunk was not freed (and its id not reused) meanwhile: it holds the same bytes.
    /// </summary>
    public bool StillHolds(uint id, long stamp)
    {
        int slot = (int)(stamp >> 32);
        return Slots > 0 && slot < Slots && _idOf[slot] == id && _generation[slot] == (uint)stamp;
    }

    public void Insert(uint id, ReadOnlySpan<byte> chunk)
    {
        if (Slots == 0 || IsCached(id)) return;
        int slot = Take(id);
        chunk.CopyTo(new Span<byte>((byte*)_memory[slot], PageBytes));
    }

    /// <summary>
    /// Caches chunk <paramref name="id"/> whose bytes are the 4 KiB at <paramref name="memory"/>
    /// (page-aligned, owned by the caller) without copying them: the victim slot takes that memory
    /// and the caller gets the victim's in exchange (its bytes are stale). Nothing changes when the
    /// cache is off or already holds the id.
    /// </summary>
    public void Adopt(uint id, ref nint memory)
    {
        if (Slots == 0 || IsCached(id)) return;
        int slot = Take(id);
        (_memory[slot], memory) = (memory, _memory[slot]);
    }

    /// <summary>A slot for a new entry: the CLOCK victim, its old id evicted.</summary>
    private int Take(uint id)
    {
        int slot = Victim();
        if (_idOf[slot] != Empty)
        {
            _slotOf.Remove(_idOf[slot], out _);
            MarkCached(_idOf[slot], false);
        }
        _idOf[slot] = id;
        _generation[slot]++;
        _referenced[slot] = false;
        _slotOf.Add(id, slot);
        MarkCached(id, true);
        return slot;
    }

    public void Remove(uint id)
    {
        if (!IsCached(id) || !_slotOf.Remove(id, out int slot)) return;
        MarkCached(id, false);
        _idOf[slot] = Empty;
        _referenced[slot] = false;
        _generation[slot]++;
    }

    private int Victim()
    {
        while (true)
        {
            int slot = _hand;
            _hand = _hand + 1 == Slots ? 0 : _hand + 1;
            if (_idOf[slot] == Empty || !_referenced[slot]) return slot;
            _referenced[slot] = false;
        }
    }

    public void Dispose()
    {
        if (_slab != null)
        {
            // Memory swapped with the write cache comes back to it when that frees its slab: the
            // two pools of pages are freed together (see Pool.Dispose), never one while the other is in use.
            LargeMemory.Free(_slab, (nuint)Slots * PageBytes);
            _slab = null;
        }
        _slotOf.Dispose();
    }
}
