// The volume map against a dictionary model: Get/Set return the right old values; DataBlocks
// and ZeroBlocks count entries >= 2 and == 1; a page is freed when it holds only holes again
// (RamBytes follows mapped blocks); Resize grows and shrinks the page directory (an array of
// native pointers copied with Array.Copy) keeping every entry below the new size.
using Target.Dedup;
using Target.Dedup.Maps;
using Xunit.Abstractions;

namespace Target.Tests.Engine;

public sealed class VolumeMapTests(ITestOutputHelper output)
{
    private const int Page = VolumeMap.PageEntries;

    [Fact]
    public void SetGetAndCounters()
    {
        using var map = new VolumeMap(3 * Page + 10);
        Assert.Equal(0u, map.Get(5));
        Assert.Equal(0, map.AllocatedPages);
        Assert.Equal(0u, map.Set(5, 0));
        Assert.Equal(0, map.AllocatedPages);
        Assert.Equal(0u, map.Set(5, 7));
        Assert.Equal(7u, map.Set(5, 1));
        Assert.Equal(1u, map.Set(Page + 1, 9) + 1);
        Assert.Equal(1, map.DataBlocks);
        Assert.Equal(1, map.ZeroBlocks);
        Assert.Equal(2, map.AllocatedPages);
        Assert.Equal(1u, map.Set(5, 0));
        Assert.Equal(1, map.AllocatedPages);
        Assert.Equal(9u, map.Set(Page + 1, 0));
        Assert.Equal(0, map.AllocatedPages);
        Assert.Equal(0, map.DataBlocks);
        Assert.Equal(0, map.ZeroBlocks);
        Assert.Throws<OutOfRangeException>(() => map.Get(3 * Page + 10));
        Assert.Throws<OutOfRangeException>(() => map.Set(-1, 3));
    }

    [Fact]
    public void RamFollowsMappedBlocks()
    {
        using var map = new VolumeMap(1L << 30); // 4 TiB of logical space
        long empty = map.RamBytes;
        Assert.True(empty < 4 << 20, $"empty map of a 4 TiB volume uses {empty} bytes");
        for (long b = 0; b < 10 * Page; b++) map.Set(b, (uint)b + 2);
        Assert.Equal(empty + 10L * Page * 4, map.RamBytes);
        Assert.True((double)(map.RamBytes - empty) / map.DataBlocks <= 4.0);
    }

    [Fact]
    public void NextAllocatedPageStartSkipsEmptyPages()
    {
        using var map = new VolumeMap(10 * Page);
        Assert.Equal(10L * Page, map.NextAllocatedPageStart(0));
        map.Set(4 * Page + 17, 3);
        Assert.Equal(4L * Page, map.NextAllocatedPageStart(0));
        Assert.Equal(4L * Page + 20, map.NextAllocatedPageStart(4 * Page + 20));
        Assert.Equal(10L * Page, map.NextAllocatedPageStart(5 * Page));
    }

    [Fact]
    public void ResizeGrowKeepsEntriesAcrossManyPages()
    {
        using var map = new VolumeMap(5 * Page);
        for (long b = 0; b < 5 * Page; b += 313) map.Set(b, (uint)(b + 2));
        int pages = map.AllocatedPages;
        map.Resize(40 * Page + 3);
        Assert.Equal(40L * Page + 3, map.Blocks);
        Assert.Equal(pages, map.AllocatedPages);
        for (long b = 0; b < 5 * Page; b++) Assert.Equal(b % 313 == 0 ? (uint)(b + 2) : 0u, map.Get(b));
        map.Set(40 * Page + 2, 99);
        Assert.Equal(99u, map.Get(40 * Page + 2));
        Assert.Equal(0u, map.Get(20 * Page));
    }

    [Fact]
    public void ResizeShrinkRefusesMappedBlocksBeyondTheEnd()
    {
        using var map = new VolumeMap(4 * Page);
        map.Set(3 * Page + 5, 7);
        map.Set(10, 8);
        Assert.Throws<InvalidOperationException>(() => map.Resize(2 * Page));
        map.Set(3 * Page + 5, 0);
        map.Resize(Page + 100);
        Assert.Equal(Page + 100L, map.Blocks);
        Assert.Equal(8u, map.Get(10));
        Assert.Throws<OutOfRangeException>(() => map.Get(Page + 100));
        Assert.Throws<InvalidOperationException>(() => map.Resize(5));
        Assert.Equal(8u, map.Get(10));
    }

    [Fact]
    public void ResizeShrinkThenGrowReadsHolesBeyondTheOldEnd()
    {
        using var map = new VolumeMap(2 * Page);
        map.Set(Page - 1, 5);
        map.Resize(Page - 1 + 1);
        map.Resize(3 * Page);
        Assert.Equal(5u, map.Get(Page - 1));
        for (long b = Page; b < 3 * Page; b += 101) Assert.Equal(0u, map.Get(b));
        Assert.Equal(1, map.DataBlocks);
    }

    [Fact]
    public void RandomOperationsMatchTheModel()
    {
        int seed = EngineTest.Seed(output);
        var random = new Random(seed);
        long blocks = 6 * Page + 77;
        using var map = new VolumeMap(blocks);
        var model = new Dictionary<long, uint>();
        for (int op = 0; op < 50_000; op++)
        {
            int action = random.Next(100);
            if (action == 0)
            {
                // Resize: shrink only below the highest mapped block + 1.
                long highest = model.Count == 0 ? 0 : model.Keys.Max() + 1;
                long size = random.Next(2) == 0 ? random.NextInt64(highest == 0 ? 1 : highest, blocks + 1) : random.NextInt64(blocks, 12 * Page);
                map.Resize(size);
                blocks = size;
                continue;
            }
            long b = random.NextInt64(blocks);
            if (random.Next(4) == 0) b = b / Page * Page + Page - 1 < blocks ? b / Page * Page + Page - 1 : b;
            uint value = random.Next(3) switch { 0 => 0u, 1 => 1u, _ => (uint)random.Next(2, 1000) };
            uint expectedOld = model.TryGetValue(b, out uint o) ? o : 0u;
            Assert.Equal(expectedOld, map.Set(b, value));
            if (value == 0) model.Remove(b); else model[b] = value;
            if (op % 1000 == 0)
            {
                Assert.Equal(model.Values.Count(v => v >= 2), map.DataBlocks);
                Assert.Equal(model.Values.Count(v => v == 1), map.ZeroBlocks);
                Assert.Equal(model.Keys.Select(k => k / Page).Distinct().Count(), map.AllocatedPages);
            }
        }
        for (long b = 0; b < blocks; b++) Assert.Equal(model.TryGetValue(b, out uint v) ? v : 0u, map.Get(b));
    }

    [Fact]
    public void PagesRoundTripThroughForEachAndLoad()
    {
        using var map = new VolumeMap(4 * Page);
        map.Set(3, 4);
        map.Set(2 * Page + 9, 1);
        using var copy = new VolumeMap(4 * Page);
        map.ForEachPage((page, entries) => copy.LoadPage(page, entries));
        Assert.Equal(4u, copy.Get(3));
        Assert.Equal(1u, copy.Get(2 * Page + 9));
        Assert.Equal(1, copy.DataBlocks);
        Assert.Equal(1, copy.ZeroBlocks);
        Assert.Throws<InvalidDataException>(() => copy.LoadPage(0, new uint[Page]));
    }
}
