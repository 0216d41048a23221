// RAM goals (DESIGN.md): at most 32 bytes per unique chunk (dedup index + chunk table) and at
// most 8 bytes per mapped 4 KiB block (volume maps), checked at their worst point: right after
// the index grows (lowest load), for pools past a million chunks. Target.Bench's MemoryBenchmark
// measures the same at 4 million.
using Target.Dedup.Index;
using Target.Dedup.Maps;
using Xunit.Abstractions;

namespace Target.Tests.Engine;

public sealed class MemoryGoalTests(ITestOutputHelper output)
{
    [Fact]
    public void BytesPerUniqueChunkStayUnder32EvenRightAfterGrowth()
    {
        var random = new Random(7);
        using var chunks = new ChunkTable();
        using var index = new DedupIndex(chunks);
        double worst = 0;
        long capacity = index.Capacity;
        for (int i = 1; i <= 2_500_000; i++)
        {
            ulong fp = (ulong)random.NextInt64() ^ ((ulong)random.Next() << 63);
            uint id = chunks.Allocate();
            chunks[id].FpHigh = DedupIndex.HighOf(fp);
            index.Insert(id, fp);
            if (i >= 1_000_000 && (index.Capacity != capacity || i % 65536 == 0))
            {
                double perChunk = (double)(index.RamBytes + chunks.RamBytes) / i;
                if (index.Capacity != capacity) output.WriteLine($"{i} chunks: index grew to {index.Capacity} slots, {perChunk:F2} B per unique chunk");
                worst = Math.Max(worst, perChunk);
            }
            capacity = index.Capacity;
        }
        output.WriteLine($"worst {worst:F2} B per unique chunk");
        Assert.True(worst <= 32, $"{worst:F2} B per unique chunk");
    }

    [Fact]
    public void BytesPerMappedBlockStayUnder8WhenWrittenDensely()
    {
        using var map = new VolumeMap(1L << 28); // 1 TiB volume
        for (long b = 0; b < 1_000_000; b++) map.Set(b, 2 + (uint)b);
        double perBlock = (double)map.RamBytes / map.DataBlocks;
        output.WriteLine($"{perBlock:F3} B per mapped block (1 TiB volume, first 4 GB written)");
        Assert.True(perBlock <= 8, $"{perBlock:F3} B per mapped block");
        // Not a goal, a figure: map pages cover 4096 blocks, so scattered writes cost more per block.
        using var sparse = new VolumeMap(1L << 28);
        for (long b = 0; b < 100_000; b++) sparse.Set(b * 64, 2);
        output.WriteLine($"{(double)sparse.RamBytes / sparse.DataBlocks:F1} B per mapped block when every 64th block is written");
    }
}
