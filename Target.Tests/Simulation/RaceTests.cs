// Requests that arrive while a metadata batch is being written (the device decorator runs them
// from inside the journal write). Invariants: a write to a volume that is being deleted or
// shrunk never leaves the pool with a batch it cannot apply — the pool keeps working, reopens,
// and the checker is clean.
using Target.Dedup;
using Target.Tests.Engine;
using Xunit.Abstractions;
using static Target.Tests.Engine.EngineTest;

namespace Target.Tests.Simulation;

public sealed class RaceTests(ITestOutputHelper output)
{
    private static readonly CancellationToken None = CancellationToken.None;

    [Theory]
    [InlineData("delete")]
    [InlineData("shrink")]
    public async Task AWriteDuringDeleteOrShrinkDoesNotBreakThePool(string change)
    {
        using var dir = new TempPoolDir();
        PoolOptions plain = Options(dir.Path);
        FaultyDevice? device = null;
        Pool pool = Pool.Open(plain with { DeviceDecorator = d => device = new FaultyDevice(d, 1) });
        try
        {
            Volume a = await pool.CreateVolumeAsync("a", 1 << 20, 512, None);
            Volume keep = await pool.CreateVolumeAsync("keep", 1 << 20, 512, None);
            for (long b = 0; b < 64; b++) await WriteAsync(a, b * Chunk, Pattern(b, 1));
            await a.FlushAsync(None);
            int fired = 0;
            device!.BeforeWrite = (_, _) =>
            {
                if (Interlocked.Exchange(ref fired, 1) == 0)
                    a.WriteAsync(200 * Chunk, Pattern(200, 2), WriteFlags.None, None).AsTask().GetAwaiter().GetResult();
            };
            if (change == "delete") await pool.DeleteVolumeAsync("a", None);
            else await pool.ResizeVolumeAsync("a", 100 * Chunk, None);
            device.BeforeWrite = null;
            Assert.Equal(1, fired);
            await WriteAsync(keep, 0, Pattern(0, 3));
            await keep.FlushAsync(None);
            Assert.Equal(Pattern(0, 3), await ReadAsync(keep, 0, Chunk));
        }
        finally
        {
            await pool.DisposeAsync();
        }
        await using (Pool again = Pool.Open(plain))
        {
            Assert.True(again.TryGetVolume("keep", out Volume keep));
            Assert.Equal(Pattern(0, 3), await ReadAsync(keep, 0, Chunk));
            Assert.Equal(change == "shrink", again.TryGetVolume("a", out _));
        }
        await AssertCleanAsync(dir.Path, output);
    }
}
