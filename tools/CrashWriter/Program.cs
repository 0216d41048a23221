// The crash tests' victim: opens a pool and does verified writes, trims and flushes until it is
// killed with SIGKILL. Before each operation it logs its intent ("W tag offset length",
// "T offset length"); after each flush returns it logs "F"; every 16 flushes it logs the
// cleaner's counters ("S segmentsCleaned bytesMoved"). Every 512-byte sector it writes is
// self-describing (CrashPattern), so the parent can tell which write a sector came from.
using Target.Dedup;

string? pool = null, logPath = null, mode = "1way-wb";
long seed = 1, tagStart = 1_000_000, volumeBytes = 64L << 20, poolBytes = 1L << 30, cacheBytes = 16L << 20;
for (int i = 0; i + 1 < args.Length; i += 2)
{
    switch (args[i])
    {
        case "--pool": pool = args[i + 1]; break;
        case "--log": logPath = args[i + 1]; break;
        case "--seed": seed = long.Parse(args[i + 1]); break;
        case "--tag-start": tagStart = long.Parse(args[i + 1]); break;
        case "--mode": mode = args[i + 1]; break;
        case "--volume-bytes": volumeBytes = long.Parse(args[i + 1]); break;
        case "--pool-bytes": poolBytes = long.Parse(args[i + 1]); break;
        case "--cache-bytes": cacheBytes = long.Parse(args[i + 1]); break;
        default: Console.Error.WriteLine($"unknown option {args[i]}"); return 2;
    }
}
if (pool == null || logPath == null) { Console.Error.WriteLine("usage: crash-writer --pool DIR --log FILE [--seed N] [--tag-start N] [--mode wt|1way-wb]"); return 2; }
if (!WriteModes.TryParse(mode, out WriteMode writeMode)) { Console.Error.WriteLine($"bad mode {mode}"); return 2; }

await using Pool p = Pool.Open(new PoolOptions
{
    Directory = pool,
    CreateSizeBytes = poolBytes,
    WriteMode = writeMode,
    CacheBytes = cacheBytes,
    CheckpointJournalBytes = 4L << 20,
    DirtyAgeMaxMs = 50,
});
if (!p.TryGetVolume(CrashPattern.VolumeName, out Volume volume))
    volume = await p.CreateVolumeAsync(CrashPattern.VolumeName, volumeBytes, 512, CancellationToken.None);

using var log = new StreamWriter(new FileStream(logPath, FileMode.Append, FileAccess.Write, FileShare.Read)) { AutoFlush = true };
var random = new Random(unchecked((int)seed));
long nextTag = tagStart;
byte[] buffer = new byte[8 * 4096];
Console.WriteLine("ready");
Console.Out.Flush();
long sectors = volume.SizeBytes / CrashPattern.SectorBytes;
long flushes = 0;
while (true)
{
    // Mostly short runs between flushes; one in eight long enough that a flush destages several
    // batches in one group (chunks shared and unshared across batches that are not applied yet).
    int ops = random.Next(8) == 0 ? random.Next(200, 600) : random.Next(1, 17);
    for (int i = 0; i < ops; i++)
    {
        int kind = random.Next(100);
        if (kind < 5)
        {
            long block = random.NextInt64(volume.SizeBytes / 4096 - 8);
            int blocks = random.Next(1, 9);
            log.WriteLine($"T {block * 4096} {blocks * 4096}");
            await volume.TrimAsync(block * 4096, blocks * 4096L, CancellationToken.None);
            continue;
        }
        bool shared = kind < 35;
        long tag = shared ? random.Next(1, CrashPattern.SharedTags + 1) : nextTag++;
        long offset, length;
        if (kind < 80)
        {
            int blocks = random.Next(1, 9);
            offset = random.NextInt64(volume.SizeBytes / 4096 - blocks) * 4096;
            length = blocks * 4096L;
        }
        else
        {
            int count = random.Next(1, 8);
            offset = random.NextInt64(sectors - count) * CrashPattern.SectorBytes;
            length = count * CrashPattern.SectorBytes;
        }
        for (long s = 0; s < length / CrashPattern.SectorBytes; s++)
            CrashPattern.Fill(buffer.AsSpan((int)(s * CrashPattern.SectorBytes), CrashPattern.SectorBytes), tag, (offset / CrashPattern.SectorBytes + s) % 8);
        log.WriteLine($"W {tag} {offset} {length}");
        await volume.WriteAsync(offset, buffer.AsMemory(0, (int)length), WriteFlags.None, CancellationToken.None);
    }
    await volume.FlushAsync(CancellationToken.None);
    log.WriteLine("F");
    if (++flushes % 16 == 0)
    {
        PoolStats stats = p.GetStats();
        log.WriteLine($"S {stats.GcSegmentsCleaned} {stats.GcBytesMoved}");
    }
}
