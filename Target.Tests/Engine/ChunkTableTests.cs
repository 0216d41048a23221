// The chunk table: ids 0 and 1 are reserved; Allocate takes the most recently freed id first,
// else HighWater; Claim makes a named id live (ids skipped over go to the free list); the free
// list is linked through Location and survives RebuildFreeList; growth past the first page
// directory (16 pages, 1M ids) keeps every entry.
using Target.Dedup.Index;
using Xunit.Abstractions;

namespace Target.Tests.Engine;

public sealed class ChunkTableTests(ITestOutputHelper output)
{
    [Fact]
    public void AllocatesFromTwoUpwardsAndReusesFreedIds()
    {
        using var table = new ChunkTable();
        Assert.Equal(ChunkTable.FirstChunkId, table.HighWater);
        Assert.Equal(2u, table.Allocate());
        Assert.Equal(3u, table.Allocate());
        Assert.Equal(4u, table.Allocate());
        Assert.Equal(5u, table.HighWater);
        table.MarkLive(3);
        table.Release(3);
        table.Unallocate(4);
        Assert.Equal(4u, table.Allocate());
        Assert.Equal(3u, table.Allocate());
        Assert.Equal(5u, table.Allocate());
        Assert.Throws<InvalidOperationException>(() => table[0]);
        Assert.Throws<InvalidOperationException>(() => table[1]);
        Assert.Throws<InvalidOperationException>(() => table[6]);
    }

    [Fact]
    public void ClaimBeyondHighWaterFreesTheIdsSkipped()
    {
        using var table = new ChunkTable();
        table.Claim(10);
        Assert.Equal(11u, table.HighWater);
        table[10].RefCount = 1;
        table.MarkLive(10);
        var got = new HashSet<uint>();
        for (int i = 0; i < 8; i++) got.Add(table.Allocate());
        Assert.Equal(Enumerable.Range(2, 8).Select(i => (uint)i).ToHashSet(), got);
        Assert.Equal(11u, table.Allocate());
    }

    [Fact]
    public void ClaimOfAFreeIdTakesItOffTheFreeList()
    {
        using var table = new ChunkTable();
        for (int i = 0; i < 6; i++) table.Allocate(); // 2..7
        foreach (uint id in new uint[] { 3, 5, 7 }) table.Unallocate(id);
        table.Claim(5);
        table[5].RefCount = 1;
        Assert.Throws<InvalidDataException>(() => table.Claim(5));
        var got = new[] { table.Allocate(), table.Allocate(), table.Allocate() };
        Assert.Equal(new uint[] { 7, 3, 8 }, got);
    }

    [Fact]
    public void RebuildFreeListCountsLiveAndFree()
    {
        using var table = new ChunkTable();
        table.SetHighWater(12);
        foreach (uint id in new uint[] { 2, 5, 11 }) table[id].RefCount = 2;
        table.RebuildFreeList();
        Assert.Equal(3, table.LiveCount);
        var got = new List<uint>();
        for (int i = 0; i < 7; i++) got.Add(table.Allocate());
        Assert.Equal(new uint[] { 3, 4, 6, 7, 8, 9, 10 }, got);
        Assert.Equal(12u, table.Allocate());
        Assert.True(table.IsLive(5));
        Assert.False(table.IsLive(0));
        Assert.False(table.IsLive(100));
    }

    [Fact]
    public void GrowsPastTheFirstPageDirectory()
    {
        using var table = new ChunkTable();
        const uint count = (1u << 20) + 70_000; // more than 16 pages of 65536
        for (uint i = 0; i < count; i++)
        {
            uint id = table.Allocate();
            table[id].Location = id * 3;
            table[id].FpHigh = ~id;
        }
        Assert.Equal(count + 2, table.HighWater);
        for (uint id = 2; id < count + 2; id += 997)
        {
            Assert.Equal(id * 3, table[id].Location);
            Assert.Equal(~id, table[id].FpHigh);
        }
        Assert.Equal(((count + 2 + 65535) / 65536) * 65536L * 16, table.RamBytes);
    }

    [Fact]
    public void RandomOperationsMatchTheModel()
    {
        int seed = EngineTest.Seed(output);
        var random = new Random(seed);
        using var table = new ChunkTable();
        var live = new HashSet<uint>();
        uint highWater = 2;
        for (int op = 0; op < 20_000; op++)
        {
            int action = random.Next(10);
            if (action < 5)
            {
                uint id = table.Allocate();
                Assert.DoesNotContain(id, live);
                Assert.True(id >= 2);
                highWater = Math.Max(highWater, id + 1);
                table[id].RefCount = 1;
                table.MarkLive(id);
                live.Add(id);
            }
            else if (action < 8 && live.Count > 0)
            {
                uint id = live.ElementAt(random.Next(live.Count));
                table[id].RefCount = 0;
                table.Release(id);
                live.Remove(id);
            }
            else
            {
                uint id = (uint)random.Next(2, (int)highWater + 50);
                if (live.Contains(id)) { Assert.Throws<InvalidDataException>(() => table.Claim(id)); continue; }
                table.Claim(id);
                highWater = Math.Max(highWater, id + 1);
                table[id].RefCount = 1;
                table.MarkLive(id);
                live.Add(id);
            }
            Assert.Equal(highWater, table.HighWater);
            Assert.Equal(live.Count, table.LiveCount);
        }
        for (uint id = 2; id < table.HighWater; id++) Assert.Equal(live.Contains(id), table.IsLive(id));
        // Every free id comes back exactly once before HighWater moves.
        long free = table.HighWater - 2 - live.Count;
        var seen = new HashSet<uint>();
        for (long i = 0; i < free; i++)
        {
            uint id = table.Allocate();
            Assert.True(seen.Add(id), $"seed {seed}: id {id} handed out twice");
            Assert.DoesNotContain(id, live);
        }
        Assert.Equal(highWater, table.HighWater);
    }
}
