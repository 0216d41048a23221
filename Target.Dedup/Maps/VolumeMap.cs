// A volume's map: logical 4 KiB block -> chunk id (0 hole, 1 zero, >= 2 stored chunk).
// Two levels: a directory of 4096-entry native pages allocated on first use and freed when
// they hold only holes again, so RAM follows mapped blocks, not the logical size.
// Invariants: DataBlocks and ZeroBlocks count the entries >= 2 and == 1; _pageUsed[p] counts
// the non-hole entries of page p.
using System.Runtime.InteropServices;

namespace Target.Dedup.Maps;

public sealed unsafe class VolumeMap : IDisposable
{
    public const int PageShift = 12;
    public const int PageEntries = 1 << PageShift;

    private uint*[] _pages;
    private int[] _pageUsed;
    private int _allocatedPages;

    public VolumeMap(long blocks)
    {
        Blocks = blocks;
        long pages = (blocks + PageEntries - 1) >> PageShift;
        _pages = new uint*[pages];
        _pageUsed = new int[pages];
    }

    public long Blocks { get; private set; }

    public long DataBlocks { get; private set; }

    public long ZeroBlocks { get; private set; }

    public long RamBytes => (long)_allocatedPages * PageEntries * sizeof(uint) + (long)_pages.Length * (sizeof(nint) + sizeof(int));

    public uint Get(long block)
    {
        if ((ulong)block >= (ulong)Blocks) ThrowRange(block);
        uint* page = _pages[block >> PageShift];
        return page == null ? 0u : page[block & (PageEntries - 1)];
    }

    /// <summary>Sets an entry and returns the previous one.</summary>
    public uint Set(long block, uint value)
    {
        if ((ulong)block >= (ulong)Blocks) ThrowRange(block);
        long p = block >> PageShift;
        uint* page = _pages[p];
        if (page == null)
        {
            if (value == 0) return 0;
            page = (uint*)NativeMemory.AllocZeroed(PageEntries, sizeof(uint));
            _pages[p] = page;
            _allocatedPages++;
        }
        ref uint slot = ref page[block & (PageEntries - 1)];
        uint old = slot;
        slot = value;
        Count(old, -1);
        Count(value, +1);
        _pageUsed[p] += (value != 0 ? 1 : 0) - (old != 0 ? 1 : 0);
        if (_pageUsed[p] == 0)
        {
            NativeMemory.Free(page);
            _pages[p] = null;
            _allocatedPages--;
        }
        return old;
    }

    /// <summary>Next block at or after <paramref name="block"/> whose page is allocated, or Blocks.</summary>
    public long NextAllocatedPageStart(long block)
    {
        long p = block >> PageShift;
        if (p < _pages.Length && _pages[p] != null) return block;
        for (p++; p < _pages.Length; p++)
            if (_pages[p] != null) return p << PageShift;
        return Blocks;
    }

    /// <summary>Changes the number of blocks; entries beyond a new, smaller size must already be holes.</summary>
    public void Resize(long blocks)
    {
        long pages = (blocks + PageEntries - 1) >> PageShift;
        for (long b = blocks; b < Blocks; b = NextAllocatedPageStart(b + 1))
        {
            if (b < Blocks && Get(b) != 0) throw new InvalidOperationException($"block {b} still mapped on shrink");
        }
        if (pages < _pages.Length)
        {
            for (long p = pages; p < _pages.Length; p++)
                if (_pages[p] != null) { NativeMemory.Free(_pages[p]); _allocatedPages--; }
        }
        var resized = new uint*[pages];
        Array.Copy(_pages, resized, Math.Min(pages, _pages.Length));
        _pages = resized;
        Array.Resize(ref _pageUsed, (int)pages);
        Blocks = blocks;
    }

    /// <summary>Visits every allocated page (checkpoint writing).</summary>
    public void ForEachPage(Action<long, ReadOnlySpan<uint>> visit)
    {
        for (long p = 0; p < _pages.Length; p++)
        {
            if (_pages[p] != null) visit(p, new ReadOnlySpan<uint>(_pages[p], PageEntries));
        }
    }

    public int AllocatedPages => _allocatedPages;

    /// <summary>Loads one page from a checkpoint; the page must not be allocated yet.</summary>
    public void LoadPage(long pageIndex, ReadOnlySpan<uint> entries)
    {
        if (entries.Length != PageEntries || pageIndex < 0 || pageIndex >= _pages.Length || _pages[pageIndex] != null)
            throw new InvalidDataException($"bad map page {pageIndex} in checkpoint");
        long first = pageIndex << PageShift;
        for (int i = 0; i < PageEntries; i++)
        {
            if (entries[i] != 0) Set(first + i, entries[i]);
        }
    }

    private void Count(uint value, int delta)
    {
        if (value >= 2) DataBlocks += delta;
        else if (value == 1) ZeroBlocks += delta;
    }

    private void ThrowRange(long block) => throw new OutOfRangeException($"block {block} beyond volume end ({Blocks} blocks)");

    public void Dispose()
    {
        for (int p = 0; p < _pages.Length; p++)
        {
            if (_pages[p] != null) { NativeMemory.Free(_pages[p]); _pages[p] = null; }
        }
        _allocatedPages = 0;
    }
}
