// Volume lifecycle and pool-level behaviour. Invariants: create / resize / delete are journalled
// and persist across reopen; delete and shrink drop their references (unique chunks fall and
// refcounts stay exact); stats are consistent; one process opens a pool at a time (flock);
// O_DIRECT is required unless NoDirect is set, with a message that names --no-direct.
using System.Runtime.InteropServices;
using Target.Dedup;
using Xunit.Abstractions;
using static Target.Tests.Engine.EngineTest;

namespace Target.Tests.Engine;

public sealed class PoolVolumeTests(ITestOutputHelper output)
{
    private static readonly CancellationToken None = CancellationToken.None;

    [Fact]
    public async Task CreateListResizeDeletePersist()
    {
        using var dir = new TempPoolDir();
        PoolOptions options = Options(dir.Path);
        await using (Pool pool = Pool.Open(options))
        {
            Volume a = await pool.CreateVolumeAsync("alpha", 1 << 20, 512, None);
            Volume b = await pool.CreateVolumeAsync("beta", 2 << 20, 4096, None);
            Volume c = await pool.CreateVolumeAsync("gamma", 1 << 20, 512, None);
            await Assert.ThrowsAsync<AlreadyExistsException>(() => pool.CreateVolumeAsync("beta", 1 << 20, 512, None).AsTask());
            await Assert.ThrowsAsync<ArgumentException>(() => pool.CreateVolumeAsync("bad name", 1 << 20, 512, None).AsTask());
            await Assert.ThrowsAsync<ArgumentException>(() => pool.CreateVolumeAsync("odd", 1000, 512, None).AsTask());
            await Assert.ThrowsAsync<NotFoundException>(() => pool.DeleteVolumeAsync("nope", None).AsTask());
            for (long blk = 0; blk < 200; blk++)
            {
                await WriteAsync(a, blk * Chunk, Pattern(blk, 1));
                await WriteAsync(b, blk * Chunk, Pattern(blk + 1000, 1));
                await WriteAsync(c, blk * Chunk, Pattern(blk, 1)); // same as alpha: shared
            }
            await a.FlushAsync(None);
            Assert.Equal(400, pool.GetStats().UniqueChunks);

            await pool.ResizeVolumeAsync("alpha", 4 << 20, None);
            Assert.Equal(4 << 20, a.SizeBytes);
            await WriteAsync(a, (4 << 20) - Chunk, Pattern(9999, 1));
            await pool.ResizeVolumeAsync("beta", 100 * Chunk, None); // shrink drops 100 unique chunks
            Assert.Equal(100 * Chunk, b.SizeBytes);
            await Assert.ThrowsAsync<OutOfRangeException>(() => b.ReadAsync(100 * Chunk, new byte[1], None).AsTask());
            await pool.DeleteVolumeAsync("gamma", None); // alpha still references its chunks
            await Assert.ThrowsAsync<NotFoundException>(() => c.ReadAsync(0, new byte[1], None).AsTask());
            await a.FlushAsync(None);
            Assert.Equal(200 + 100 + 1, pool.GetStats().UniqueChunks);
            Assert.Equal(new[] { "alpha", "beta" }, pool.Volumes.Select(v => v.Name));
        }
        await AssertCleanAsync(dir.Path, output);
        await using (Pool pool = Pool.Open(options))
        {
            Assert.Equal(new[] { "alpha", "beta" }, pool.Volumes.Select(v => v.Name));
            Assert.False(pool.TryGetVolume("gamma", out _));
            pool.TryGetVolume("alpha", out Volume a);
            pool.TryGetVolume("beta", out Volume b);
            Assert.Equal((4L << 20, 512), (a.SizeBytes, a.LogicalBlockSize));
            Assert.Equal((100L * Chunk, 4096), (b.SizeBytes, b.LogicalBlockSize));
            Assert.Equal(Pattern(9999, 1), await ReadAsync(a, (4 << 20) - Chunk, Chunk));
            Assert.Equal(Pattern(1099, 1), await ReadAsync(b, 99 * Chunk, Chunk));
            // Growing again shows holes beyond the old end, not the dropped data.
            await pool.ResizeVolumeAsync("beta", 2 << 20, None);
            Assert.Equal(new byte[Chunk], await ReadAsync(b, 150 * Chunk, Chunk));
            await pool.DeleteVolumeAsync("alpha", None);
            await pool.DeleteVolumeAsync("beta", None);
            Assert.Equal(0, pool.GetStats().UniqueChunks);
            // A name can be reused after delete; the new volume starts empty.
            Volume again = await pool.CreateVolumeAsync("alpha", 1 << 20, 512, None);
            Assert.Equal(new byte[Chunk], await ReadAsync(again, 0, Chunk));
        }
        await using (Pool pool = Pool.Open(options))
        {
            Assert.Equal(new[] { "alpha" }, pool.Volumes.Select(v => v.Name));
            Assert.Equal(0, pool.GetStats().UniqueChunks);
        }
        await AssertCleanAsync(dir.Path, output);
    }

    [Fact]
    public async Task DeleteWithDirtyPagesInTheCacheDropsThem()
    {
        using var dir = new TempPoolDir();
        PoolOptions options = Options(dir.Path);
        await using (Pool pool = Pool.Open(options))
        {
            Volume a = await pool.CreateVolumeAsync("a", 1 << 20, 512, None);
            for (long blk = 0; blk < 50; blk++) await WriteAsync(a, blk * Chunk, Pattern(blk, 1));
            await pool.DeleteVolumeAsync("a", None);
            await pool.ResizeVolumeAsync("a", 2 << 20, None).AsTask().ContinueWith(t => Assert.IsType<NotFoundException>(t.Exception!.InnerException));
            Volume b = await pool.CreateVolumeAsync("b", 1 << 20, 512, None);
            await WriteAsync(b, 0, Pattern(0, 2));
            await b.FlushAsync(None);
            Assert.Equal(1, pool.GetStats().UniqueChunks);
        }
        await AssertCleanAsync(dir.Path, output);
    }

    [Fact]
    public async Task StatsAreConsistent()
    {
        using var dir = new TempPoolDir();
        // A cache the 1001 pages below stay under the destage watermark in (a quarter of it plus half
        // a group), no destage by age, and enough segments that the free ones are not under twice
        // the cleaner's target (4), which drains the cache at once (with 8 segments the destager
        // drained it at its first tick, and the test failed whenever the writes took longer than that).
        await using Pool pool = Pool.Open(Options(dir.Path, segments: 16, cachePages: 4096) with { DirtyAgeMaxMs = 600_000 });
        PoolStats empty = pool.GetStats();
        Assert.Equal(16L * SegmentBytes, empty.CapacityBytes);
        Assert.Equal(16, empty.SegmentsTotal);
        Assert.True(empty.FreeBytes > 0 && empty.FreeBytes <= empty.CapacityBytes);
        Assert.Equal(0, empty.UniqueChunks);
        Assert.Equal(1.0, empty.DedupRatio);
        Assert.Equal("xxh3-128", empty.Fingerprint);
        Assert.Equal(pool.Uuid, empty.Uuid);
        Volume v = await pool.CreateVolumeAsync("v", 8L << 20, 512, None);
        for (long blk = 0; blk < 1000; blk++) await WriteAsync(v, blk * Chunk, Pattern(blk % 500, 1));
        await WriteAsync(v, 1500L * Chunk, new byte[Chunk]);
        await Task.Delay(300); // a few destager ticks: the pages must still be dirty after them
        VolumeStats dirty = v.GetStats();
        Assert.True(dirty.DirtyBytes > 0);
        await v.FlushAsync(None);
        PoolStats s = pool.GetStats();
        output.WriteLine(s.ToString());
        Assert.Equal(500, s.UniqueChunks);
        Assert.Equal(500L * Chunk, s.PhysicalBytes);
        Assert.Equal(1000L * Chunk, s.LogicalBytes);
        Assert.Equal(1, s.ZeroChunks);
        Assert.Equal(2.0, s.DedupRatio, 6);
        Assert.True(s.FreeBytes < empty.FreeBytes - 500L * Chunk);
        Assert.True(s.JournalBytes > 0);
        Assert.Equal(s.RamBytesIndex + s.RamBytesChunkTable, s.RamBytesPerUniqueChunk * 500, 3);
        Assert.Equal(s.RamBytesMaps, s.RamBytesPerMappedBlock * 1001, 3);
        Assert.True(s.RamBytesMaps >= 1001 * 4);
        VolumeStats vs = Assert.Single(s.Volumes);
        Assert.Equal(("v", 8L << 20, 512, "1way-wb", 1000L * Chunk, 1L, 0L), (vs.Name, vs.SizeBytes, vs.LogicalBlockSize, vs.WriteMode, vs.MappedBytes, vs.ZeroChunks, vs.DirtyBytes));
        Assert.NotNull(s.LastRecoveryTime);
    }

    [Fact]
    public async Task TheReadCacheIsNoLargerThanTheLogCanHoldChunks()
    {
        // `target serve` sizes the read cache from the machine's memory (an eighth): next to a small
        // pool that would reserve room for more chunks than the pool can ever hold.
        using var dir = new TempPoolDir();
        await using (Pool pool = Pool.Open(Options(dir.Path, segments: 8) with { ReadCacheBytes = 1L << 30 }))
            Assert.Equal(8L * SegmentBytes, pool.GetStats().ReadCacheBytes);
        await using (Pool pool = Pool.Open(Options(dir.Path, segments: 8) with { ReadCacheBytes = 4L * SegmentBytes }))
            Assert.Equal(4L * SegmentBytes, pool.GetStats().ReadCacheBytes);
    }

    [Fact]
    public async Task ASecondOpenOfTheSamePoolFails()
    {
        using var dir = new TempPoolDir();
        await using Pool pool = Pool.Open(Options(dir.Path));
        IOException e = Assert.Throws<IOException>(() => Pool.Open(Options(dir.Path)));
        Assert.Contains("open in another process", e.Message);
        IOException check = await Assert.ThrowsAsync<IOException>(() => PoolChecker.CheckAsync(dir.Path, false, null, None));
        Assert.Contains("open in another process", check.Message);
    }

    [Fact]
    public async Task OpeningAMissingPoolWithoutASizeFails()
    {
        using var dir = new TempPoolDir();
        Assert.Throws<NotFoundException>(() => Pool.Open(new PoolOptions { Directory = dir.Path }));
        await Assert.ThrowsAsync<NotFoundException>(() => PoolChecker.CheckAsync(dir.Path, false, null, None));
        Assert.Throws<ArgumentException>(() => Pool.Open(new PoolOptions { Directory = dir.Path, CreateSizeBytes = PoolBytes(3) }));
    }

    [Fact]
    public async Task OnTmpfsODirectIsNeededOrNoDirectWorks()
    {
        if (!Directory.Exists("/dev/shm")) return;
        using var dir = new TempPoolDir("/dev/shm");
        bool tmpfsHasODirect = ProbeODirect(Path.Combine(dir.Path, "probe"));
        output.WriteLine($"O_DIRECT on /dev/shm: {tmpfsHasODirect} (Linux {Environment.OSVersion.Version})");
        if (!tmpfsHasODirect)
        {
            IOException e = Assert.Throws<IOException>(() => Pool.Open(Options(dir.Path, segments: 4)));
            Assert.Contains("--no-direct", e.Message);
        }
        else
        {
            // tmpfs takes O_DIRECT since Linux 6.6: the pool simply opens.
            string path = Path.Combine(dir.Path, "direct");
            try
            {
                Pool direct = Pool.Open(Options(path, segments: 4));
                await direct.DisposeAsync();
            }
            finally
            {
                if (Directory.Exists(path)) Directory.Delete(path, true);
            }
        }
        PoolOptions options = Options(dir.Path, segments: 4) with { NoDirect = true };
        await using (Pool pool = Pool.Open(options))
        {
            Volume v = await pool.CreateVolumeAsync("v", 1 << 20, 512, None);
            await WriteAsync(v, 0, Pattern(0, 1));
        }
        await using (Pool pool = Pool.Open(options))
        {
            pool.TryGetVolume("v", out Volume v);
            Assert.Equal(Pattern(0, 1), await ReadAsync(v, 0, Chunk));
        }
        PoolCheckReport report = await PoolChecker.CheckAsync(dir.Path, noDirect: true, null, None);
        Assert.True(report.Clean);
    }

    private const int O_RDWR = 2, O_CREAT = 0x40, O_DIRECT = 0x4000;

    [DllImport("libc", SetLastError = true)]
    private static extern int open(string path, int flags, int mode);

    [DllImport("libc")]
    private static extern int close(int fd);

    private static bool ProbeODirect(string path)
    {
        int fd = open(path, O_RDWR | O_CREAT | O_DIRECT, 420);
        if (fd >= 0) close(fd);
        File.Delete(path);
        return fd >= 0;
    }
}
