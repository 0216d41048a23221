// Chunk id -> read-cache slot: open addressing with linear probing over one native array of
// 8-byte entries (id in the high word, slot in the low word; 0 is empty), a power-of-two
// capacity at least twice the slots it can hold (load <= 0.5), Fibonacci hashing of the id.
// It replaces a Dictionary<uint, int> whose lookups and removals cost two or three cache misses
// each on the destage path (every overwritten chunk leaves the read cache).
// Invariants: no tombstones (backward-shift deletion); an id is present at most once; id 0 is
// never stored. Not thread-safe: the read cache is used under the pool lock.
using System.Numerics;
using System.Runtime.Intrinsics.X86;
using Target.Dedup.Device;

namespace Target.Dedup.Engine;

internal sealed unsafe class IdSlotTable : IDisposable
{
    private ulong* _entries;
    private readonly int _shift;
    private readonly uint _mask;

    public IdSlotTable(int maxCount)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(maxCount);
        uint capacity = BitOperations.RoundUpToPowerOf2((uint)Math.Max(16, 2L * maxCount));
        _shift = 32 - BitOperations.Log2(capacity);
        _mask = capacity - 1;
        _entries = (ulong*)LargeMemory.Allocate((nuint)capacity * sizeof(ulong));
        MaxCount = maxCount;
    }

    public int MaxCount { get; }

    public int Count { get; private set; }

    public bool TryGet(uint id, out int slot)
    {
        uint i = Home(id);
        while (true)
        {
            ulong e = _entries[i];
            if (e == 0) break;
            if ((uint)(e >> 32) == id)
            {
                slot = (int)(uint)e;
                return true;
            }
            i = (i + 1) & _mask;
        }
        slot = -1;
        return false;
    }

    public bool Contains(uint id) => TryGet(id, out _);

    /// <summary>Adds an id that is not present.</summary>
    public void Add(uint id, int slot)
    {
        if (id == 0) throw new ArgumentOutOfRangeException(nameof(id), "id 0 is the empty marker");
        if (Count == MaxCount) throw new InvalidOperationException("id slot table full");
        uint i = Home(id);
        while (_entries[i] != 0)
        {
            if ((uint)(_entries[i] >> 32) == id) throw new InvalidOperationException($"id {id} is already present");
            i = (i + 1) & _mask;
        }
        _entries[i] = ((ulong)id << 32) | (uint)slot;
        Count++;
    }

    public bool Remove(uint id, out int slot)
    {
        uint i = Home(id);
        while (true)
        {
            ulong e = _entries[i];
            if (e == 0)
            {
                slot = -1;
                return false;
            }
            if ((uint)(e >> 32) == id)
            {
                slot = (int)(uint)e;
                break;
            }
            i = (i + 1) & _mask;
        }
        // Backward-shift deletion: an entry further on moves into the hole when the hole lies
        // between its home and where it sits (cyclically).
        uint hole = i, j = i;
        while (true)
        {
            j = (j + 1) & _mask;
            ulong e = _entries[j];
            if (e == 0) break;
            uint home = Home((uint)(e >> 32));
            if (((j - home) & _mask) >= ((j - hole) & _mask))
            {
                _entries[hole] = e;
                hole = j;
            }
        }
        _entries[hole] = 0;
        Count--;
        return true;
    }

    /// <summary>Starts loading the cache line where <paramref name="id"/>'s probe begins (an Add, TryGet or Remove soon after hits it).</summary>
    public void PrefetchHome(uint id)
    {
        if (Sse.IsSupported) Sse.Prefetch0(_entries + Home(id));
    }

    private uint Home(uint id) => (id * 0x9E37_79B9u) >> _shift;

    public void Dispose()
    {
        if (_entries != null)
        {
            LargeMemory.Free(_entries, ((nuint)_mask + 1) * sizeof(ulong));
            _entries = null;
        }
    }
}
