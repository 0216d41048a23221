// The dedup index against a reference model. Invariants checked after every operation batch:
// every inserted chunk is found under its own 64-bit prefix and under no other; Count equals
// the model's size; Remove (backward-shift deletion) never loses a neighbour of the removed
// slot, also across the table's wrap-around and across growth; an id that is not indexed is
// reported as such. Collisions are forced on FpHigh (home bucket) and on the tag.
using Target.Dedup.Index;
using Xunit.Abstractions;

namespace Target.Tests.Engine;

public sealed class DedupIndexTests(ITestOutputHelper output)
{
    private static ulong Fp(uint high, uint tag) => ((ulong)high << 32) | tag;

    private static uint Add(ChunkTable chunks, DedupIndex index, ulong fp64)
    {
        uint id = chunks.Allocate();
        chunks[id].FpHigh = DedupIndex.HighOf(fp64);
        chunks[id].RefCount = 1;
        chunks.MarkLive(id);
        index.Insert(id, fp64);
        return id;
    }

    private static uint[] Find(DedupIndex index, ulong fp64)
    {
        uint[] dest = new uint[4096];
        int n = index.FindCandidates(fp64, dest);
        return dest[..n].OrderBy(x => x).ToArray();
    }

    [Fact]
    public void HighIsTheUpperHalfAndTheTagBits8To31OfThePrefix()
    {
        Assert.Equal(0x12345678u, DedupIndex.HighOf(0x12345678_9ABCDEF0));
        Assert.Equal(0x9ABCDE00u, DedupIndex.TagOf(0x12345678_9ABCDEF0));
    }

    [Fact]
    public void PrefixesDifferingOnlyInTheLowEightBitsAreCandidatesOfEachOther()
    {
        using var chunks = new ChunkTable();
        using var index = new DedupIndex(chunks, 16);
        uint a = Add(chunks, index, Fp(7, 0x100)), b = Add(chunks, index, Fp(7, 0x1FF));
        Assert.Equal(new[] { a, b }, Find(index, Fp(7, 0x1AB)));
        Assert.Empty(Find(index, Fp(7, 0x200)));
        Assert.True(index.Contains(b, Fp(7, 0x100)));
    }

    [Fact]
    public void InsertFindRemoveSingle()
    {
        using var chunks = new ChunkTable();
        using var index = new DedupIndex(chunks, 16);
        uint id = Add(chunks, index, Fp(7, 9 << 8));
        Assert.Equal(new[] { id }, Find(index, Fp(7, 9 << 8)));
        Assert.Empty(Find(index, Fp(7, 10 << 8)));
        Assert.Empty(Find(index, Fp(8, 9 << 8)));
        Assert.True(index.Remove(id));
        Assert.False(index.Remove(id));
        Assert.Empty(Find(index, Fp(7, 9 << 8)));
        Assert.Equal(0, index.Count);
    }

    [Fact]
    public void FindStopsAtTheDestinationLength()
    {
        using var chunks = new ChunkTable();
        using var index = new DedupIndex(chunks, 16);
        for (int i = 0; i < 10; i++) Add(chunks, index, Fp(1, 1));
        Span<uint> two = stackalloc uint[2];
        Assert.Equal(2, index.FindCandidates(Fp(1, 1), two));
        Assert.Equal(10, Find(index, Fp(1, 1)).Length);
    }

    [Fact]
    public void ContainsFindsEveryIdEvenBeyondManyCandidates()
    {
        using var chunks = new ChunkTable();
        using var index = new DedupIndex(chunks, 16);
        var ids = new List<uint>();
        for (int i = 0; i < 40; i++) ids.Add(Add(chunks, index, Fp(5, 5)));
        foreach (uint id in ids) Assert.True(index.Contains(id, Fp(5, 5)));
        Assert.False(index.Contains(ids[0], Fp(5, 6 << 8)));
        index.Remove(ids[3]);
        Assert.False(index.Contains(ids[3], Fp(5, 5)));
    }

    [Fact]
    public void GrowsBeyondItsInitialCapacityAndKeepsEveryEntry()
    {
        using var chunks = new ChunkTable();
        using var index = new DedupIndex(chunks, 16);
        var model = new Dictionary<uint, ulong>();
        var random = new Random(1);
        for (int i = 0; i < 20_000; i++)
        {
            ulong fp = (ulong)random.NextInt64();
            model[Add(chunks, index, fp)] = fp;
        }
        Assert.True(index.Capacity > 20_000 / 0.85 - 1, $"capacity {index.Capacity}");
        Assert.Equal(model.Count, index.Count);
        foreach ((uint id, ulong fp) in model) Assert.Contains(id, Find(index, fp));
        Assert.Equal(index.Capacity * 8, index.RamBytes);
    }

    [Fact]
    public void RandomOperationsMatchTheModel()
    {
        int seed = EngineTest.Seed(output);
        var random = new Random(seed);
        for (int round = 0; round < 6; round++)
        {
            using var chunks = new ChunkTable();
            using var index = new DedupIndex(chunks, 16 + round * 7);
            var model = new Dictionary<uint, ulong>();
            // Few distinct highs (long clusters), highs near the top (wrap-around), few tags (tag collisions).
            uint[] highs = { 0, 1, 0x7FFFFFFF, 0xFFFFFFF0, 0xFFFFFFFF, 0x80000000, 12345 };
            for (int op = 0; op < 4000; op++)
            {
                int action = random.Next(10);
                if (action < 6 || model.Count == 0)
                {
                    uint high = random.Next(4) == 0 ? (uint)random.NextInt64(0, 1L << 32) : highs[random.Next(highs.Length)];
                    uint tag = (uint)random.Next(3) << 8 | (uint)random.Next(256);
                    ulong fp = Fp(high, tag);
                    model[Add(chunks, index, fp)] = fp;
                }
                else
                {
                    uint id = model.Keys.ElementAt(random.Next(model.Count));
                    Assert.True(index.Remove(id), $"seed {seed}: remove {id}");
                    model.Remove(id);
                    chunks[id].RefCount = 0;
                    chunks.Release(id);
                }
                if (op % 97 == 0 || op == 3999)
                {
                    Assert.Equal(model.Count, index.Count);
                    foreach (IGrouping<ulong, KeyValuePair<uint, ulong>> group in model.GroupBy(kv => kv.Value & ~0xFFUL))
                    {
                        uint[] expected = group.Select(kv => kv.Key).OrderBy(x => x).ToArray();
                        Assert.True(expected.SequenceEqual(Find(index, group.Key)), $"seed {seed} round {round} op {op}: fp {group.Key:x16}");
                    }
                }
            }
            // Drain completely: the table must end empty, with every removal finding its entry.
            foreach (uint id in model.Keys.ToArray())
            {
                Assert.True(index.Remove(id), $"seed {seed}: drain {id}");
                model.Remove(id);
            }
            Assert.Equal(0, index.Count);
        }
    }

    [Fact]
    public void ClustersLongerThanTheStoredProbeDistanceLoseNoEntryOnRemoval()
    {
        // 700 entries on 3 homes next to each other: distances pass 255 (saturated: the home comes
        // from the chunk table) and the clusters merge; removing in random order shifts across both.
        int seed = EngineTest.Seed(output);
        var random = new Random(seed);
        using var chunks = new ChunkTable();
        using var index = new DedupIndex(chunks, 1024);
        var model = new Dictionary<uint, ulong>();
        uint[] highs = { 0xFFFFFF00, 0xFFFFFFA0, 0xFFFFFFFF }; // the top of the table: the cluster wraps around
        for (int i = 0; i < 700; i++)
        {
            ulong fp = Fp(highs[i % 3], (uint)(i % 5) << 8);
            model[Add(chunks, index, fp)] = fp;
        }
        Assert.Equal(1024, index.Capacity);
        foreach (uint id in model.Keys.OrderBy(_ => random.Next()).Take(500).ToArray())
        {
            Assert.True(index.Remove(id), $"seed {seed}: remove {id}");
            model.Remove(id);
            foreach ((uint left, ulong fp) in model) Assert.True(index.Contains(left, fp), $"seed {seed}: {left} lost after removing {id}");
        }
        foreach (IGrouping<ulong, KeyValuePair<uint, ulong>> group in model.GroupBy(kv => kv.Value))
            Assert.Equal(group.Select(kv => kv.Key).OrderBy(x => x), Find(index, group.Key));
    }

    [Fact]
    public void ClearAndReserve()
    {
        using var chunks = new ChunkTable();
        using var index = new DedupIndex(chunks, 16);
        index.Reserve(1000);
        Assert.True(index.Capacity >= 1000 / 0.85);
        long capacity = index.Capacity;
        for (int i = 0; i < 1000; i++) Add(chunks, index, (ulong)i * 0x9E3779B97F4A7C15);
        Assert.Equal(capacity, index.Capacity);
        int visited = 0;
        index.ForEach((id, tag) => visited++);
        Assert.Equal(1000, visited);
        index.Clear();
        Assert.Equal(0, index.Count);
        Assert.Empty(Find(index, 0));
    }
}
