// Shared helpers for engine tests: a throw-away pool directory under /tmp (ext4, O_DIRECT),
// printed seeds (TARGET_TEST_SEED replays one), pool options sized for tests, a byte-for-byte
// shadow of a volume, and the offline checker asserted clean.
using System.Runtime.CompilerServices;
using Target.Dedup;
using Xunit.Abstractions;

namespace Target.Tests.Engine;

internal sealed class TempPoolDir : IDisposable
{
    public TempPoolDir(string root = "/tmp")
    {
        Path = System.IO.Path.Combine(root, "target-engine-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string DeviceFile => System.IO.Path.Combine(Path, "pool-0.dat");

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}

internal static class EngineTest
{
    public const int Chunk = Pool.ChunkBytes;
    public const long SegmentBytes = Pool.DefaultSegmentBytes;

    public static long PoolBytes(int segments) => (1L << 20) + segments * SegmentBytes;

    public static PoolOptions Options(string directory, int segments = 16, WriteMode mode = WriteMode.OneWayWriteBack, int cachePages = 1024) => new()
    {
        Directory = directory,
        CreateSizeBytes = PoolBytes(segments),
        WriteMode = mode,
        CacheBytes = (long)cachePages * Chunk,
    };

    /// <summary>A fresh seed (or TARGET_TEST_SEED), printed so a failure can be replayed.</summary>
    public static int Seed(ITestOutputHelper output, [CallerMemberName] string test = "")
    {
        string? fixedSeed = Environment.GetEnvironmentVariable("TARGET_TEST_SEED");
        int seed = fixedSeed != null ? int.Parse(fixedSeed) : Random.Shared.Next();
        output.WriteLine($"{test}: seed {seed} (replay with TARGET_TEST_SEED={seed})");
        return seed;
    }

    public static byte[] RandomBytes(Random random, int length)
    {
        byte[] b = new byte[length];
        random.NextBytes(b);
        return b;
    }

    /// <summary>A 4 KiB block whose bytes say which block and version it is (never all zero).</summary>
    public static byte[] Pattern(long block, int version, int length = Chunk)
    {
        byte[] b = new byte[length];
        var r = new Random(unchecked((int)(block * 7919 + version * 104729 + 1)));
        r.NextBytes(b);
        BitConverter.TryWriteBytes(b, block);
        BitConverter.TryWriteBytes(b.AsSpan(8), version);
        b[12] = 0xA5;
        return b;
    }

    public static async Task<byte[]> ReadAsync(IBlockVolume volume, long offset, int length)
    {
        byte[] b = new byte[length];
        await volume.ReadAsync(offset, b, CancellationToken.None);
        return b;
    }

    /// <summary>Reads the whole volume in pieces and compares it with the shadow; names the first differing block.</summary>
    public static async Task AssertContentAsync(IBlockVolume volume, byte[] shadow, string because = "")
    {
        Assert.Equal(shadow.LongLength, volume.SizeBytes);
        const int piece = 256 << 10;
        byte[] buffer = new byte[piece];
        for (long offset = 0; offset < shadow.LongLength; offset += piece)
        {
            int n = (int)Math.Min(piece, shadow.LongLength - offset);
            await volume.ReadAsync(offset, buffer.AsMemory(0, n), CancellationToken.None);
            if (!buffer.AsSpan(0, n).SequenceEqual(shadow.AsSpan((int)offset, n)))
            {
                int i = 0;
                while (buffer[i] == shadow[offset + i]) i++;
                Assert.Fail($"{because}: volume {volume.Name} differs from its shadow at byte {offset + i} (block {(offset + i) / Chunk})");
            }
        }
    }

    public static async Task<PoolCheckReport> AssertCleanAsync(string directory, ITestOutputHelper output)
    {
        PoolCheckReport report = await PoolChecker.CheckAsync(directory, noDirect: false, progress: null, CancellationToken.None);
        foreach (string p in report.Problems) output.WriteLine("check: " + p);
        Assert.True(report.Clean, "pool check found problems: " + string.Join("; ", report.Problems.Take(5)));
        return report;
    }

    public static Task WriteAsync(IBlockVolume volume, long offset, byte[] data, WriteFlags flags = WriteFlags.None) =>
        volume.WriteAsync(offset, data, flags, CancellationToken.None).AsTask();
}
