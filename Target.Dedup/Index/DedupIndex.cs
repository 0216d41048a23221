// The dedup index: fingerprint -> candidate chunk ids. An open-addressing table with linear
// probing over one native array of 8-byte slots: a 24-bit fingerprint tag and an 8-bit probe
// distance in the high word, the 32-bit chunk id in the low word. The home bucket comes from
// FpHigh (kept in the chunk table, so deletion needs no fingerprint); capacity is not a power
// of two (multiply-shift range reduction) and grows by 1.5x at 85% load, so a full table costs
// 9.4 to 14 bytes per chunk.
// Invariants: no tombstones (backward-shift deletion); every live chunk is in the table exactly
// once; a hit is only a candidate — the caller verifies the bytes before sharing. The stored
// distance is the slot's offset from its home bucket (255 means "255 or more": the home is then
// looked up in the chunk table), so a deletion shifts a cluster without touching the chunk table.
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;
using Target.Dedup.Device;

namespace Target.Dedup.Index;

public sealed unsafe class DedupIndex : IDisposable
{
    private const double MaxLoad = 0.85;
    private const long InitialCapacity = 1 << 14;

    private readonly ChunkTable _chunks;
    private ulong* _slots;
    private long _capacity;
    private long _count;

    public DedupIndex(ChunkTable chunks, long initialCapacity = InitialCapacity)
    {
        _chunks = chunks;
        _capacity = Math.Max(16, initialCapacity);
        _slots = (ulong*)LargeMemory.Allocate((nuint)_capacity * sizeof(ulong));
    }

    public long Count => _count;

    public long Capacity => _capacity;

    public long RamBytes => _capacity * sizeof(ulong);

    public static uint HighOf(ulong fp64) => (uint)(fp64 >> 32);

    /// <summary>The 24 fingerprint bits a slot keeps (bits 8..31 of the 64-bit prefix; the low 8 hold the probe distance).</summary>
    public static uint TagOf(ulong fp64) => (uint)fp64 & TagMask;

    private const uint TagMask = 0xFFFF_FF00;
    private const uint DistanceSaturated = 0xFF;

    /// <summary>
    /// A hint: starts loading the home slot of a fingerprint's 32 high bits (FpHigh) into the CPU
    /// cache. Safe without the lock that guards the index: a prefetch never faults, so one that
    /// races a resize (old array, new capacity) only loads a useless line.
    /// </summary>
    public void PrefetchHome(uint fpHigh)
    {
        if (Sse.IsSupported) Sse.Prefetch0(_slots + Home(fpHigh, _capacity));
    }

    /// <summary>Writes up to dest.Length candidate ids whose FpHigh and tag equal fp64's; returns how many.</summary>
    public int FindCandidates(ulong fp64, Span<uint> dest)
    {
        uint high = HighOf(fp64), tag = TagOf(fp64);
        long i = Home(high, _capacity);
        int found = 0;
        while (true)
        {
            ulong slot = _slots[i];
            if (slot == 0) return found;
            uint id = (uint)slot;
            if (((uint)(slot >> 32) & TagMask) == tag && _chunks[id].FpHigh == high)
            {
                if (found == dest.Length) return found;
                dest[found++] = id;
            }
            if (++i == _capacity) i = 0;
        }
    }

    /// <summary>True when id is indexed under fp64's home and tag, however many other chunks share them (checker).</summary>
    public bool Contains(uint id, ulong fp64)
    {
        uint tag = TagOf(fp64);
        long i = Home(HighOf(fp64), _capacity);
        while (true)
        {
            ulong slot = _slots[i];
            if (slot == 0) return false;
            if ((uint)slot == id && ((uint)(slot >> 32) & TagMask) == tag) return true;
            if (++i == _capacity) i = 0;
        }
    }

    /// <summary>Inserts a chunk whose chunk-table entry already holds FpHigh.</summary>
    public void Insert(uint id, ulong fp64)
    {
        if (_count + 1 > (long)(_capacity * MaxLoad)) Grow();
        InsertSlot(TagOf(fp64), id, HighOf(fp64));
        _count++;
    }

    /// <summary>Removes a chunk (before its id is released); returns false when it was not indexed.</summary>
    public bool Remove(uint id)
    {
        long i = Home(_chunks[id].FpHigh, _capacity);
        while (true)
        {
            ulong slot = _slots[i];
            if (slot == 0) return false;
            if ((uint)slot == id) break;
            if (++i == _capacity) i = 0;
        }
        // Backward-shift deletion: pull later entries of the cluster into the hole when their home allows.
        long hole = i;
        long j = i;
        while (true)
        {
            if (++j == _capacity) j = 0;
            ulong slot = _slots[j];
            if (slot == 0) break;
            long home = HomeOfSlot(slot, j);
            bool movable = hole <= j ? (home <= hole || home > j) : (home <= hole && home > j);
            if (movable)
            {
                _slots[hole] = WithDistance(slot, Distance(home, hole));
                hole = j;
            }
        }
        _slots[hole] = 0;
        _count--;
        return true;
    }

    /// <summary>Visits every (id, tag) pair; used to write checkpoints.</summary>
    public void ForEach(Action<uint, uint> visit)
    {
        for (long i = 0; i < _capacity; i++)
        {
            ulong slot = _slots[i];
            if (slot != 0) visit((uint)slot, (uint)(slot >> 32) & TagMask);
        }
    }

    public void Clear()
    {
        NativeMemory.Clear(_slots, (nuint)(_capacity * sizeof(ulong)));
        _count = 0;
    }

    /// <summary>Makes room for <paramref name="count"/> entries without growing step by step (recovery).</summary>
    public void Reserve(long count)
    {
        long needed = (long)(count / MaxLoad) + 16;
        if (needed > _capacity) Rehash(needed);
    }

    private static long Home(uint high, long capacity) => (long)(((ulong)high * (ulong)capacity) >> 32);

    private void InsertSlot(uint tag, uint id, uint high)
    {
        long home = Home(high, _capacity);
        long i = home;
        while (_slots[i] != 0)
        {
            if (++i == _capacity) i = 0;
        }
        _slots[i] = WithDistance(((ulong)tag << 32) | id, Distance(home, i));
    }

    /// <summary>How far slot <paramref name="at"/> is past <paramref name="home"/> (wrapping).</summary>
    private long Distance(long home, long at) => at >= home ? at - home : at + _capacity - home;

    private static ulong WithDistance(ulong slot, long distance)
        => (slot & ~((ulong)DistanceSaturated << 32)) | ((ulong)Math.Min(distance, DistanceSaturated) << 32);

    /// <summary>The home bucket of the entry in slot <paramref name="at"/>: from its stored distance, or the chunk table when that saturated.</summary>
    private long HomeOfSlot(ulong slot, long at)
    {
        long distance = (long)((slot >> 32) & DistanceSaturated);
        if (distance == DistanceSaturated) return Home(_chunks[(uint)slot].FpHigh, _capacity);
        long home = at - distance;
        return home >= 0 ? home : home + _capacity;
    }

    private void Grow() => Rehash(_capacity + _capacity / 2);

    private void Rehash(long newCapacity)
    {
        if (newCapacity > uint.MaxValue) throw new NoSpaceException("dedup index full");
        ulong* old = _slots;
        long oldCapacity = _capacity;
        _slots = (ulong*)LargeMemory.Allocate((nuint)newCapacity * sizeof(ulong));
        _capacity = newCapacity;
        for (long i = 0; i < oldCapacity; i++)
        {
            ulong slot = old[i];
            if (slot != 0) InsertSlot((uint)(slot >> 32) & TagMask, (uint)slot, _chunks[(uint)slot].FpHigh);
        }
        LargeMemory.Free(old, (nuint)oldCapacity * sizeof(ulong));
    }

    public void Dispose()
    {
        if (_slots != null)
        {
            LargeMemory.Free(_slots, (nuint)_capacity * sizeof(ulong));
            _slots = null;
        }
    }
}
