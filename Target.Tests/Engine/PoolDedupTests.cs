// Dedup, compare-and-write and copy by reference through the public API. Invariants: equal
// chunks are stored once however and whenever they are written (same batch, later batch,
// after reopen, other volume); zero chunks are never stored; compare-and-write writes all or
// nothing and is atomic against concurrent compare-and-writes; a copy by reference shares
// chunks (no new unique chunk) and is independent of later writes to its source; refcounts
// stay equal to references (the checker proves it).
using Target.Dedup;
using Target.Dedup.Hashing;
using Xunit.Abstractions;
using static Target.Tests.Engine.EngineTest;

namespace Target.Tests.Engine;

public sealed class PoolDedupTests(ITestOutputHelper output)
{
    private static readonly CancellationToken None = CancellationToken.None;

    [Fact]
    public async Task EqualChunksAreStoredOnce()
    {
        using var dir = new TempPoolDir();
        PoolOptions options = Options(dir.Path);
        byte[] a = Pattern(1, 1), b = Pattern(2, 1), c = Pattern(3, 1);
        await using (Pool pool = Pool.Open(options))
        {
            Volume v = await pool.CreateVolumeAsync("v", 1 << 20, 512, None);
            Volume w = await pool.CreateVolumeAsync("w", 1 << 20, 512, None);
            // Same batch: a at 0, 5, 9; b at 1; zeros at 2 and 3.
            foreach (long block in new long[] { 0, 5, 9 }) await WriteAsync(v, block * Chunk, a);
            await WriteAsync(v, 1 * Chunk, b);
            await WriteAsync(v, 2 * Chunk, new byte[2 * Chunk]);
            await v.FlushAsync(None);
            PoolStats s1 = pool.GetStats();
            Assert.Equal(2, s1.UniqueChunks);
            Assert.Equal(2, s1.ZeroChunks);
            Assert.Equal(2L * Chunk, s1.PhysicalBytes);
            Assert.Equal(4L * Chunk, s1.LogicalBytes);
            Assert.Equal(2.0, s1.DedupRatio, 6);
            // The flush went through at least one destage group (the turn's own total is added when
            // the turn ends, which may be just after the flush returned).
            Assert.True(s1.DestageGroups >= 1, $"destage groups {s1.DestageGroups}");
            Assert.True(s1.DestageBuildMs > 0, $"destage build {s1.DestageBuildMs} ms");
            // Later batch and another volume.
            await WriteAsync(w, 7 * Chunk, a);
            await WriteAsync(w, 8 * Chunk, b);
            await WriteAsync(w, 9 * Chunk, c);
            await w.FlushAsync(None);
            Assert.Equal(3, pool.GetStats().UniqueChunks);
        }
        await using (Pool pool = Pool.Open(options))
        {
            // After reopen (index rebuilt from the checkpoint).
            pool.TryGetVolume("v", out Volume v);
            await WriteAsync(v, 20 * Chunk, c);
            await WriteAsync(v, 21 * Chunk, a);
            await v.FlushAsync(None);
            PoolStats s = pool.GetStats();
            Assert.Equal(3, s.UniqueChunks);
            Assert.Equal(9.0 / 3, s.DedupRatio, 6); // 9 data blocks: v 0,1,5,9,20,21; w 7,8,9
            Assert.Equal(a, await ReadAsync(v, 21 * Chunk, Chunk));
            Assert.Equal(c, await ReadAsync(v, 20 * Chunk, Chunk));
            Assert.Equal(new byte[Chunk], await ReadAsync(v, 2 * Chunk, Chunk));
            // Overwriting every reference of b frees it.
            await WriteAsync(v, 1 * Chunk, a);
            pool.TryGetVolume("w", out Volume w);
            await w.TrimAsync(8 * Chunk, Chunk, None);
            await v.FlushAsync(None);
            Assert.Equal(2, pool.GetStats().UniqueChunks);
        }
        await AssertCleanAsync(dir.Path, output);
    }

    [Fact]
    public async Task AChunkWhoseLastReferenceAnEarlierBatchOverwritesIsNotSharedByALaterBatch()
    {
        // Block 0 holds A (chunk X, one reference). Then, in one destage group: block 0 is
        // overwritten (its batch drops X's last reference) and, a batch later, block 1 is written
        // with A again. Both batches are built before either is applied, so the index still lists
        // X when block 1 is deduplicated. Sharing X there would map block 1 to a freed id, which
        // the next new chunk takes: block 1 would read someone else's data.
        using var dir = new TempPoolDir();
        await OverwriteTheOnlyHolderThenWriteItsBytesElsewhereAsync(dir.Path, Options(dir.Path), Pattern(1000, 1),
            fillBefore: (0, 0), fillBetween: (10, 300), target: 1);
    }

    [Fact]
    public async Task APartialWriteOverAWholeChunkWriteIsFingerprintedAsMerged()
    {
        // Whole-chunk writes hand the destager their fingerprint and CRC; a later partial write
        // into the same cached page must drop them (block 0), and a whole chunk of zeros is
        // stored as zeros (block 1). The pool check recomputes every stored chunk's fingerprint.
        using var dir = new TempPoolDir();
        PoolOptions options = Options(dir.Path);
        byte[] merged = Pattern(5, 4);
        byte[] patch = Enumerable.Repeat((byte)0xEE, 512).ToArray();
        patch.CopyTo(merged, 1024);
        await using (Pool pool = Pool.Open(options))
        {
            Volume v = await pool.CreateVolumeAsync("v", 64 << 20, 512, None);
            await WriteAsync(v, 0, Pattern(5, 4));
            await WriteAsync(v, 1024, patch);
            await WriteAsync(v, Chunk, new byte[Chunk]);
            await v.FlushAsync(None);
            Assert.Equal(merged, await ReadAsync(v, 0, Chunk));
        }
        await using (Pool pool = Pool.Open(options))
        {
            pool.TryGetVolume("v", out Volume v);
            Assert.Equal(merged, await ReadAsync(v, 0, Chunk));
            Assert.Equal(new byte[Chunk], await ReadAsync(v, Chunk, Chunk));
        }
        await AssertCleanAsync(dir.Path, output);
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    [InlineData(true, true)]
    public async Task APageWrittenWhileItsBatchIsDecidedIsStoredAsWritten(bool aDuplicate, bool partial)
    {
        // The destager decides a batch straight from the cache pages and the device writes the new
        // chunks from them. A host write into block 0 (A, stored elsewhere already or not) after
        // its batch was decided, with B or (partial) B's first 512 bytes, must not change the
        // page in the batch: it goes to a new page that starts as a copy of A (copy-on-write) and
        // is destaged after the batch lands. The pool check recomputes every stored chunk's fingerprint.
        using var dir = new TempPoolDir();
        byte[] a = Pattern(77, 3), b = Pattern(78, 3);
        byte[] written = partial ? b[..512] : b;
        byte[] expected = partial ? [.. b[..512], .. a[512..]] : b;
        Volume? target = null;
        int hooked = 0;
        PoolOptions options = Options(dir.Path, cachePages: 4096) with
        {
            DirtyAgeMaxMs = 600_000,
            AfterBatchDecidedFromPages = () =>
            {
                if (target != null && Interlocked.Exchange(ref hooked, 1) == 0)
                    WriteAsync(target, 0, written).GetAwaiter().GetResult();
            },
        };
        await using (Pool pool = Pool.Open(options))
        {
            Volume v = await pool.CreateVolumeAsync("v", 64 << 20, 512, None);
            if (aDuplicate)
            {
                await WriteAsync(v, 1000 * Chunk, a);
                await v.FlushAsync(None);
            }
            await WriteAsync(v, 0, a);
            for (long block = 1; block < 300; block++) await WriteAsync(v, block * Chunk, Pattern(block, 3));
            target = v;
            await v.FlushAsync(None);
            Assert.Equal(1, hooked);
            Assert.Equal(expected, await ReadAsync(v, 0, Chunk));
        }
        await using (Pool pool = Pool.Open(options with { AfterBatchDecidedFromPages = null }))
        {
            pool.TryGetVolume("v", out Volume v);
            Assert.Equal(expected, await ReadAsync(v, 0, Chunk));
            if (aDuplicate) Assert.Equal(a, await ReadAsync(v, 1000 * Chunk, Chunk));
        }
        await AssertCleanAsync(dir.Path, output);
    }

    [Fact]
    public async Task ABlockRewrittenWhileItsBatchIsInFlightWaitsForThatBatchToLand()
    {
        // Block 0 holds A (new chunk Y) in batch 1. Written with B while batch 1 is in flight, it
        // gets a new page; that page must not go into a batch before batch 1 lands: its Map record
        // drops what block 0 maps to when it applies (Y), and only a batch built after batch 1
        // applied counts that drop as pending. Else a third batch writing A elsewhere shares Y
        // through the in-flight table, and applying the second batch frees Y under it.
        using var dir = new TempPoolDir();
        byte[] a = Pattern(91, 1), b = Pattern(92, 1);
        Volume? target = null;
        int decided = 0;
        PoolOptions options = Options(dir.Path, cachePages: 4096) with
        {
            DirtyAgeMaxMs = 600_000,
            AfterBatchDecidedFromPages = () =>
            {
                if (target == null) return;
                int n = Interlocked.Increment(ref decided);
                if (n == 1) WriteAsync(target, 0, b).GetAwaiter().GetResult();
                else if (n == 2) WriteAsync(target, 1000 * Chunk, a).GetAwaiter().GetResult();
            },
        };
        await using (Pool pool = Pool.Open(options))
        {
            Volume v = await pool.CreateVolumeAsync("v", 64 << 20, 512, None);
            await WriteAsync(v, 0, a);
            target = v;
            await v.FlushAsync(None);
            await v.FlushAsync(None);
            await v.FlushAsync(None);
            Assert.True(decided >= 3, $"{decided} batches decided");
            Assert.Equal(b, await ReadAsync(v, 0, Chunk));
            Assert.Equal(a, await ReadAsync(v, 1000 * Chunk, Chunk));
        }
        await AssertCleanAsync(dir.Path, output);
        await using (Pool pool = Pool.Open(options with { AfterBatchDecidedFromPages = null }))
        {
            pool.TryGetVolume("v", out Volume v);
            Assert.Equal(b, await ReadAsync(v, 0, Chunk));
            Assert.Equal(a, await ReadAsync(v, 1000 * Chunk, Chunk));
        }
    }

    [Fact]
    public async Task AChunkNewInAnEarlierTurnIsNotSharedWhileABatchAheadDropsIt()
    {
        // One destage turn of two groups: a full group of pages fills the first, and block 0 with A
        // (new chunk X) is the second group alone. In the next turn, block 0 is overwritten (the
        // first batch drops X's last reference) and, a batch later, block 12000 is written with A.
        // The index lists X, but its pending drop rules it out; the earlier turn's table of chunks
        // new in flight must not offer it either, or block 12000 maps a freed id. The cache holds
        // the first group without reaching the destage watermark (a quarter of it plus half a group).
        using var dir = new TempPoolDir();
        int groupPages = Pool.MaxGroupBatches * Pool.MaxBatchPages;
        PoolOptions options = Options(dir.Path, segments: 64, cachePages: 4 * groupPages) with { DirtyAgeMaxMs = 600_000 };
        await OverwriteTheOnlyHolderThenWriteItsBytesElsewhereAsync(dir.Path, options, Pattern(1000, 9), // no other block holds these bytes
            fillBefore: (10, groupPages), fillBetween: (10000, Pool.MaxBatchPages + 150), target: 12000);
    }

    /// <summary>
    /// Block 0 gets <paramref name="a"/> (after <paramref name="fillBefore"/>'s unique blocks) and a
    /// flush, so it is A's only holder; then block 0 is overwritten, <paramref name="fillBetween"/>'s
    /// unique blocks put a batch boundary in between, and block <paramref name="target"/> gets A.
    /// Block target must read A after a flush, after 600 new chunks took the freed ids first, and
    /// after reopening; block 0 its new bytes; the pool checks clean.
    /// </summary>
    private async Task OverwriteTheOnlyHolderThenWriteItsBytesElsewhereAsync(string directory, PoolOptions options, byte[] a,
        (long First, int Count) fillBefore, (long First, int Count) fillBetween, long target)
    {
        await using (Pool pool = Pool.Open(options))
        {
            Volume v = await pool.CreateVolumeAsync("v", 64 << 20, 512, None);
            for (long block = fillBefore.First; block < fillBefore.First + fillBefore.Count; block++) await WriteAsync(v, block * Chunk, Pattern(block, 1));
            await WriteAsync(v, 0, a);
            await v.FlushAsync(None);
            await WriteAsync(v, 0, Pattern(0, 2));
            for (long block = fillBetween.First; block < fillBetween.First + fillBetween.Count; block++) await WriteAsync(v, block * Chunk, Pattern(block, 1));
            await WriteAsync(v, target * Chunk, a);
            await v.FlushAsync(None);
            Assert.Equal(a, await ReadAsync(v, target * Chunk, Chunk));
            // New chunks take freed ids first: block target must keep reading A.
            for (long block = 6000; block < 6000 + 600; block++) await WriteAsync(v, block * Chunk, Pattern(block, 1));
            await v.FlushAsync(None);
            Assert.Equal(a, await ReadAsync(v, target * Chunk, Chunk));
            Assert.Equal(Pattern(0, 2), await ReadAsync(v, 0, Chunk));
        }
        await using (Pool pool = Pool.Open(options))
        {
            pool.TryGetVolume("v", out Volume v);
            Assert.Equal(a, await ReadAsync(v, target * Chunk, Chunk));
        }
        await AssertCleanAsync(directory, output);
    }

    [Fact]
    public async Task RandomOverwritesWithRepeatedContentsReadBackAndCheckClean()
    {
        // 600 contents over 2048 blocks, rounds of 700 random writes (several destage batches per
        // flush): chunks gain and lose their last references across batches all the time.
        int seed = Seed(output);
        var random = new Random(seed);
        using var dir = new TempPoolDir();
        PoolOptions options = Options(dir.Path);
        byte[][] contents = Enumerable.Range(0, 600).Select(i => Pattern(5000 + i, 1)).ToArray();
        byte[] shadow = new byte[2048 * Chunk];
        await using (Pool pool = Pool.Open(options))
        {
            Volume v = await pool.CreateVolumeAsync("v", shadow.Length, 512, None);
            for (int round = 0; round < 12; round++)
            {
                for (int i = 0; i < 700; i++)
                {
                    int block = random.Next(shadow.Length / Chunk);
                    byte[] content = contents[random.Next(contents.Length)];
                    await WriteAsync(v, (long)block * Chunk, content);
                    content.CopyTo(shadow, block * Chunk);
                }
                await v.FlushAsync(None);
                await AssertContentAsync(v, shadow, $"seed {seed} round {round}");
            }
            // Dedup still works: about one chunk per content. (Not exactly one: a content whose every
            // stored reference an unapplied batch drops is stored again rather than shared, and when that
            // batch also shares the old chunk elsewhere, both copies stay live.)
            Assert.True(pool.GetStats().UniqueChunks <= contents.Length * 11 / 10, $"seed {seed}: {pool.GetStats().UniqueChunks} unique chunks for {contents.Length} contents");
        }
        await using (Pool pool = Pool.Open(options))
        {
            pool.TryGetVolume("v", out Volume v);
            await AssertContentAsync(v, shadow, $"seed {seed} after reopen");
        }
        await AssertCleanAsync(dir.Path, output);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)] // compared in its own hold of the lock, before the CRC (a write of several chunks)
    public async Task AWritersVerdictIsNotTrustedOnceItsChunkIdWasFreedAndReused(bool inALargerWrite)
    {
        // Block 4 is written with P while P is stored as chunk X and read-cached: the writer finds
        // them equal. Before block 4 destages, X's only reference is trimmed (X is freed) and R,
        // which collides with P's fingerprint, is stored under the reused id X by a group applied
        // before block 4's batch is built. Block 4 must still read P: the destager compares again.
        using var dir = new TempPoolDir();
        byte[] p = Pattern(1, 1), r = Pattern(2, 1);
        var fingerprinter = new PairCollidingFingerprinter(p, r);
        // More than two full destage groups between block 2 and block 4 (so block 2's group is applied
        // before block 4's batch is built; with fewer, both are decided before either is applied and
        // the reuse never happens), a cache the fillers do not push past the destage watermark (a
        // quarter of the cache plus half a group), and no destage by age.
        int fillers = 2 * Pool.MaxGroupBatches * Pool.MaxBatchPages + 500;
        PoolOptions options = Options(dir.Path, segments: 128, cachePages: 4 * fillers) with { FingerprinterOverride = fingerprinter, DirtyAgeMaxMs = 600_000 };
        byte[] shadow = new byte[(fillers + 32) * Chunk];
        await using (Pool pool = Pool.Open(options))
        {
            Volume v = await pool.CreateVolumeAsync("v", shadow.Length, 512, None);
            async Task Write(long block, byte[] data) { await WriteAsync(v, block * Chunk, data); data.CopyTo(shadow, block * Chunk); }
            await Write(0, p);
            await v.FlushAsync(None);
            await Write(2, Pattern(2, 0)); // block 2's page is queued first ...
            for (long b = 16; b < 16 + fillers; b++) await Write(b, Pattern(b, 1));
            // ... block 4's last: the writer finds it equal to X.
            await Write(4, inALargerWrite ? p.Concat(Pattern(5, 1)).ToArray() : p);
            await v.TrimAsync(0, Chunk, None); // X is freed
            Array.Clear(shadow, 0, Chunk);
            await Write(2, r); // in place: block 2's page keeps its place at the head of the queue
            await v.FlushAsync(None);
            await AssertContentAsync(v, shadow, "after destage");
        }
        await using (Pool pool = Pool.Open(options))
        {
            pool.TryGetVolume("v", out Volume v);
            await AssertContentAsync(v, shadow, "after reopen");
        }
    }

    [Fact]
    public async Task RewritingWhatABlockHoldsStoresNothingUnlessNewerDataIsOnItsWay()
    {
        // Blocks 0-7 hold A..H and block 8 zeros, all destaged. Writing the same bytes again (one
        // chunk at a time, and as one 8-chunk write) stores nothing: no page, no batch, no device
        // byte. A block with newer data in the write cache is no such case: block 0 gets B' and then
        // A again, and must end with A. A zero chunk over a hole is stored (the block becomes zero).
        using var dir = new TempPoolDir();
        PoolOptions options = Options(dir.Path) with { DirtyAgeMaxMs = 600_000 };
        byte[] held = new byte[8 * Chunk];
        for (int b = 0; b < 8; b++) Pattern(b, 1).CopyTo(held, b * Chunk);
        byte[] zero = new byte[Chunk];
        await using (Pool pool = Pool.Open(options))
        {
            Volume v = await pool.CreateVolumeAsync("v", 1 << 20, 512, None);
            await WriteAsync(v, 0, held);
            await WriteAsync(v, 8 * Chunk, zero);
            PoolStats before = await Flushed(pool, v);
            Assert.Equal(0, before.NopWriteBytes);

            for (int b = 0; b < 8; b++) await WriteAsync(v, b * Chunk, held[(b * Chunk)..((b + 1) * Chunk)]);
            await WriteAsync(v, 0, held);
            await WriteAsync(v, 8 * Chunk, zero, WriteFlags.Fua);
            Assert.Equal(0, v.CachedPages);
            PoolStats after = await Flushed(pool, v);
            Assert.Equal(17L * Chunk, after.NopWriteBytes);
            Assert.Equal(before.DeviceBytesWritten, after.DeviceBytesWritten);
            Assert.Equal(before.DestageGroups, after.DestageGroups);

            // Newer data on its way: A over a dirty B' is a write like any other.
            await WriteAsync(v, 0, Pattern(0, 2));
            await WriteAsync(v, 0, Pattern(0, 1));
            Assert.Equal(1, v.CachedPages);
            // A zero chunk over a hole is not what the block holds.
            await WriteAsync(v, 9 * Chunk, zero);
            Assert.Equal(2, v.CachedPages);
            await v.FlushAsync(None);
            Assert.Equal(17L * Chunk, pool.GetStats().NopWriteBytes);
            Assert.Equal(held, await ReadAsync(v, 0, held.Length));
            Assert.Equal(ExtentKind.Zero, (await v.GetAllocationAsync(9 * Chunk, Chunk, None)).Items.Single().Kind);
        }
        await using (Pool pool = Pool.Open(options))
        {
            pool.TryGetVolume("v", out Volume v);
            Assert.Equal(held, await ReadAsync(v, 0, held.Length));
            Assert.Equal(zero, await ReadAsync(v, 8 * Chunk, Chunk));
        }
        await AssertCleanAsync(dir.Path, output);
    }

    [Fact]
    public async Task RewritingStoredDataSharesItWhenNoneOfItIsCached()
    {
        // No read cache: every candidate is verified from the device, by the destager's reads of
        // runs of adjacent stored chunks (in any order, repeated, mixed with new data).
        using var dir = new TempPoolDir();
        PoolOptions options = Options(dir.Path, cachePages: 2048) with { ReadCacheBytes = 0 };
        const int blocks = 512;
        await using (Pool pool = Pool.Open(options))
        {
            Volume v = await pool.CreateVolumeAsync("v", blocks * Chunk, 512, None);
            byte[] all = new byte[blocks * Chunk];
            for (int b = 0; b < blocks; b++) Pattern(b, 1).CopyTo(all, b * Chunk);
            await v.WriteAsync(0, all, WriteFlags.None, None);
            await v.FlushAsync(None);
        }
        await using (Pool pool = Pool.Open(options))
        {
            Volume w = await pool.CreateVolumeAsync("w", 2 * blocks * Chunk, 512, None);
            // Stored blocks backwards, each stored block 7 twice, and a new block every 10th.
            var expected = new List<byte[]>();
            for (int b = blocks - 1; b >= 0; b--)
            {
                expected.Add(Pattern(b, 1));
                if (b % 7 == 0) expected.Add(Pattern(b, 1));
                if (b % 10 == 0) expected.Add(Pattern(b, 2));
            }
            byte[] image = expected.SelectMany(x => x).ToArray();
            await w.WriteAsync(0, image, WriteFlags.None, None);
            await w.FlushAsync(None);
            int fresh = Enumerable.Range(0, blocks).Count(b => b % 10 == 0);
            Assert.Equal(blocks + fresh, pool.GetStats().UniqueChunks);
            Assert.Equal(image, await ReadAsync(w, 0, image.Length));
        }
        await AssertCleanAsync(dir.Path, output);
    }

    [Fact]
    public async Task CompareAndWriteWritesAllOrNothing()
    {
        using var dir = new TempPoolDir();
        await using (Pool pool = Pool.Open(Options(dir.Path)))
        {
            Volume v = await pool.CreateVolumeAsync("v", 1 << 20, 512, None);
            byte[] old = Pattern(4, 1);
            await WriteAsync(v, 4 * Chunk, old);
            await v.FlushAsync(None);
            byte[] next = Pattern(4, 2);
            Assert.True(await v.CompareAndWriteAsync(4 * Chunk, old, next, None));
            Assert.Equal(next, await ReadAsync(v, 4 * Chunk, Chunk));
            Assert.False(await v.CompareAndWriteAsync(4 * Chunk, old, Pattern(4, 3), None));
            Assert.Equal(next, await ReadAsync(v, 4 * Chunk, Chunk));
            // Across a chunk boundary, unaligned, over a hole.
            byte[] zeros = new byte[6000];
            byte[] src = Pattern(7, 7, 6000);
            Assert.True(await v.CompareAndWriteAsync(10 * Chunk - 3000, zeros, src, None));
            Assert.Equal(src, await ReadAsync(v, 10 * Chunk - 3000, 6000));
            Assert.Equal(new byte[1096], await ReadAsync(v, 9 * Chunk, 1096));
            await Assert.ThrowsAsync<ArgumentException>(() => v.CompareAndWriteAsync(0, new byte[512], new byte[1024], None).AsTask());
        }
        await AssertCleanAsync(dir.Path, output);
    }

    [Fact]
    public async Task PartialCompareAndWriteOnAnUncachedChunkKeepsTheRestOfTheChunk()
    {
        // A 512-byte COMPARE AND WRITE on a chunk that is not in the cache, while other pages of
        // the same volume are: the rest of the chunk must keep its stored bytes (not the stale
        // bytes of whichever cache page was taken).
        using var dir = new TempPoolDir();
        PoolOptions options = Options(dir.Path);
        byte[] stored = Pattern(6, 1);
        await using (Pool pool = Pool.Open(options))
        {
            Volume v = await pool.CreateVolumeAsync("v", 1 << 20, 512, None);
            await WriteAsync(v, 6 * Chunk, stored);
            await pool.CheckpointAsync(None);
            // Dirty pages of other contents, so recycled cache pages hold garbage and the volume has cached pages.
            for (long b = 20; b < 30; b++) await WriteAsync(v, b * Chunk, Pattern(b, 5));
            await v.FlushAsync(None);
            await WriteAsync(v, 40 * Chunk, Pattern(40, 5)); // one cached page of this volume
            byte[] sector = Pattern(77, 1, 512);
            Assert.True(await v.CompareAndWriteAsync(6 * Chunk + 1024, stored.AsSpan(1024, 512).ToArray(), sector, None));
            sector.CopyTo(stored, 1024);
            Assert.Equal(stored, await ReadAsync(v, 6 * Chunk, Chunk));
            // Over a hole, too.
            Assert.True(await v.CompareAndWriteAsync(50 * Chunk + 512, new byte[512], sector, None));
            byte[] expected = new byte[Chunk];
            sector.CopyTo(expected, 512);
            Assert.Equal(expected, await ReadAsync(v, 50 * Chunk, Chunk));
            await v.FlushAsync(None);
            Assert.Equal(stored, await ReadAsync(v, 6 * Chunk, Chunk));
            Assert.Equal(expected, await ReadAsync(v, 50 * Chunk, Chunk));
        }
        await AssertCleanAsync(dir.Path, output);
    }

    [Fact]
    public async Task ConcurrentCompareAndWritesKeepACounterExact()
    {
        using var dir = new TempPoolDir();
        const int tasks = 8, increments = 40;
        await using (Pool pool = Pool.Open(Options(dir.Path, cachePages: 64)))
        {
            Volume v = await pool.CreateVolumeAsync("v", 1 << 20, 512, None);
            long attempts = 0;
            async Task Worker(int id)
            {
                byte[] current = new byte[512];
                for (int done = 0; done < increments;)
                {
                    await v.ReadAsync(512, current, None);
                    byte[] next = (byte[])current.Clone();
                    BitConverter.TryWriteBytes(next, BitConverter.ToInt64(current) + 1);
                    next[8 + id]++;
                    Interlocked.Increment(ref attempts);
                    if (await v.CompareAndWriteAsync(512, current, next, None)) done++;
                }
            }
            await Task.WhenAll(Enumerable.Range(0, tasks).Select(i => Task.Run(() => Worker(i))));
            byte[] final = await ReadAsync(v, 512, 512);
            output.WriteLine($"{attempts} attempts for {tasks * increments} increments");
            Assert.Equal(tasks * increments, BitConverter.ToInt64(final));
            for (int i = 0; i < tasks; i++) Assert.Equal(increments, final[8 + i]);
        }
        await AssertCleanAsync(dir.Path, output);
    }

    [Fact]
    public async Task CopyByReferenceSharesChunksAndStaysIndependent()
    {
        using var dir = new TempPoolDir();
        PoolOptions options = Options(dir.Path);
        const int blocks = 300;
        byte[] source = new byte[blocks * Chunk];
        for (int b = 0; b < blocks; b++) (b % 7 == 3 ? new byte[Chunk] : Pattern(b, 1)).CopyTo(source, b * Chunk);
        await using (Pool pool = Pool.Open(options))
        {
            Volume v = await pool.CreateVolumeAsync("v", 2L << 20, 512, None);
            Volume w = await pool.CreateVolumeAsync("w", 4L << 20, 512, None);
            await WriteAsync(v, 0, source);
            await WriteAsync(w, 0, Pattern(1000, 1)); // will be overwritten by the copy below
            long unique = (await Flushed(pool, v)).UniqueChunks;
            await v.CopyAsync(0, w, 0, blocks * Chunk, None);
            Assert.Equal(unique - 1, pool.GetStats().UniqueChunks); // shared; only w's overwritten chunk is gone
            Assert.Equal(source, await ReadAsync(w, 0, blocks * Chunk));
            // Overlapping copy inside one volume.
            await v.CopyAsync(0, v, 100 * Chunk, 150 * Chunk, None);
            byte[] expectedV = (byte[])source.Clone();
            Array.Copy(source, 0, expectedV, 100 * Chunk, 150 * Chunk);
            Assert.Equal(expectedV, await ReadAsync(v, 0, blocks * Chunk));
            // Later overwrites of the source do not change the copy.
            await WriteAsync(v, 0, Pattern(0, 2));
            await v.TrimAsync(Chunk, 10 * Chunk, None);
            await v.FlushAsync(None);
            Assert.Equal(source, await ReadAsync(w, 0, blocks * Chunk));
            // Unaligned copy moves bytes.
            await v.CopyAsync(100, w, 3 * Chunk + 7, 5000, None);
            byte[] expectedW = (byte[])source.Clone();
            Array.Copy(await ReadAsync(v, 100, 5000), 0, expectedW, 3 * Chunk + 7, 5000);
            Assert.Equal(expectedW, await ReadAsync(w, 0, blocks * Chunk));
            source = expectedW;
        }
        await using (Pool pool = Pool.Open(options))
        {
            pool.TryGetVolume("w", out Volume w);
            Assert.Equal(source, await ReadAsync(w, 0, blocks * Chunk));
        }
        await AssertCleanAsync(dir.Path, output);
    }

    private static async Task<PoolStats> Flushed(Pool pool, Volume v)
    {
        await v.FlushAsync(None);
        return pool.GetStats();
    }
}

/// <summary>XXH3, except that two given contents get one fingerprint (a forced collision).</summary>
internal sealed class PairCollidingFingerprinter(byte[] a, byte[] b) : IFingerprinter
{
    private readonly IFingerprinter _real = Fingerprinters.Create(FingerprintAlgorithm.Xxh3_128);

    public FingerprintAlgorithm Algorithm => FingerprintAlgorithm.Xxh3_128;

    public Fingerprint Compute(ReadOnlySpan<byte> data) =>
        data.SequenceEqual(b) ? _real.Compute(a) : _real.Compute(data);
}
