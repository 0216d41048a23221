// Fingerprint collisions, forced: every chunk gets the same fingerprint. Invariants: a
// fingerprint match alone never shares a chunk (every block reads back its own bytes, before
// and after destage and reopen); equal contents are still shared when the candidates hold
// them; the checker, run with the pool's own fingerprinter, is clean — and the checker with the
// real algorithm notices that the stored fingerprints are not XXH3's.
using Target.Dedup;
using Target.Dedup.Hashing;
using Target.Tests.Engine;
using Xunit.Abstractions;
using static Target.Tests.Engine.EngineTest;

namespace Target.Tests.Simulation;

internal sealed class ConstantFingerprinter : IFingerprinter
{
    public static readonly Fingerprint Value = new(0x0123456789ABCDEF, 0x0FEDCBA987654321);

    public FingerprintAlgorithm Algorithm => FingerprintAlgorithm.Xxh3_128;

    public Fingerprint Compute(ReadOnlySpan<byte> data) => Value;
}

public sealed class CollisionTests(ITestOutputHelper output)
{
    private static readonly CancellationToken None = CancellationToken.None;

    private static async Task<PoolCheckReport> CheckWithOverrideAsync(PoolOptions options)
    {
        Pool pool = Pool.Open(options, checkOnly: true);
        try { return pool.Check(null, None); }
        finally { await pool.DisposeAsync(); }
    }

    [Theory]
    [InlineData(3, 40)]
    [InlineData(60, 400)]
    public async Task CollidingChunksNeverMixAndStayConsistent(int distinct, int writes)
    {
        int seed = Seed(output);
        var random = new Random(seed);
        using var dir = new TempPoolDir();
        PoolOptions options = Options(dir.Path, cachePages: 128) with { FingerprinterOverride = new ConstantFingerprinter() };
        const int blocks = 512;
        byte[] shadow = new byte[blocks * Chunk];
        byte[][] contents = Enumerable.Range(0, distinct).Select(i => Pattern(10_000 + i, 1)).ToArray();
        await using (Pool pool = Pool.Open(options))
        {
            Volume v = await pool.CreateVolumeAsync("v", blocks * Chunk, 512, None);
            for (int i = 0; i < writes; i++)
            {
                long b = random.Next(blocks);
                byte[] data = contents[random.Next(distinct)];
                await WriteAsync(v, b * Chunk, data);
                data.CopyTo(shadow, b * Chunk);
                if (random.Next(20) == 0) await v.FlushAsync(None);
                if (random.Next(40) == 0)
                {
                    long t = random.Next(blocks - 8);
                    await v.TrimAsync(t * Chunk, 8 * Chunk, None);
                    Array.Clear(shadow, (int)(t * Chunk), 8 * Chunk);
                }
            }
            await AssertContentAsync(v, shadow, $"seed {seed} before flush");
            await v.FlushAsync(None);
            await AssertContentAsync(v, shadow, $"seed {seed} after flush");
            PoolStats stats = pool.GetStats();
            int present = contents.Count(c => Enumerable.Range(0, blocks).Any(b => shadow.AsSpan(b * Chunk, Chunk).SequenceEqual(c)));
            output.WriteLine($"{present} distinct contents present, {stats.UniqueChunks} unique chunks stored");
            Assert.True(stats.UniqueChunks >= present);
            if (distinct <= 4) Assert.Equal(present, stats.UniqueChunks); // all fit in the candidate list
        }
        PoolCheckReport report = await CheckWithOverrideAsync(options);
        foreach (string p in report.Problems) output.WriteLine(p);
        Assert.True(report.Clean);
        PoolCheckReport real = await PoolChecker.CheckAsync(dir.Path, false, null, None);
        Assert.False(real.Clean);
        Assert.Contains(real.Problems, p => p.Contains("fingerprint"));
        await using (Pool pool = Pool.Open(options))
        {
            pool.TryGetVolume("v", out Volume v);
            await AssertContentAsync(v, shadow, $"seed {seed} after reopen");
        }
    }
}
