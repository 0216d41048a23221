// Chunk id -> (location, refcount, CRC32C, fingerprint high bits), 16 bytes per id, in 1 MiB
// native pages so growth never copies. Ids 0 (hole) and 1 (zero) are reserved and never stored.
// Invariants: a live chunk has RefCount > 0; a free id has RefCount == 0 and sits on the free
// list (linked through Location); ids below HighWater are either live or free.
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;

namespace Target.Dedup.Index;

[StructLayout(LayoutKind.Sequential, Pack = 4)]
public struct ChunkEntry
{
    /// <summary>Block number (4 KiB units) of the chunk in the pool's log address space; for a free id, the next free id.</summary>
    public uint Location;
    public uint RefCount;
    public uint Crc;
    /// <summary>Bits 32..63 of the fingerprint's low word: the dedup index's home-bucket hash.</summary>
    public uint FpHigh;
}

public sealed unsafe class ChunkTable : IDisposable
{
    public const uint HoleId = 0;
    public const uint ZeroId = 1;
    public const uint FirstChunkId = 2;
    private const int PageShift = 16;
    private const int PageEntries = 1 << PageShift;
    private const uint NoFree = 0;

    private ChunkEntry*[] _pages = new ChunkEntry*[16];
    private int _pageCount;
    private uint _freeHead = NoFree;

    public ChunkTable() => HighWater = FirstChunkId;

    /// <summary>One past the highest id ever used.</summary>
    public uint HighWater { get; private set; }

    public long LiveCount { get; private set; }

    public long RamBytes => (long)_pageCount * PageEntries * sizeof(ChunkEntry);

    /// <summary>A hint: starts loading id's entry into the CPU cache (ids out of range are ignored).</summary>
    public void Prefetch(uint id)
    {
        if (id >= FirstChunkId && id < HighWater && Sse.IsSupported) Sse.Prefetch0(&_pages[id >> PageShift][id & (PageEntries - 1)]);
    }

    public ref ChunkEntry this[uint id]
    {
        get
        {
            if (id < FirstChunkId || id >= HighWater) ThrowBadId(id);
            return ref _pages[id >> PageShift][id & (PageEntries - 1)];
        }
    }

    public bool IsLive(uint id) => id >= FirstChunkId && id < HighWater && this[id].RefCount > 0;

    /// <summary>Takes a free id (lowest recently freed first) or a new one.</summary>
    public uint Allocate()
    {
        if (_freeHead != NoFree)
        {
            uint id = _freeHead;
            ref ChunkEntry e = ref this[id];
            _freeHead = e.Location;
            e = default;
            return id;
        }
        if (HighWater == uint.MaxValue) throw new NoSpaceException("chunk ids exhausted");
        uint next = HighWater;
        EnsurePage(next);
        HighWater = next + 1;
        this[next] = default;
        return next;
    }

    /// <summary>Makes a specific id live (journal replay names ids explicitly). The id must be free or new.</summary>
    public void Claim(uint id)
    {
        if (id < FirstChunkId) ThrowBadId(id);
        if (id >= HighWater)
        {
            while (HighWater <= id)
            {
                uint next = HighWater;
                EnsurePage(next);
                HighWater = next + 1;
                this[next] = default;
                if (next != id) PushFree(next);
            }
            return;
        }
        if (this[id].RefCount != 0) throw new InvalidDataException($"chunk {id} claimed while live");
        RemoveFromFreeList(id);
        this[id] = default;
    }

    public void MarkLive(uint id) => LiveCount++;

    /// <summary>Returns an id whose refcount reached zero to the free list.</summary>
    public void Release(uint id)
    {
        LiveCount--;
        PushFree(id);
    }

    /// <summary>Returns an id allocated but never made live (a batch that was not committed).</summary>
    public void Unallocate(uint id) => PushFree(id);

    /// <summary>After loading entries directly (checkpoint), rebuilds the free list and live count.</summary>
    public void RebuildFreeList()
    {
        _freeHead = NoFree;
        LiveCount = 0;
        for (uint id = HighWater; id-- > FirstChunkId;)
        {
            ref ChunkEntry e = ref this[id];
            if (e.RefCount == 0) { e.Location = _freeHead; _freeHead = id; }
            else LiveCount++;
        }
    }

    /// <summary>Sets HighWater when loading a checkpoint.</summary>
    public void SetHighWater(uint highWater)
    {
        if (highWater < FirstChunkId) highWater = FirstChunkId;
        if (highWater > FirstChunkId) EnsurePage(highWater - 1);
        HighWater = highWater;
    }

    private void PushFree(uint id)
    {
        ref ChunkEntry e = ref this[id];
        e = default;
        e.Location = _freeHead;
        _freeHead = id;
    }

    private void RemoveFromFreeList(uint id)
    {
        // Rare (replay only, when the runtime took ids in another order than this free list).
        if (_freeHead == id) { _freeHead = this[id].Location; return; }
        uint prev = _freeHead;
        while (prev != NoFree)
        {
            ref ChunkEntry p = ref this[prev];
            if (p.Location == id) { p.Location = this[id].Location; return; }
            prev = p.Location;
        }
        throw new InvalidDataException($"chunk {id} is neither live nor free");
    }

    private void EnsurePage(uint id)
    {
        int page = (int)(id >> PageShift);
        while (page >= _pageCount)
        {
            if (_pageCount == _pages.Length)
            {
                var grown = new ChunkEntry*[_pages.Length * 2];
                Array.Copy(_pages, grown, _pages.Length);
                _pages = grown;
            }
            _pages[_pageCount++] = (ChunkEntry*)NativeMemory.AllocZeroed((nuint)PageEntries, (nuint)sizeof(ChunkEntry));
        }
    }

    private static void ThrowBadId(uint id) => throw new InvalidOperationException($"bad chunk id {id}");

    public void Dispose()
    {
        for (int i = 0; i < _pageCount; i++) NativeMemory.Free(_pages[i]);
        _pageCount = 0;
    }
}
