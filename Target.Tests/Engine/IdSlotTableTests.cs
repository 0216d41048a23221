// The read cache's id -> slot table against a Dictionary model: random adds and removals at the
// table's full load (every entry lives in a probe cluster, across the wrap-around), each removal
// leaving every other id findable with its slot; and the read cache on top of it: inserted chunks
// read back, CLOCK eviction drops the victim's id, removal forgets the id.
using Target.Dedup.Engine;
using Xunit.Abstractions;

namespace Target.Tests.Engine;

public sealed class IdSlotTableTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData(8)]
    [InlineData(100)]
    [InlineData(5000)]
    public void RandomAddsAndRemovalsMatchTheModel(int maxCount)
    {
        int seed = EngineTest.Seed(output);
        var random = new Random(seed);
        using var table = new IdSlotTable(maxCount);
        var model = new Dictionary<uint, int>();
        for (int op = 0; op < 20_000; op++)
        {
            if (model.Count < maxCount && (model.Count == 0 || random.Next(2) == 0))
            {
                uint id = (uint)random.Next(1, 4 * maxCount + 2);
                if (model.ContainsKey(id)) continue;
                int slot = random.Next();
                table.Add(id, slot);
                model.Add(id, slot);
            }
            else
            {
                uint id = random.Next(8) == 0 ? (uint)random.Next(1, 4 * maxCount + 2) : model.Keys.ElementAt(random.Next(model.Count));
                bool present = model.Remove(id, out int expected);
                Assert.Equal(present, table.Remove(id, out int slot));
                if (present) Assert.Equal(expected, slot);
            }
            if (op % 50 == 0 || maxCount <= 100)
            {
                Assert.Equal(model.Count, table.Count);
                foreach ((uint id, int slot) in model)
                {
                    Assert.True(table.TryGet(id, out int got), $"seed {seed} op {op}: id {id} lost");
                    Assert.Equal(slot, got);
                }
            }
        }
    }

    [Fact]
    public void RejectsIdZeroADuplicateAndAnAddPastItsSize()
    {
        using var table = new IdSlotTable(2);
        Assert.Throws<ArgumentOutOfRangeException>(() => table.Add(0, 1));
        table.Add(7, 1);
        Assert.Throws<InvalidOperationException>(() => table.Add(7, 2));
        table.Add(9, 2);
        Assert.Throws<InvalidOperationException>(() => table.Add(11, 3));
        Assert.False(table.TryGet(11, out _));
    }

    [Fact]
    public void TheReadCacheEvictsRemovesAndReadsBackThroughTheTable()
    {
        using var cache = new ChunkCache(4 * 4096);
        byte[] chunk = new byte[4096], read = new byte[4096];
        for (uint id = 2; id < 6; id++)
        {
            chunk.AsSpan().Fill((byte)id);
            cache.Insert(id, chunk);
        }
        Assert.Equal(4, cache.Count);
        Assert.True(cache.TryCopy(3, 0, read));
        Assert.True(read.AsSpan().IndexOfAnyExcept((byte)3) < 0);

        chunk.AsSpan().Fill(6);
        cache.Insert(6, chunk); // CLOCK: 3 was referenced, so another chunk is the victim
        Assert.Equal(4, cache.Count);
        Assert.True(cache.Contains(3) && cache.Contains(6));
        Assert.Equal(2, new uint[] { 2, 4, 5 }.Count(cache.Contains));

        cache.Remove(6);
        Assert.False(cache.Contains(6));
        Assert.False(cache.TryCopy(6, 0, read));
        Assert.Equal(3, cache.Count);
    }

    [Fact]
    public void AComparisonStampHoldsOnlyWhileItsIdStaysInTheSameEntry()
    {
        using var cache = new ChunkCache(2 * 4096);
        byte[] chunk = new byte[4096];
        chunk.AsSpan().Fill(2);
        cache.Insert(2, chunk);
        Assert.True(cache.TryCompare(2, chunk, out bool equal, out long stamp) && equal);
        Assert.True(cache.StillHolds(2, stamp));
        Assert.False(cache.StillHolds(3, stamp));

        cache.Remove(2); // freed
        Assert.False(cache.StillHolds(2, stamp));
        cache.Insert(2, chunk); // cached again, perhaps in the same slot: a new entry all the same
        Assert.False(cache.StillHolds(2, stamp));

        Assert.True(cache.TryCompare(2, chunk, out _, out stamp));
        chunk.AsSpan().Fill(3);
        cache.Insert(3, chunk);
        cache.Insert(4, chunk); // two slots: one of 2 and 3 is evicted
        Assert.Equal(cache.Contains(2), cache.StillHolds(2, stamp));
    }
    [Fact]
    public void TheCachedBitmapAgreesWithTheTableThroughEvictionsRemovalsAndGrowth()
    {
        // Ids up to 300,000: the bitmap starts at 65,536 ids and grows. A bit left set for an id
        // evicted or removed, or missing for one cached, shows as a count or content mismatch.
        using var cache = new ChunkCache(64 * 4096);
        var random = new Random(7);
        var seen = new HashSet<uint>();
        byte[] chunk = new byte[4096], read = new byte[4096];
        for (int op = 0; op < 20_000; op++)
        {
            uint id = (uint)random.Next(2, op < 10_000 ? 70_000 : 300_000);
            if (random.Next(3) == 0)
            {
                cache.Remove(id);
                Assert.False(cache.Contains(id));
                continue;
            }
            chunk.AsSpan().Fill((byte)id);
            cache.Insert(id, chunk);
            seen.Add(id);
            Assert.True(cache.Contains(id));
            if (op % 1000 != 999) continue;
            int cached = 0;
            foreach (uint s in seen)
            {
                bool contains = cache.Contains(s);
                Assert.Equal(contains, cache.TryCopy(s, 0, read));
                if (!contains) continue;
                cached++;
                Assert.True(read.AsSpan().IndexOfAnyExcept((byte)s) < 0, $"chunk {s} reads another's bytes");
            }
            Assert.Equal(cache.Count, cached);
        }
    }
}
