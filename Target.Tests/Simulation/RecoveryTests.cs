// Crash recovery with a simulated faulty device. Invariants:
// - a torn last journal write is detected and dropped; everything flushed before it is intact;
// - a dropped (lost) journal write ends the log there: neither it nor any batch after it is
//   replayed, now or after later crashes (stale batches past the recovered head must never be
//   mistaken for new ones);
// - at a crash at any device write, every block reads as its last durable value or one of the
//   values written after it (never anything else), and the checker is clean;
// - recovery is repeatable: write, crash, recover, write more, crash again, recover again;
// - chunks the cleaner moved to its own segment, whose batch reached the disk while the moved
//   data did not (a reordering power loss), are read from where they were before the move;
// - a power loss that keeps, loses or tears any of the journal writes since the last flush
//   (destage flushes on demand, not after every group) loses nothing a FLUSH, FUA or wt covered.
//   A FLUSH that finds every page already written and landed, with no journal flush since, still
//   flushes the journal before it returns (a test that fails every run when written counts as durable).
// - with no FLUSH from the host, the journal is flushed JournalFlushMs after its oldest unflushed
//   write while writes go on, and soon after the host stops writing.
using System.Diagnostics;
using Target.Dedup;
using Target.Tests.Engine;
using Xunit.Abstractions;
using static Target.Tests.Engine.EngineTest;

namespace Target.Tests.Simulation;

public sealed class RecoveryTests(ITestOutputHelper output)
{
    private static readonly CancellationToken None = CancellationToken.None;
    private const long VolumeBytes = 4L << 20;

    private static PoolOptions Faulty(PoolOptions options, int seed, Action<FaultyDevice> created) =>
        options with { DeviceDecorator = d => { var f = new FaultyDevice(d, seed); created(f); return f; } };

    private static async Task WriteBlocksAsync(Volume v, byte[] shadow, Random random, int count, int version)
    {
        for (int i = 0; i < count; i++)
        {
            long block = random.NextInt64(VolumeBytes / Chunk);
            byte[] data = Pattern(block, version * 100_000 + i);
            await WriteAsync(v, block * Chunk, data);
            data.CopyTo(shadow, block * Chunk);
        }
    }

    [Fact]
    public async Task TornLastWriteIsDroppedAndEverythingFlushedSurvives()
    {
        int seed = Seed(output);
        var random = new Random(seed);
        for (int iteration = 0; iteration < 6; iteration++)
        {
            using var dir = new TempPoolDir();
            PoolOptions plain = Options(dir.Path);
            FaultyDevice? device = null;
            byte[] shadow = new byte[VolumeBytes];
            Pool pool = Pool.Open(Faulty(plain, seed + iteration, d => device = d));
            Volume v = await pool.CreateVolumeAsync("v", VolumeBytes, 512, None);
            await WriteBlocksAsync(v, shadow, random, random.Next(1, 300), 1);
            await v.FlushAsync(None);
            byte[] durable = (byte[])shadow.Clone();

            device!.ArmTear();
            byte[] lost = (byte[])shadow.Clone();
            if (iteration % 3 == 2)
            {
                // A torn metadata batch: the trim is not applied.
                await Assert.ThrowsAnyAsync<StorageException>(() => v.TrimAsync(0, VolumeBytes, None).AsTask());
            }
            else
            {
                await WriteBlocksAsync(v, lost, random, random.Next(1, 250), 2);
                await Assert.ThrowsAnyAsync<StorageException>(() => v.FlushAsync(None).AsTask());
            }
            output.WriteLine($"iteration {iteration}: tear {device.LastTear}");
            Assert.NotNull(device.LastTear);
            await Assert.ThrowsAnyAsync<StorageException>(() => v.WriteAsync(0, new byte[Chunk], WriteFlags.Fua, None).AsTask());
            await pool.AbandonAsync();

            await using (Pool again = Pool.Open(plain))
            {
                Assert.True(again.TryGetVolume("v", out Volume w));
                await AssertContentAsync(w, durable, $"seed {seed} iteration {iteration} after the torn write");
                // Write more, crash again (no checkpoint), recover again.
                await WriteBlocksAsync(w, durable, random, random.Next(1, 100), 3);
                await w.FlushAsync(None);
                await again.AbandonAsync();
            }
            await using (Pool third = Pool.Open(plain))
            {
                Assert.True(third.TryGetVolume("v", out Volume w));
                await AssertContentAsync(w, durable, $"seed {seed} iteration {iteration} after the second crash");
            }
            await AssertCleanAsync(dir.Path, output);
        }
    }

    [Fact]
    public async Task ADroppedWriteEndsTheLogNowAndAfterLaterCrashes()
    {
        int seed = Seed(output);
        var random = new Random(seed);
        using var dir = new TempPoolDir();
        PoolOptions plain = Options(dir.Path);
        FaultyDevice? device = null;
        byte[] shadow = new byte[VolumeBytes];
        Pool pool = Pool.Open(Faulty(plain, seed, d => device = d));
        Volume v = await pool.CreateVolumeAsync("v", VolumeBytes, 512, None);
        await WriteBlocksAsync(v, shadow, random, 100, 1);
        await v.FlushAsync(None);
        byte[] durable = (byte[])shadow.Clone();

        // Batch S (two blocks) is dropped; S+1 (one block) is written but follows a hole in the log.
        device!.ArmDrop();
        await WriteAsync(v, 10 * Chunk, Pattern(10, 2));
        await WriteAsync(v, 11 * Chunk, Pattern(11, 2));
        await v.FlushAsync(None);
        Assert.NotNull(device.LastDrop);
        await WriteAsync(v, 12 * Chunk, Pattern(12, 2));
        await v.FlushAsync(None);
        Assert.Equal(Pattern(12, 2), await ReadAsync(v, 12 * Chunk, Chunk));
        await pool.AbandonAsync();

        await using (Pool again = Pool.Open(plain))
        {
            Assert.True(again.TryGetVolume("v", out Volume w));
            await AssertContentAsync(w, durable, $"seed {seed}: neither the dropped batch nor the one after it may be replayed");
            // The new log's first batch has the same shape as the dropped one (two blocks), so the
            // stale batch S+1 sits exactly where the new S+1 would go. F overwrites block 12.
            await WriteAsync(w, 20 * Chunk, Pattern(20, 3));
            await WriteAsync(w, 12 * Chunk, Pattern(12, 3));
            await w.FlushAsync(None);
            Pattern(20, 3).CopyTo(durable, 20 * Chunk);
            Pattern(12, 3).CopyTo(durable, 12 * Chunk);
            await again.AbandonAsync();
        }
        await using (Pool third = Pool.Open(plain))
        {
            Assert.True(third.TryGetVolume("v", out Volume w));
            await AssertContentAsync(w, durable, $"seed {seed}: a stale batch from before the first crash was replayed");
        }
        await AssertCleanAsync(dir.Path, output);
    }

    [Fact]
    public async Task ACrashAtAnyDeviceWriteLosesNoDurableWrite()
    {
        int seed = Seed(output);
        var random = new Random(seed);
        using var dir = new TempPoolDir();
        const int blocks = 512;
        var versions = new BlockVersions(blocks);
        int version = 0;
        bool created = false;
        for (int iteration = 0; iteration < 12; iteration++)
        {
            WriteMode mode = iteration % 3 == 1 ? WriteMode.WriteThrough : WriteMode.OneWayWriteBack;
            PoolOptions plain = Options(dir.Path, mode: mode, cachePages: 128);
            FaultyDevice? device = null;
            Pool pool = Pool.Open(Faulty(plain, seed + iteration, d => device = d));
            Volume v = created ? (pool.TryGetVolume("v", out Volume existing) ? existing : throw new Exception("volume lost")) : await pool.CreateVolumeAsync("v", (long)blocks * Chunk, 512, None);
            created = true;
            device!.ArmTear(random.Next(0, 25));
            int ops = 0;
            try
            {
                while (ops++ < 2000)
                {
                    int action = random.Next(20);
                    if (action == 0)
                    {
                        await v.FlushAsync(None);
                        versions.AllDurable();
                    }
                    else if (action == 1)
                    {
                        int b = random.Next(blocks), n = random.Next(1, 8);
                        n = Math.Min(n, blocks - b);
                        for (int k = b; k < b + n; k++) versions.Written(k, 0);
                        await v.TrimAsync((long)b * Chunk, (long)n * Chunk, None);
                        // A trim is journalled before it returns: durable now.
                        for (int k = b; k < b + n; k++) versions.Durable(k);
                    }
                    else
                    {
                        int b = random.Next(blocks);
                        int value = ++version;
                        versions.Written(b, value);
                        bool fua = random.Next(8) == 0;
                        await v.WriteAsync((long)b * Chunk, Pattern(b, value), fua ? WriteFlags.Fua : WriteFlags.None, None);
                        if (fua || mode == WriteMode.WriteThrough) versions.Durable(b);
                    }
                }
            }
            catch (StorageException e)
            {
                output.WriteLine($"iteration {iteration} ({WriteModes.ToText(mode)}): crashed after {ops} ops at device write {device.Writes}: {e.Message}");
            }
            await pool.AbandonAsync();

            await using (Pool again = Pool.Open(plain))
            {
                Assert.True(again.TryGetVolume("v", out Volume w));
                await versions.AssertDurableOrWrittenSinceAsync(w, $"seed {seed} iteration {iteration}");
            }
            await AssertCleanAsync(dir.Path, output);
        }
    }

    /// <summary>
    /// Destage does not flush the disk's cache after every group (PoolOptions.JournalFlushMs), so a
    /// power loss may find many journal writes unflushed, and the disk may have kept any of them,
    /// lost any, and torn any. Whatever it kept, every write a FLUSH, a FUA or wt covered survives,
    /// every block reads as its durable value or one written since, and the checker is clean.
    /// </summary>
    [Fact]
    public async Task APowerLossKeepingAnySubsetOfTheUnflushedWritesLosesNothingFlushed()
    {
        int seed = Seed(output);
        var random = new Random(seed);
        using var dir = new TempPoolDir();
        const int blocks = 1024;
        var versions = new BlockVersions(blocks);
        int version = 0, undone = 0;
        bool created = false;
        for (int iteration = 0; iteration < 12; iteration++)
        {
            WriteMode mode = iteration % 4 == 3 ? WriteMode.WriteThrough : WriteMode.OneWayWriteBack;
            // Mostly the default (flushed on demand and at the latest after 5 s); every fourth run flushes each group.
            PoolOptions plain = Options(dir.Path, mode: mode, cachePages: 128) with { JournalFlushMs = iteration % 4 == 2 ? 0 : PoolOptions.DefaultJournalFlushMs };
            FaultyDevice? device = null;
            Pool pool = Pool.Open(Faulty(plain, seed + iteration, d => device = d));
            Volume v = created ? (pool.TryGetVolume("v", out Volume existing) ? existing : throw new Exception("volume lost")) : await pool.CreateVolumeAsync("v", (long)blocks * Chunk, 512, None);
            created = true;
            device!.ArmPowerLoss(random.Next(0, 120));
            int ops = 0;
            try
            {
                while (ops++ < 20_000)
                {
                    // FLUSH, trims and FUA are rare: each makes the journal durable, and the power is
                    // to fail with many unflushed writes.
                    int action = random.Next(1000);
                    int b = random.Next(blocks);
                    if (action == 0)
                    {
                        await v.FlushAsync(None);
                        versions.AllDurable();
                    }
                    else if (action == 1)
                    {
                        int n = Math.Min(random.Next(1, 8), blocks - b);
                        for (int k = b; k < b + n; k++) versions.Written(k, 0);
                        await v.TrimAsync((long)b * Chunk, (long)n * Chunk, None);
                        // A trim is journalled and flushed before it returns.
                        for (int k = b; k < b + n; k++) versions.Durable(k);
                    }
                    else if (action < 4 && versions.Latest(b) != 0)
                    {
                        // The block's own bytes again, with FUA: a nop-write once its page has landed,
                        // which must still wait until what the block holds is durable.
                        await v.WriteAsync((long)b * Chunk, Pattern(b, versions.Latest(b)), WriteFlags.Fua, None);
                        versions.Durable(b);
                    }
                    else
                    {
                        int value = ++version;
                        versions.Written(b, value);
                        bool fua = random.Next(1000) == 0;
                        await v.WriteAsync((long)b * Chunk, Pattern(b, value), fua ? WriteFlags.Fua : WriteFlags.None, None);
                        if (fua || mode == WriteMode.WriteThrough) versions.Durable(b);
                    }
                }
            }
            catch (StorageException e)
            {
                output.WriteLine($"iteration {iteration} ({WriteModes.ToText(mode)}, journal flush {plain.JournalFlushMs} ms): power lost after {ops} ops at device write {device.Writes}: {e.Message}");
            }
            Assert.True(device.LastPowerLoss != null, $"seed {seed} iteration {iteration}: the power never failed in {ops} ops");
            undone += device.LastPowerLoss.Value.Lost + device.LastPowerLoss.Value.Torn;
            await pool.AbandonAsync();

            await using (Pool again = Pool.Open(plain))
            {
                Assert.True(again.TryGetVolume("v", out Volume w));
                await versions.AssertDurableOrWrittenSinceAsync(w, $"seed {seed} iteration {iteration}");
            }
            await AssertCleanAsync(dir.Path, output);
        }
        Assert.True(undone > 0, $"seed {seed}: no power loss undid an unflushed write");
    }

    /// <summary>
    /// A FUA write of exactly what a block holds stores nothing (a nop-write), but what the block
    /// holds may come from a batch written and not flushed yet: the FUA must wait for that flush.
    /// </summary>
    [Fact]
    public async Task AFuaNopWriteOverAnUnflushedBatchWaitsUntilItIsDurable()
    {
        int seed = Seed(output);
        var random = new Random(seed);
        using var dir = new TempPoolDir();
        const int blocks = 1024;
        PoolOptions plain = Options(dir.Path, cachePages: 128);
        FaultyDevice? device = null;
        Pool pool = Pool.Open(Faulty(plain, seed, d => device = d));
        Volume v = await pool.CreateVolumeAsync("v", (long)blocks * Chunk, 512, None);
        await v.FlushAsync(None);
        device!.ArmPowerLoss(int.MaxValue); // records every write since the last flush
        byte[] kept = Pattern(0, 1);
        await v.WriteAsync(0, kept, WriteFlags.None, None);
        long nopBefore = pool.GetStats().NopWriteBytes;
        bool nop = false;
        for (int round = 0; round < 50 && !nop; round++)
        {
            // Other writes push block 0's page out of the cache in groups that end with no flush
            // (nothing waits, the queue never runs dry), until rewriting its bytes is a nop-write.
            for (int i = 0; i < 200; i++)
            {
                long b = 1 + random.Next(blocks - 1);
                await v.WriteAsync(b * Chunk, Pattern(b, 2 + round * 1000 + i), WriteFlags.None, None);
            }
            await v.WriteAsync(0, kept, WriteFlags.None, None);
            nop = pool.GetStats().NopWriteBytes > nopBefore;
        }
        Assert.True(nop, $"seed {seed}: rewriting block 0 never found its page landed (no nop-write)");
        nopBefore = pool.GetStats().NopWriteBytes;
        await v.WriteAsync(0, kept, WriteFlags.Fua, None);
        Assert.True(pool.GetStats().NopWriteBytes > nopBefore, "the FUA rewrite was no nop-write");
        await LosePowerAtTheNextWriteAsync(pool, v, device!, () => 1 + random.Next(blocks - 1));

        await using (Pool again = Pool.Open(plain))
        {
            Assert.True(again.TryGetVolume("v", out Volume w));
            Assert.Equal(kept, await ReadAsync(w, 0, Chunk));
        }
        await AssertCleanAsync(dir.Path, output);
    }

    /// <summary>
    /// Every page of the writes before a FLUSH has been written to the journal and landed, but no
    /// journal flush has run since (the destager flushes on demand): the FLUSH has nothing to
    /// destage and must still flush the journal before it returns. The power then fails and takes
    /// every write since the last journal flush.
    /// </summary>
    [Fact]
    public async Task AFlushAfterEveryPageLandedUnflushedStillFlushesTheJournal()
    {
        int seed = Seed(output);
        var random = new Random(seed);
        using var dir = new TempPoolDir();
        const int blocks = 1024, written = 64;
        // Pages are destaged once 5 ms old (the next destager tick), long before any flush is due.
        PoolOptions plain = Options(dir.Path, cachePages: 128) with { DirtyAgeMaxMs = 5 };
        FaultyDevice? device = null;
        Pool pool = Pool.Open(Faulty(plain, seed, d => device = d));
        Volume v = await pool.CreateVolumeAsync("v", (long)blocks * Chunk, 512, None);
        // A block whose rewrite is a nop-write: it counts as a host write (so the destager never
        // finds itself idle for the 100 ms that make a flush due) and queues nothing.
        const long keepAlive = blocks - 1;
        byte[] keepAliveBytes = Pattern(keepAlive, 1);
        await v.WriteAsync(keepAlive * Chunk, keepAliveBytes, WriteFlags.None, None);
        await v.FlushAsync(None);
        device!.ArmPowerLoss(int.MaxValue); // records every write since the last flush
        int version = 1;
        bool landedUnflushed = false;
        for (int attempt = 0; attempt < 10 && !landedUnflushed; attempt++)
        {
            version++;
            long flushesBefore = pool.GetStats().JournalFlushes;
            for (long b = 0; b < written; b++) await v.WriteAsync(b * Chunk, Pattern(b, version), WriteFlags.None, None);
            var waited = Stopwatch.StartNew();
            while (v.GetStats().DirtyBytes > 0 && waited.ElapsedMilliseconds < 5000)
            {
                await v.WriteAsync(keepAlive * Chunk, keepAliveBytes, WriteFlags.None, None);
                await Task.Delay(2);
            }
            landedUnflushed = v.GetStats().DirtyBytes == 0 && pool.GetStats().JournalFlushes == flushesBefore;
            if (!landedUnflushed) await v.FlushAsync(None);
        }
        Assert.True(landedUnflushed, $"seed {seed}: the writes never all landed before a journal flush");
        await v.FlushAsync(None);
        await LosePowerAtTheNextWriteAsync(pool, v, device!, () => written + random.Next(blocks - written - 1));

        await using (Pool again = Pool.Open(plain))
        {
            Assert.True(again.TryGetVolume("v", out Volume w));
            for (long b = 0; b < written; b++)
            {
                byte[] got = await ReadAsync(w, b * Chunk, Chunk);
                Assert.True(Pattern(b, version).AsSpan().SequenceEqual(got), $"seed {seed}: block {b} lost the write a FLUSH made durable");
            }
        }
        await AssertCleanAsync(dir.Path, output);
    }

    /// <summary>
    /// With no FLUSH from the host, the journal is still flushed on its own: soon after the host
    /// stops writing (the destager ran dry), and at the latest JournalFlushMs after the oldest
    /// unflushed write while the host keeps writing. A power loss that takes every unflushed write
    /// then loses nothing written before the flush.
    /// </summary>
    [Fact]
    public async Task TheJournalIsFlushedWithoutAFlushFromTheHost()
    {
        int seed = Seed(output);
        var random = new Random(seed);
        using var dir = new TempPoolDir();
        const int blocks = 1024;
        PoolOptions plain = Options(dir.Path, cachePages: 128) with { DirtyAgeMaxMs = 5, JournalFlushMs = 300 };
        int version = 1;
        await using (Pool pool = Pool.Open(plain))
        {
            Volume v = await pool.CreateVolumeAsync("v", (long)blocks * Chunk, 512, None);
            await v.FlushAsync(None);
            // A write to a block of the first half, then a pause of about a millisecond.
            async Task WriteAndPauseAsync()
            {
                long b = random.Next(blocks / 2);
                await v.WriteAsync(b * Chunk, Pattern(b, ++version), WriteFlags.None, None);
                await Task.Delay(1);
            }
            // The destager's first group can come hundreds of ms late on a loaded machine (its first turn): counted from then.
            var start = Stopwatch.StartNew();
            while (pool.GetStats().DestageGroups == 0 && start.ElapsedMilliseconds < 10_000) await WriteAndPauseAsync();
            // The host keeps writing for 2 s (never idle for the 100 ms that make the destager flush
            // when it runs dry): only the age of the oldest unflushed write makes flushes due, about
            // every 300-400 ms (the destager checks on its 100 ms tick).
            long flushesBefore = pool.GetStats().JournalFlushes, groupsBefore = pool.GetStats().DestageGroups;
            var writing = Stopwatch.StartNew();
            while (writing.ElapsedMilliseconds < 2000) await WriteAndPauseAsync();
            long flushes = pool.GetStats().JournalFlushes - flushesBefore, groups = pool.GetStats().DestageGroups - groupsBefore;
            output.WriteLine($"{flushes} journal flushes and {groups} destage groups in {writing.ElapsedMilliseconds} ms of writes");
            Assert.True(flushes >= 2, $"seed {seed}: {flushes} journal flushes in 2 s of writes with JournalFlushMs 300 ({groups} destage groups)");
        }

        // Then with flushes by age a minute apart: the host writes and stops, and what it wrote is
        // flushed within a few destager ticks (the destager ran dry).
        PoolOptions rare = plain with { JournalFlushMs = 60_000 };
        FaultyDevice? device = null;
        Pool again = Pool.Open(Faulty(rare, seed, d => device = d));
        Assert.True(again.TryGetVolume("v", out Volume w));
        // The destager's first group (late on a loaded machine) comes before the writes timed.
        var setUp = Stopwatch.StartNew();
        await w.WriteAsync(0, Pattern(0, ++version), WriteFlags.None, None);
        while (again.GetStats().DestageGroups == 0 && setUp.ElapsedMilliseconds < 10_000) await Task.Delay(5);
        byte[][] last = new byte[64][];
        long flushedBefore = again.GetStats().JournalFlushes;
        for (int k = 0; k < last.Length; k++)
        {
            long b = blocks / 2 + k;
            last[k] = Pattern(b, ++version);
            await w.WriteAsync(b * Chunk, last[k], WriteFlags.None, None);
        }
        var idle = Stopwatch.StartNew();
        while ((w.GetStats().DirtyBytes > 0 || again.GetStats().JournalFlushes == flushedBefore) && idle.ElapsedMilliseconds < 5000) await Task.Delay(5);
        output.WriteLine($"flushed {idle.ElapsedMilliseconds} ms after the last write");
        Assert.True(w.GetStats().DirtyBytes == 0 && again.GetStats().JournalFlushes > flushedBefore,
            $"seed {seed}: no journal flush within 5 s of the host's last write (JournalFlushMs 60000: the destager must flush when it runs dry)");
        await Task.Delay(300); // the flush counted may be a group's before the last pages landed: the next ticks flush the rest

        await LosePowerAtTheNextWriteAsync(again, w, device!, () => random.Next(blocks / 2));

        await using (Pool third = Pool.Open(rare))
        {
            Assert.True(third.TryGetVolume("v", out Volume x));
            for (int k = 0; k < last.Length; k++)
            {
                byte[] got = await ReadAsync(x, (long)(blocks / 2 + k) * Chunk, Chunk);
                Assert.True(last[k].AsSpan().SequenceEqual(got), $"seed {seed}: block {blocks / 2 + k} lost a write the idle flush made durable");
            }
        }
        await AssertCleanAsync(dir.Path, output);
    }

    [Fact]
    public async Task MovedDataLostBehindItsDurableBatchEndsTheLogThereAndLosesNothing()
    {
        int seed = Seed(output);
        var random = new Random(seed);
        using var dir = new TempPoolDir();
        const int blocks = 8192; // 32 MiB in a pool of 20 segments (80 MiB): the cleaner must run
        var versions = new BlockVersions(blocks);
        PoolOptions plain = Options(dir.Path, segments: 20, cachePages: 256);
        FaultyDevice? device = null;
        Pool pool = Pool.Open(Faulty(plain, seed, d => device = d));
        Volume v = await pool.CreateVolumeAsync("v", (long)blocks * Chunk, 512, None);
        for (int b = 0; b < blocks; b++)
        {
            versions.Written(b, 1);
            await v.WriteAsync((long)b * Chunk, Pattern(b, 1), WriteFlags.None, None);
        }
        await v.FlushAsync(None);
        versions.AllDurable();

        // Host batches go to the log head in runs of adjacent writes before each flush; only a
        // cleaner batch whose data went to the cleaner's own segment writes two places before
        // its flush: that is where the power fails.
        device!.ArmLoseEarlierWrites();
        int version = 1, ops = 0;
        try
        {
            while (ops++ < 60_000)
            {
                if (ops % 500 == 0)
                {
                    await v.FlushAsync(None);
                    versions.AllDurable();
                    continue;
                }
                int block = random.Next(blocks), value = ++version;
                versions.Written(block, value);
                await v.WriteAsync((long)block * Chunk, Pattern(block, value), WriteFlags.None, None);
            }
        }
        catch (StorageException e)
        {
            output.WriteLine($"crashed after {ops} ops: {e.Message}; lost write {device.LastLoss}");
        }
        Assert.True(device.LastLoss != null, $"the cleaner never wrote moved data to its own segment in {ops} ops");
        await pool.AbandonAsync();

        await using (Pool again = Pool.Open(plain))
        {
            Assert.True(again.TryGetVolume("v", out Volume w));
            await versions.AssertDurableOrWrittenSinceAsync(w, $"seed {seed}");
        }
        await AssertCleanAsync(dir.Path, output);
    }

    /// <summary>
    /// What each block may hold after a crash: its durable version (0 = zeros), or any version
    /// written since (not yet covered by a FLUSH, FUA, wt or trim); and the newest version written.
    /// </summary>
    /// <summary>
    /// The power fails at the device's next write and takes every write since the last flush with
    /// it: the volume is written (blocks from <paramref name="block"/>) until a write fails, then
    /// the pool is abandoned as a crash leaves it.
    /// </summary>
    private async Task LosePowerAtTheNextWriteAsync(Pool pool, Volume volume, FaultyDevice device, Func<long> block)
    {
        device.ArmPowerLoss(0, loseAll: true);
        try
        {
            for (int i = 0; i < 2000; i++)
            {
                long b = block();
                await volume.WriteAsync(b * Chunk, Pattern(b, 999_999), WriteFlags.None, None);
            }
            await volume.FlushAsync(None);
        }
        catch (StorageException e)
        {
            output.WriteLine($"power lost: {e.Message}");
        }
        Assert.NotNull(device.LastPowerLoss);
        await pool.AbandonAsync();
    }

    private sealed class BlockVersions(int blocks)
    {
        private readonly int[] _durable = new int[blocks];
        private readonly int[] _latest = new int[blocks];
        private readonly HashSet<int>[] _since = Enumerable.Range(0, blocks).Select(_ => new HashSet<int>()).ToArray();

        public int Latest(int block) => _latest[block];

        public void Written(int block, int version)
        {
            _since[block].Add(version);
            _latest[block] = version;
        }

        /// <summary>The block's newest version is durable (a FUA or wt write, a trim).</summary>
        public void Durable(int block)
        {
            _durable[block] = _latest[block];
            _since[block].Clear();
        }

        /// <summary>A FLUSH returned: every block's newest version is durable.</summary>
        public void AllDurable()
        {
            for (int b = 0; b < _durable.Length; b++) if (_since[b].Count > 0) Durable(b);
        }

        /// <summary>
        /// Every block reads as its durable version or one written since; afterwards that version
        /// is the block's durable and newest one and nothing is pending.
        /// </summary>
        public async Task AssertDurableOrWrittenSinceAsync(Volume volume, string context)
        {
            byte[] got = new byte[Chunk];
            for (int b = 0; b < _durable.Length; b++)
            {
                await volume.ReadAsync((long)b * Chunk, got, None);
                int seen = -1;
                if (got.AsSpan().SequenceEqual(_durable[b] == 0 ? new byte[Chunk] : Pattern(b, _durable[b]))) seen = _durable[b];
                else foreach (int candidate in _since[b])
                    if (got.AsSpan().SequenceEqual(candidate == 0 ? new byte[Chunk] : Pattern(b, candidate))) { seen = candidate; break; }
                Assert.True(seen >= 0, $"{context}: block {b} holds neither its durable version {_durable[b]} nor one written since ({string.Join(",", _since[b])})");
                _durable[b] = seen;
                _latest[b] = seen;
                _since[b].Clear();
            }
        }
    }
}
