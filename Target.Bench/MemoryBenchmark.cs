// RAM per unique chunk and per mapped block, measured on the engine's own structures: a chunk
// table and dedup index holding 4 million unique chunks, and a volume map with 4 million mapped
// 4 KiB blocks (a 16 GiB volume, fully written). Goals (DESIGN.md): at most 32 bytes of RAM
// per unique chunk (index + chunk table) and at most 8 bytes per mapped block (maps).
// One long iteration; the figures are printed and checked.
// Run: dotnet run -c Release --project Target.Bench -- --filter '*MemoryBenchmark*'
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Engines;
using Target.Dedup.Index;
using Target.Dedup.Maps;

namespace Target.Bench;

[SimpleJob(RunStrategy.Monitoring, launchCount: 1, warmupCount: 0, iterationCount: 1, invocationCount: 1)]
public class MemoryBenchmark
{
    public const int UniqueChunks = 4_000_000;
    public const long MappedBlocks = 4_000_000;
    public const double GoalBytesPerUniqueChunk = 32;
    public const double GoalBytesPerMappedBlock = 8;

    public readonly record struct Figures(long IndexBytes, long ChunkTableBytes, long MapBytes, double BytesPerUniqueChunk, double BytesPerMappedBlock);

    /// <summary>Builds the structures and returns their RAM figures (also used by the engine tests).</summary>
    public static Figures Measure(int uniqueChunks = UniqueChunks, long mappedBlocks = MappedBlocks, int seed = 4)
    {
        var random = new Random(seed);
        using var chunks = new ChunkTable();
        using var index = new DedupIndex(chunks);
        for (int i = 0; i < uniqueChunks; i++)
        {
            ulong fp = (ulong)random.NextInt64() ^ ((ulong)random.Next(2) << 63);
            uint id = chunks.Allocate();
            ref ChunkEntry e = ref chunks[id];
            e.Location = (uint)i;
            e.RefCount = 1;
            e.FpHigh = DedupIndex.HighOf(fp);
            chunks.MarkLive(id);
            index.Insert(id, fp);
        }
        using var map = new VolumeMap(mappedBlocks);
        for (long b = 0; b < mappedBlocks; b++) map.Set(b, (uint)(b % uniqueChunks) + ChunkTable.FirstChunkId);
        return new Figures(index.RamBytes, chunks.RamBytes, map.RamBytes,
            (double)(index.RamBytes + chunks.RamBytes) / uniqueChunks,
            (double)map.RamBytes / map.DataBlocks);
    }

    [Benchmark]
    public Figures FourMillionChunks()
    {
        Figures f = Measure();
        Console.WriteLine($"// memory: {UniqueChunks} unique chunks: index {f.IndexBytes} B + chunk table {f.ChunkTableBytes} B = {f.BytesPerUniqueChunk:F2} B per unique chunk (goal <= {GoalBytesPerUniqueChunk})");
        Console.WriteLine($"// memory: {MappedBlocks} mapped blocks: maps {f.MapBytes} B = {f.BytesPerMappedBlock:F3} B per mapped block (goal <= {GoalBytesPerMappedBlock})");
        if (f.BytesPerUniqueChunk > GoalBytesPerUniqueChunk || f.BytesPerMappedBlock > GoalBytesPerMappedBlock)
            Console.WriteLine("// memory: GOAL MISSED");
        return f;
    }
}
