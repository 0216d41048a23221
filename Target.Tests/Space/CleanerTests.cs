// Space management through the public API: the cleaner keeps a pool running under endless
// overwrites, trims give space back without a restart, and a full pool fails writes with
// NoSpaceException while reads and trims go on, then accepts writes again once space is freed.
// Every test ends with the offline checker clean (refcounts, segment liveness, CRCs).
using Target.Dedup;
using Target.Tests.Engine;
using Xunit.Abstractions;

namespace Target.Tests.Space;

public sealed class CleanerTests(ITestOutputHelper output)
{
    private const int Chunk = EngineTest.Chunk;

    [Fact]
    public async Task OverwritesFarBeyondThePoolSizeKeepRunningAndKeepPhysicalNearLive()
    {
        int seed = EngineTest.Seed(output);
        var random = new Random(seed);
        using var dir = new TempPoolDir();
        // 20 segments (80 MiB) for a 32 MiB volume; write 10x the pool through it.
        const long volumeBytes = 32L << 20;
        byte[] shadow = new byte[volumeBytes];
        PoolStats stats;
        await using (Pool pool = Pool.Open(EngineTest.Options(dir.Path, segments: 20, cachePages: 2048)))
        {
            Volume volume = await pool.CreateVolumeAsync("v", volumeBytes, 512, CancellationToken.None);
            long blocks = volumeBytes / Chunk;
            // Fill first, then overwrite at random with unique data.
            for (long b = 0; b < blocks; b++) await Write(volume, shadow, b, random);
            long overwrites = 10 * EngineTest.PoolBytes(20) / Chunk;
            for (long i = 0; i < overwrites; i++) await Write(volume, shadow, random.NextInt64(blocks), random);
            await volume.FlushAsync(CancellationToken.None);
            await EngineTest.AssertContentAsync(volume, shadow, "after overwrites");
            stats = pool.GetStats();
            output.WriteLine($"host {stats.HostBytesWritten >> 20} MiB, device {stats.DeviceBytesWritten >> 20} MiB, WA {stats.WriteAmplification:F2}, " +
                             $"gc moved {stats.GcBytesMoved >> 20} MiB from {stats.GcSegmentsCleaned} segments in {stats.GcMs:F0} ms, free segments {stats.SegmentsFree}/{stats.SegmentsTotal}");
            Assert.True(stats.GcSegmentsCleaned > 0, "the cleaner never cleaned a segment");
            Assert.Equal(volumeBytes, stats.LiveBytes);
        }
        // Once hosts pause, the cleaner compacts: space in use (all but free segments, the head's
        // unwritten rest and the reserved next segment) falls to at most 1.2x the live data.
        await using (Pool pool = Pool.Open(new PoolOptions { Directory = dir.Path }))
        {
            long used = 0;
            for (int i = 0; i < 300; i++)
            {
                stats = pool.GetStats();
                used = stats.CapacityBytes - stats.FreeBytes;
                if (used <= stats.LiveBytes * 12 / 10) break;
                await Task.Delay(100);
            }
            output.WriteLine($"after idle compaction: used {used >> 20} MiB for {stats.LiveBytes >> 20} MiB live ({(double)used / stats.LiveBytes:F2}x)");
            Assert.True(used <= stats.LiveBytes * 12 / 10, $"used {used} bytes for {stats.LiveBytes} live");
        }
        await using (Pool pool = Pool.Open(new PoolOptions { Directory = dir.Path }))
        {
            Assert.True(pool.TryGetVolume("v", out Volume volume));
            await EngineTest.AssertContentAsync(volume, shadow, "after reopen");
        }
        await EngineTest.AssertCleanAsync(dir.Path, output);
    }

    [Fact]
    public async Task TrimmingEverythingGivesTheSpaceBackWithoutRestart()
    {
        int seed = EngineTest.Seed(output);
        var random = new Random(seed);
        using var dir = new TempPoolDir();
        await using (Pool pool = Pool.Open(EngineTest.Options(dir.Path, segments: 16)))
        {
            Volume volume = await pool.CreateVolumeAsync("v", 40L << 20, 512, CancellationToken.None);
            for (long offset = 0; offset < volume.SizeBytes; offset += 1 << 20)
                await EngineTest.WriteAsync(volume, offset, EngineTest.RandomBytes(random, 1 << 20));
            await volume.FlushAsync(CancellationToken.None);
            PoolStats full = pool.GetStats();
            long usedBefore = full.CapacityBytes - full.FreeBytes;
            await volume.TrimAsync(0, volume.SizeBytes, CancellationToken.None);
            PoolStats after = pool.GetStats();
            for (int i = 0; i < 200 && (after.CapacityBytes - after.FreeBytes) * 10 >= usedBefore; i++)
            {
                await pool.CheckpointAsync(CancellationToken.None);
                after = pool.GetStats();
            }
            long usedAfter = after.CapacityBytes - after.FreeBytes;
            output.WriteLine($"used before trim {usedBefore >> 20} MiB, after {usedAfter >> 20} MiB; physical {full.PhysicalBytes >> 20} -> {after.PhysicalBytes >> 20} MiB");
            Assert.True(after.PhysicalBytes * 20 < full.PhysicalBytes, $"physical bytes fell only from {full.PhysicalBytes} to {after.PhysicalBytes}");
            Assert.True(usedAfter * 10 < usedBefore, $"space in use fell only from {usedBefore} to {usedAfter} bytes");
            Assert.Equal(new byte[Chunk], await EngineTest.ReadAsync(volume, 12 * Chunk, Chunk));
        }
        await EngineTest.AssertCleanAsync(dir.Path, output);
    }

    [Fact]
    public async Task AFullPoolRefusesWritesKeepsReadingAndRecoversAfterTrim()
    {
        int seed = EngineTest.Seed(output);
        var random = new Random(seed);
        using var dir = new TempPoolDir();
        await using (Pool pool = Pool.Open(EngineTest.Options(dir.Path, segments: 8)))
        {
            // A thin volume larger than the pool.
            Volume volume = await pool.CreateVolumeAsync("v", 256L << 20, 512, CancellationToken.None);
            var written = new List<(long Offset, byte[] Data)>();
            NoSpaceException? full = null;
            for (long offset = 0; offset < volume.SizeBytes && full == null; offset += 256 << 10)
            {
                byte[] data = EngineTest.RandomBytes(random, 256 << 10);
                try
                {
                    await EngineTest.WriteAsync(volume, offset, data);
                    await volume.FlushAsync(CancellationToken.None);
                    written.Add((offset, data));
                }
                catch (NoSpaceException e)
                {
                    full = e;
                }
            }
            Assert.NotNull(full);
            output.WriteLine($"full after {written.Count * 256} KiB: {full!.Message}");
            foreach ((long offset, byte[] data) in written)
                Assert.Equal(data, await EngineTest.ReadAsync(volume, offset, data.Length));
            // Free half, and writing works again (the cleaner and checkpoints give the space back).
            for (int i = 0; i < written.Count / 2; i++)
                await volume.TrimAsync(written[i].Offset, written[i].Data.Length, CancellationToken.None);
            byte[] again = EngineTest.RandomBytes(random, 1 << 20);
            await EngineTest.WriteAsync(volume, 0, again);
            await volume.FlushAsync(CancellationToken.None);
            Assert.Equal(again, await EngineTest.ReadAsync(volume, 0, again.Length));
            for (int i = written.Count / 2; i < written.Count; i++)
                Assert.Equal(written[i].Data, await EngineTest.ReadAsync(volume, written[i].Offset, written[i].Data.Length));
        }
        await EngineTest.AssertCleanAsync(dir.Path, output);
    }

    /// <summary>
    /// Regression: a read looks up a chunk's location and then reads the device; the cleaner may
    /// move that chunk and checkpoints may hand its old segment back for reuse in between. The
    /// reuse gate must make such reads finish first, so readers never see a CRC error or wrong bytes.
    /// </summary>
    [Fact]
    public async Task ReadsNeverFailWhileTheCleanerMovesChunksAndSegmentsAreReused()
    {
        int seed = EngineTest.Seed(output);
        var random = new Random(seed);
        using var dir = new TempPoolDir();
        await using Pool pool = Pool.Open(EngineTest.Options(dir.Path, segments: 12, cachePages: 512) with { ReadCacheBytes = 0 });
        Volume still = await pool.CreateVolumeAsync("still", 8L << 20, 512, CancellationToken.None);
        Volume hot = await pool.CreateVolumeAsync("hot", 16L << 20, 512, CancellationToken.None);
        byte[] shadow = new byte[still.SizeBytes];
        for (long b = 0; b < still.SizeBytes / Chunk; b++) await Write(still, shadow, b, random);
        await still.FlushAsync(CancellationToken.None);
        using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(6));
        long reads = 0;
        Task[] readers = Enumerable.Range(0, 4).Select(r => Task.Run(async () =>
        {
            var rr = new Random(seed + r);
            byte[] buffer = new byte[16 * Chunk];
            while (!stop.IsCancellationRequested)
            {
                long block = rr.NextInt64(still.SizeBytes / Chunk - 16);
                await still.ReadAsync(block * Chunk, buffer, CancellationToken.None);
                Assert.True(buffer.AsSpan().SequenceEqual(shadow.AsSpan((int)(block * Chunk), buffer.Length)), $"wrong bytes at block {block}");
                Interlocked.Increment(ref reads);
            }
        })).ToArray();
        byte[] hotShadow = new byte[hot.SizeBytes];
        while (!stop.IsCancellationRequested)
        {
            await Write(hot, hotShadow, random.NextInt64(hot.SizeBytes / Chunk), random);
        }
        await Task.WhenAll(readers);
        PoolStats stats = pool.GetStats();
        output.WriteLine($"{reads} verified reads while the cleaner moved {stats.GcBytesMoved >> 20} MiB from {stats.GcSegmentsCleaned} segments");
        Assert.True(stats.GcSegmentsCleaned > 0, "the cleaner did not run, so the test proved nothing");
        await EngineTest.AssertContentAsync(hot, hotShadow, "hot volume");
    }

    private static async Task Write(Volume volume, byte[] shadow, long block, Random random)
    {
        byte[] data = EngineTest.RandomBytes(random, Chunk);
        data.CopyTo(shadow, block * Chunk);
        await EngineTest.WriteAsync(volume, block * Chunk, data);
    }
}
