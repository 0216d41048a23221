// A pool that runs out of space. Invariants: writes of new data fail with the typed
// NoSpaceException (never an untyped error, never a failed pool); data already written keeps
// reading back; trims still work on a full pool; after trims and checkpoints free segments,
// writes succeed again; the checker is clean.
using Target.Dedup;
using Target.Tests.Engine;
using Xunit.Abstractions;
using static Target.Tests.Engine.EngineTest;

namespace Target.Tests.Simulation;

public sealed class FullPoolTests(ITestOutputHelper output)
{
    private static readonly CancellationToken None = CancellationToken.None;

    [Theory]
    [InlineData(WriteMode.OneWayWriteBack)]
    [InlineData(WriteMode.WriteThrough)]
    public async Task WritesFailTypedReadsAndTrimsGoOn(WriteMode mode)
    {
        using var dir = new TempPoolDir();
        PoolOptions options = Options(dir.Path, segments: 6, mode: mode, cachePages: 256);
        const long size = 64L << 20;
        await using (Pool pool = Pool.Open(options))
        {
            Volume v = await pool.CreateVolumeAsync("v", size, 512, None);
            long written = 0;
            NoSpaceException? full = null;
            for (long b = 0; b < size / Chunk; b++)
            {
                try
                {
                    await WriteAsync(v, b * Chunk, Pattern(b, 1));
                    written++;
                }
                catch (NoSpaceException e)
                {
                    full = e;
                    break;
                }
            }
            PoolStats stats = pool.GetStats();
            output.WriteLine($"{written} blocks written before: {full?.Message}; free {stats.FreeBytes}, segments free {stats.SegmentsFree}");
            Assert.NotNull(full);
            await v.FlushAsync(None);
            // Space reserved for cached pages but not used (headers are shared) comes back after the flush,
            // and segments in quarantine after the checkpoint that may end a destage turn just after the
            // flush returned: keep writing until a write fails right after a flush and a checkpoint,
            // when nothing is left in the background that could free space.
            for (int i = 0; i < 3000; i++)
            {
                try { await WriteAsync(v, written * Chunk, Pattern(written, 1)); written++; }
                catch (NoSpaceException)
                {
                    await v.FlushAsync(None);
                    await pool.CheckpointAsync(None);
                    try { await WriteAsync(v, written * Chunk, Pattern(written, 1)); written++; }
                    catch (NoSpaceException) { break; }
                }
            }
            await Assert.ThrowsAsync<NoSpaceException>(() => v.WriteAsync(written * Chunk, Pattern(written, 1), WriteFlags.None, None).AsTask());
            output.WriteLine($"{written} blocks written in all; free {pool.GetStats().FreeBytes}");
            // wt commits every single-block write as its own batch (header + data): about half the blocks hold
            // data. Dirty pages also leave the cleaner room to move one segment (a segment and its headers).
            Assert.True(written > (mode == WriteMode.WriteThrough ? 1900 : 3 * 1024), $"only {written} blocks fit in 6 segments of 1024");
            for (long b = 0; b < written; b += 7) Assert.Equal(Pattern(b, 1), await ReadAsync(v, b * Chunk, Chunk));
            // Trim works on a full pool, and reads of the rest go on.
            await v.TrimAsync(0, written / 2 * Chunk, None);
            Assert.Equal(new byte[Chunk], await ReadAsync(v, 0, Chunk));
            Assert.Equal(Pattern(written - 1, 1), await ReadAsync(v, (written - 1) * Chunk, Chunk));
            await v.TrimAsync(0, size, None);
            await pool.CheckpointAsync(None);
            await pool.CheckpointAsync(None);
            output.WriteLine($"after trim and two checkpoints: free {pool.GetStats().FreeBytes}, segments free {pool.GetStats().SegmentsFree}");
            for (long b = 0; b < 1024; b++) await WriteAsync(v, b * Chunk, Pattern(b, 2));
            await v.FlushAsync(None);
            Assert.Equal(Pattern(1000, 2), await ReadAsync(v, 1000 * Chunk, Chunk));
        }
        await AssertCleanAsync(dir.Path, output);
    }
}
