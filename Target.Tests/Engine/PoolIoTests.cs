// Host I/O through the public API against a byte-for-byte shadow. Invariants: a read returns
// exactly what was last written there (aligned, unaligned, sub-4K read-modify-write, across
// chunk boundaries), from the cache or from the pool; trimmed and zeroed ranges read as zeros;
// GetAllocation reports data / zero / hole extents, merged; everything persists across a clean
// close and reopen; in wt mode, with FUA, or after FLUSH a write survives an abandoned pool;
// the offline checker is clean afterwards.
using Target.Dedup;
using Xunit.Abstractions;
using static Target.Tests.Engine.EngineTest;

namespace Target.Tests.Engine;

public sealed class PoolIoTests(ITestOutputHelper output)
{
    private static readonly CancellationToken None = CancellationToken.None;

    [Theory]
    [InlineData(WriteMode.OneWayWriteBack, 1024)]
    [InlineData(WriteMode.OneWayWriteBack, 64)]
    [InlineData(WriteMode.WriteThrough, 64)]
    public async Task RandomWritesOfEveryShapeReadBackAndPersist(WriteMode mode, int cachePages)
    {
        int seed = Seed(output);
        var random = new Random(seed);
        using var dir = new TempPoolDir();
        const long size = 8L << 20;
        byte[] shadow = new byte[size];
        PoolOptions options = Options(dir.Path, mode: mode, cachePages: cachePages);
        await using (Pool pool = Pool.Open(options))
        {
            Volume v = await pool.CreateVolumeAsync("v", size, 512, None);
            for (int op = 0; op < 600; op++)
            {
                long offset;
                int length;
                switch (random.Next(5))
                {
                    case 0: offset = random.NextInt64(size / Chunk) * Chunk; length = Chunk * random.Next(1, 9); break; // aligned
                    case 1: offset = random.NextInt64(size / 512) * 512; length = 512 * random.Next(1, 20); break; // sector
                    case 2: offset = random.NextInt64(size); length = random.Next(1, 3 * Chunk); break; // anything
                    case 3: offset = random.NextInt64(1, size / Chunk) * Chunk - random.Next(1, 100); length = random.Next(101, 300); break; // straddles a boundary
                    default: offset = random.NextInt64(size / Chunk) * Chunk + 4000; length = 200; break;
                }
                length = (int)Math.Min(length, size - offset);
                if (length <= 0) continue;
                byte[] data = random.Next(8) == 0 ? new byte[length] : RandomBytes(random, length);
                await v.WriteAsync(offset, data, random.Next(10) == 0 ? WriteFlags.Fua : WriteFlags.None, None);
                data.CopyTo(shadow, offset);
                if (random.Next(30) == 0) await v.FlushAsync(None);
                if (random.Next(5) == 0)
                {
                    long at = random.NextInt64(size - 9000);
                    int n = random.Next(1, 9000);
                    byte[] got = await ReadAsync(v, at, n);
                    Assert.True(got.AsSpan().SequenceEqual(shadow.AsSpan((int)at, n)), $"seed {seed} op {op}: read {at}+{n} differs");
                }
            }
            await AssertContentAsync(v, shadow, $"seed {seed} before flush");
            await v.FlushAsync(None);
            await AssertContentAsync(v, shadow, $"seed {seed} after flush");
        }
        await AssertCleanAsync(dir.Path, output);
        await using (Pool pool = Pool.Open(options))
        {
            Assert.True(pool.TryGetVolume("v", out Volume v));
            Assert.Equal(512, v.LogicalBlockSize);
            await AssertContentAsync(v, shadow, $"seed {seed} after reopen");
        }
    }

    [Fact]
    public async Task SubChunkWriteOverStoredDataKeepsTheRestOfTheChunk()
    {
        using var dir = new TempPoolDir();
        PoolOptions options = Options(dir.Path);
        byte[] full = Pattern(3, 1);
        await using (Pool pool = Pool.Open(options))
        {
            Volume v = await pool.CreateVolumeAsync("v", 1 << 20, 512, None);
            await WriteAsync(v, 3 * Chunk, full);
            await pool.CheckpointAsync(None); // destaged: the chunk is in the pool, not the cache
        }
        await using (Pool pool = Pool.Open(options))
        {
            pool.TryGetVolume("v", out Volume v);
            byte[] patch = Pattern(99, 9, 512);
            await WriteAsync(v, 3 * Chunk + 1024, patch);
            patch.CopyTo(full, 1024);
            Assert.Equal(full, await ReadAsync(v, 3 * Chunk, Chunk));
            await v.FlushAsync(None);
            Assert.Equal(full, await ReadAsync(v, 3 * Chunk, Chunk));
        }
        await using (Pool pool = Pool.Open(options))
        {
            pool.TryGetVolume("v", out Volume v);
            Assert.Equal(full, await ReadAsync(v, 3 * Chunk, Chunk));
        }
    }

    [Theory]
    [InlineData(WriteMode.WriteThrough, WriteFlags.None, false)]
    [InlineData(WriteMode.OneWayWriteBack, WriteFlags.Fua, false)]
    [InlineData(WriteMode.OneWayWriteBack, WriteFlags.None, true)]
    public async Task AcknowledgedDurableWritesSurviveAnAbandonedPool(WriteMode mode, WriteFlags flags, bool flush)
    {
        int seed = Seed(output);
        var random = new Random(seed);
        using var dir = new TempPoolDir();
        PoolOptions options = Options(dir.Path, mode: mode);
        const long size = 4L << 20;
        byte[] shadow = new byte[size];
        Pool pool = Pool.Open(options);
        Volume v = await pool.CreateVolumeAsync("v", size, 4096, None);
        for (int i = 0; i < 50; i++)
        {
            long offset = random.NextInt64(size - 3 * Chunk);
            byte[] data = RandomBytes(random, random.Next(1, 3 * Chunk));
            await v.WriteAsync(offset, data, flags, None);
            data.CopyTo(shadow, offset);
        }
        if (flush) await v.FlushAsync(None);
        Assert.Equal(mode == WriteMode.OneWayWriteBack, (v.Capabilities & VolumeCapabilities.VolatileWriteCache) != 0);
        await pool.AbandonAsync();
        await using (Pool again = Pool.Open(options))
        {
            Assert.True(again.TryGetVolume("v", out Volume w));
            await AssertContentAsync(w, shadow, $"seed {seed}");
        }
        await AssertCleanAsync(dir.Path, output);
    }

    [Fact]
    public async Task TrimAndWriteZeroesReadAsZerosAndShowInTheAllocationMap()
    {
        using var dir = new TempPoolDir();
        PoolOptions options = Options(dir.Path);
        const long size = 64 * Chunk;
        byte[] shadow = new byte[size];
        var expected = new List<Extent>();
        await using (Pool pool = Pool.Open(options))
        {
            Volume v = await pool.CreateVolumeAsync("v", size, 512, None);
            for (long b = 0; b < 40; b++)
            {
                byte[] data = Pattern(b, 1);
                await WriteAsync(v, b * Chunk, data);
                data.CopyTo(shadow, b * Chunk);
            }
            await v.FlushAsync(None);
            await v.TrimAsync(2 * Chunk, 3 * Chunk, None); // blocks 2..4 -> hole
            Array.Clear(shadow, 2 * Chunk, 3 * Chunk);
            await v.WriteZeroesAsync(8 * Chunk, 2 * Chunk, ZeroFlags.NoHole, None); // 8..9 -> zero
            Array.Clear(shadow, 8 * Chunk, 2 * Chunk);
            await v.WriteZeroesAsync(12 * Chunk, Chunk, ZeroFlags.None, None); // 12 -> hole
            Array.Clear(shadow, 12 * Chunk, Chunk);
            await v.TrimAsync(20 * Chunk + 100, 2 * Chunk, None); // partial 20, whole 21, partial 22
            Array.Clear(shadow, 20 * Chunk + 100, 2 * Chunk);
            await v.WriteZeroesAsync(30 * Chunk + 7, 33, ZeroFlags.Fua, None); // inside one chunk
            Array.Clear(shadow, 30 * Chunk + 7, 33);
            await WriteAsync(v, 50 * Chunk, new byte[Chunk]); // a written zero chunk: stored as nothing
            await AssertContentAsync(v, shadow, "before flush");
            await v.FlushAsync(None);
            await AssertContentAsync(v, shadow, "after flush");

            ExtentList extents = await v.GetAllocationAsync(0, size, None);
            output.WriteLine(string.Join("\n", extents.Items));
            ExtentKind KindOf(long block) => block switch
            {
                >= 2 and <= 4 => ExtentKind.Hole,
                8 or 9 => ExtentKind.Zero,
                12 or 21 => ExtentKind.Hole,
                50 => ExtentKind.Zero,
                < 40 => ExtentKind.Data,
                _ => ExtentKind.Hole,
            };
            var model = new ExtentList();
            for (long b = 0; b < 64; b++) model.Add(b * Chunk, Chunk, KindOf(b));
            Assert.Equal(model.Items, extents.Items);
            for (int i = 1; i < extents.Count; i++) Assert.NotEqual(extents[i - 1].Kind, extents[i].Kind);

            ExtentList middle = await v.GetAllocationAsync(3 * Chunk + 5, 2 * Chunk, None);
            Assert.Equal(new[] { new Extent(3 * Chunk + 5, 2 * Chunk - 5, ExtentKind.Hole), new Extent(5 * Chunk, 5, ExtentKind.Data) }, middle.Items);
            PoolStats stats = pool.GetStats();
            Assert.Equal(3, stats.ZeroChunks);
            // 40 written; 2..4, 8, 9, 12 and 21 dropped; 20, 22 and 30 replaced by their zero-patched versions.
            Assert.Equal(40 - 3 - 2 - 1 - 1, stats.UniqueChunks);
        }
        await using (Pool pool = Pool.Open(options))
        {
            pool.TryGetVolume("v", out Volume v);
            await AssertContentAsync(v, shadow, "after reopen");
        }
        await AssertCleanAsync(dir.Path, output);
    }

    [Fact]
    public async Task OutOfRangeRequestsAreRefused()
    {
        using var dir = new TempPoolDir();
        await using Pool pool = Pool.Open(Options(dir.Path));
        Volume v = await pool.CreateVolumeAsync("v", 16 * Chunk, 512, None);
        await Assert.ThrowsAsync<OutOfRangeException>(() => v.WriteAsync(16 * Chunk - 1, new byte[2], WriteFlags.None, None).AsTask());
        await Assert.ThrowsAsync<OutOfRangeException>(() => v.ReadAsync(-1, new byte[2], None).AsTask());
        await Assert.ThrowsAsync<OutOfRangeException>(() => v.TrimAsync(0, 17 * Chunk, None).AsTask());
        await Assert.ThrowsAsync<OutOfRangeException>(() => v.GetAllocationAsync(long.MaxValue - 5, 10, None).AsTask());
    }

    /// <summary>
    /// Many small reads in flight at once (more than the io_uring path has slots, so some fall
    /// back to the read threads), with the read cache off so every one reaches the device: each
    /// returns exactly the bytes written there, aligned or not, one chunk or several, adjacent in
    /// the log or not; holes read as zeros.
    /// </summary>
    [Fact]
    public async Task ConcurrentSmallDeviceReadsReturnTheirOwnBytes()
    {
        int seed = Seed(output);
        var random = new Random(seed);
        using var dir = new TempPoolDir();
        const long size = 16L << 20;
        byte[] shadow = new byte[size];
        PoolOptions options = Options(dir.Path) with { ReadCacheBytes = 0 };
        await using Pool pool = Pool.Open(options);
        Volume v = await pool.CreateVolumeAsync("v", size, 512, None);
        // Written in shuffled order so neighbouring blocks are mostly not neighbours in the log;
        // every eighth block stays a hole.
        long[] blocks = Enumerable.Range(0, (int)(size / Chunk)).Select(b => (long)b).Where(b => b % 8 != 3).OrderBy(_ => random.Next()).ToArray();
        foreach (long b in blocks)
        {
            byte[] data = RandomBytes(random, Chunk);
            await v.WriteAsync(b * Chunk, data, WriteFlags.None, None);
            data.CopyTo(shadow, b * Chunk);
        }
        await v.FlushAsync(None);
        output.WriteLine($"io_uring reads: {pool.ReadsUseIoUring}");

        for (int round = 0; round < 20; round++)
        {
            var reads = new (long Offset, byte[] Buffer, Task Task)[300];
            for (int i = 0; i < reads.Length; i++)
            {
                int length = random.Next(4) switch
                {
                    0 => Chunk,
                    1 => random.Next(1, 17) * Chunk,
                    2 => random.Next(1, 64 << 10),
                    _ => random.Next(1, 200 << 10),
                };
                long offset = random.Next(3) == 0 ? random.NextInt64(size / Chunk) * Chunk : random.NextInt64(size);
                length = (int)Math.Min(length, size - offset);
                if (length == 0) length = 1;
                offset = Math.Min(offset, size - length);
                byte[] buffer = new byte[length];
                reads[i] = (offset, buffer, v.ReadAsync(offset, buffer, None).AsTask());
            }
            await Task.WhenAll(reads.Select(r => r.Task));
            foreach ((long offset, byte[] buffer, Task _) in reads)
                Assert.True(buffer.AsSpan().SequenceEqual(shadow.AsSpan((int)offset, buffer.Length)), $"seed {seed} round {round}: read {offset}+{buffer.Length} differs");
        }
    }
}
