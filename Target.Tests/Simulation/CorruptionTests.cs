// Damaged storage. Invariants: a chunk whose bytes were corrupted on the device is never
// returned (reads of every block mapped to it throw MediaErrorException; other blocks read
// fine; dedup never shares it; overwriting the block heals it) and the checker reports it; a
// corrupted or truncated newest checkpoint makes recovery fall back to the other one plus the
// journal, with all data.
using Target.Dedup;
using Target.Tests.Engine;
using Xunit.Abstractions;
using static Target.Tests.Engine.EngineTest;

namespace Target.Tests.Simulation;

public sealed class CorruptionTests(ITestOutputHelper output)
{
    private static readonly CancellationToken None = CancellationToken.None;

    /// <summary>Byte offset of the one 4 KiB-aligned block of the device file equal to <paramref name="content"/>.</summary>
    internal static long FindChunk(string deviceFile, byte[] content)
    {
        using var file = new FileStream(deviceFile, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1 << 20);
        byte[] block = new byte[Chunk];
        long found = -1;
        for (long offset = 0; offset + Chunk <= file.Length; offset += Chunk)
        {
            file.ReadExactly(block);
            if (block.AsSpan().SequenceEqual(content))
            {
                Assert.True(found < 0, "the chunk is stored twice");
                found = offset;
            }
        }
        Assert.True(found >= 0, "chunk not found in the device file");
        return found;
    }

    internal static void FlipBit(string path, long offset, int bit)
    {
        using var file = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
        file.Position = offset;
        int b = file.ReadByte();
        file.Position = offset;
        file.WriteByte((byte)(b ^ (1 << bit)));
        file.Flush(flushToDisk: true);
    }

    [Fact]
    public async Task AFlippedBitInAStoredChunkIsAMediaErrorNeverData()
    {
        int seed = Seed(output);
        var random = new Random(seed);
        using var dir = new TempPoolDir();
        PoolOptions options = Options(dir.Path);
        byte[] victim = Pattern(5, 1);
        await using (Pool pool = Pool.Open(options))
        {
            Volume v = await pool.CreateVolumeAsync("v", 1 << 20, 512, None);
            for (long b = 0; b < 20; b++) await WriteAsync(v, b * Chunk, b == 5 || b == 15 ? victim : Pattern(b, 1));
        }
        long at = FindChunk(dir.DeviceFile, victim) + random.Next(Chunk);
        FlipBit(dir.DeviceFile, at, random.Next(8));
        output.WriteLine($"flipped a bit of byte {at}");

        PoolCheckReport report = await PoolChecker.CheckAsync(dir.Path, false, null, None);
        foreach (string p in report.Problems) output.WriteLine(p);
        Assert.False(report.Clean);
        Assert.Contains(report.Problems, p => p.Contains("CRC"));

        await using (Pool pool = Pool.Open(options))
        {
            pool.TryGetVolume("v", out Volume v);
            await Assert.ThrowsAsync<MediaErrorException>(() => v.ReadAsync(5 * Chunk, new byte[Chunk], None).AsTask());
            await Assert.ThrowsAsync<MediaErrorException>(() => v.ReadAsync(15 * Chunk + 100, new byte[10], None).AsTask());
            await Assert.ThrowsAsync<MediaErrorException>(() => v.ReadAsync(4 * Chunk, new byte[3 * Chunk], None).AsTask());
            for (long b = 0; b < 20; b++)
                if (b != 5 && b != 15) Assert.Equal(Pattern(b, 1), await ReadAsync(v, b * Chunk, Chunk));
            // Writing the same bytes elsewhere must not share the corrupt chunk.
            await WriteAsync(v, 30 * Chunk, victim);
            await v.FlushAsync(None);
            Assert.Equal(victim, await ReadAsync(v, 30 * Chunk, Chunk));
            // Overwriting the damaged blocks heals them.
            await WriteAsync(v, 5 * Chunk, Pattern(5, 2));
            await v.TrimAsync(15 * Chunk, Chunk, None);
            await v.FlushAsync(None);
            Assert.Equal(Pattern(5, 2), await ReadAsync(v, 5 * Chunk, Chunk));
        }
        await AssertCleanAsync(dir.Path, output);
    }

    private static ulong CheckpointSeq(string path)
    {
        byte[] header = new byte[16];
        using var f = File.OpenRead(path);
        f.ReadExactly(header);
        return BitConverter.ToUInt64(header, 8);
    }

    [Theory]
    [InlineData("body")]
    [InlineData("header")]
    [InlineData("truncate")]
    [InlineData("older")]
    public async Task ACorruptedCheckpointFallsBackToTheOtherOne(string damage)
    {
        int seed = Seed(output);
        var random = new Random(seed);
        using var dir = new TempPoolDir();
        PoolOptions options = Options(dir.Path);
        const long size = 2L << 20;
        byte[] shadow = new byte[size];
        for (int session = 0; session < 3; session++)
        {
            await using Pool pool = Pool.Open(options);
            Volume v = session == 0 ? await pool.CreateVolumeAsync("v", size, 512, None) : (pool.TryGetVolume("v", out Volume e) ? e : throw new Exception());
            for (int i = 0; i < 100; i++)
            {
                long b = random.NextInt64(size / Chunk);
                byte[] data = Pattern(b, session * 1000 + i);
                await WriteAsync(v, b * Chunk, data);
                data.CopyTo(shadow, b * Chunk);
                if (i % 30 == 0) await v.FlushAsync(None);
            }
            if (session == 1) await v.TrimAsync(0, 20 * Chunk, None);
            if (session == 1) Array.Clear(shadow, 0, 20 * Chunk);
        }
        string c0 = Path.Combine(dir.Path, "checkpoint-0"), c1 = Path.Combine(dir.Path, "checkpoint-1");
        string newest = CheckpointSeq(c0) > CheckpointSeq(c1) ? c0 : c1;
        string target = damage == "older" ? (newest == c0 ? c1 : c0) : newest;
        long length = new FileInfo(target).Length;
        switch (damage)
        {
            case "body": case "older": FlipBit(target, random.NextInt64(4096, length), random.Next(8)); break;
            case "header": FlipBit(target, random.Next(0, 64), random.Next(8)); break;
            default: using (var f = new FileStream(target, FileMode.Open)) f.SetLength(length / 2); break;
        }
        await using (Pool pool = Pool.Open(options))
        {
            Assert.True(pool.TryGetVolume("v", out Volume v));
            await AssertContentAsync(v, shadow, $"seed {seed}, damaged {damage}");
            await WriteAsync(v, 0, Pattern(0, 9));
            Pattern(0, 9).CopyTo(shadow, 0);
        }
        await AssertCleanAsync(dir.Path, output);
        await using (Pool pool = Pool.Open(options))
        {
            pool.TryGetVolume("v", out Volume v);
            await AssertContentAsync(v, shadow, $"seed {seed}, after the damaged checkpoint was replaced");
        }
    }
}
