// Crash tests. Invariant under test: a write acknowledged before a FLUSH returned (or written in
// wt mode) survives SIGKILL of the process at any instant; every sector reads back as one of
// the values the host could legitimately see; the pool opens without a manual step and
// `pool check` is clean. Iterations: TARGET_CRASH_ITERATIONS (default 50). Seeded: the seed is
// printed, and TARGET_CRASH_SEED replays a run.
using System.Diagnostics;
using Target.Dedup;
using Xunit.Abstractions;

namespace Target.Tests.Crash;

[Trait("Category", "Crash")]
public sealed class CrashTests(ITestOutputHelper output)
{
    [Fact]
    public Task KillNineDuringVerifiedWritesLosesNoFlushedWrite() =>
        RunAsync(volumeBytes: 64L << 20, poolBytes: 1L << 30, cacheBytes: 16L << 20, defaultIterations: 50, killWindowMs: (20, 700), expectCleaning: false);

    /// <summary>A pool only a little larger than the volume: the cleaner moves chunks all the time, and is killed mid-move.</summary>
    [Fact]
    public Task KillNineWhileTheCleanerMovesChunksLosesNoFlushedWrite() =>
        RunAsync(volumeBytes: 24L << 20, poolBytes: (1L << 20) + 12 * (4L << 20), cacheBytes: 2L << 20, defaultIterations: 30, killWindowMs: (200, 2500), expectCleaning: true);

    /// <remarks>The cleaner test keeps the write cache small: every dirty page holds a worst-case space reservation, and a cache as large as the pool's slack would leave the cleaner no room to move chunks.</remarks>
    private async Task RunAsync(long volumeBytes, long poolBytes, long cacheBytes, int defaultIterations, (int Min, int Max) killWindowMs, bool expectCleaning)
    {
        int sectors = (int)(volumeBytes / CrashPattern.SectorBytes);
        int iterations = int.TryParse(Environment.GetEnvironmentVariable("TARGET_CRASH_ITERATIONS"), out int n) ? n : defaultIterations;
        int seed = int.TryParse(Environment.GetEnvironmentVariable("TARGET_CRASH_SEED"), out int s) ? s : Environment.TickCount & 0x7FFFFFFF;
        output.WriteLine($"seed {seed}, {iterations} iterations (replay with TARGET_CRASH_SEED={seed})");
        var random = new Random(seed);
        string dir = Path.Combine(Path.GetTempPath(), $"target-crash-{seed}-{Guid.NewGuid():N}");
        string pool = Path.Combine(dir, "pool");
        Directory.CreateDirectory(dir);
        // Per sector: the value the last flush made durable, and every value written since.
        var durable = new long[sectors];
        var since = new HashSet<long>?[sectors];
        long cleaned = 0;
        long totalFlushes = 0, totalWrites = 0;
        try
        {
            for (int iteration = 0; iteration < iterations; iteration++)
            {
                string log = Path.Combine(dir, $"log-{iteration}");
                string mode = iteration % 3 == 2 ? "wt" : "1way-wb";
                int killAfterMs = random.Next(killWindowMs.Min, killWindowMs.Max);
                await RunAndKillAsync(pool, log, seed + iteration, (iteration + 1) * 10_000_000L, mode, killAfterMs, volumeBytes, poolBytes, cacheBytes);
                (int writes, int flushes, long segmentsCleaned) = Replay(File.ReadAllLines(log), durable, since);
                cleaned += segmentsCleaned;
                totalWrites += writes;
                totalFlushes += flushes;

                await using (Pool p = Pool.Open(new PoolOptions { Directory = pool }))
                {
                    Assert.True(p.TryGetVolume(CrashPattern.VolumeName, out Volume volume), $"iteration {iteration}: volume missing after crash");
                    byte[] data = new byte[volumeBytes];
                    await volume.ReadAsync(0, data, CancellationToken.None);
                    int lost = 0;
                    string? firstLoss = null;
                    for (int sector = 0; sector < sectors; sector++)
                    {
                        long actual = CrashPattern.Decode(data.AsSpan(sector * CrashPattern.SectorBytes, CrashPattern.SectorBytes), sector % 8);
                        bool allowed = actual == durable[sector] || (since[sector]?.Contains(actual) ?? false);
                        if (!allowed)
                        {
                            lost++;
                            firstLoss ??= $"sector {sector} (offset {sector * 512L}) holds tag {actual}; durable {durable[sector]}, written since {string.Join(",", since[sector] ?? new HashSet<long>())}";
                        }
                        durable[sector] = actual;
                        since[sector] = null;
                    }
                    Assert.True(lost == 0, $"seed {seed} iteration {iteration} ({mode}, kill after {killAfterMs} ms): {lost} sectors lost acknowledged data; first: {firstLoss}");
                }
                PoolCheckReport report = await PoolChecker.CheckAsync(pool, noDirect: false, progress: null, CancellationToken.None);
                Assert.True(report.Clean, $"seed {seed} iteration {iteration}: pool check: {string.Join("; ", report.Problems)}");
            }
            output.WriteLine($"{iterations} kills, {totalWrites} writes logged, {totalFlushes} flushes acknowledged, 0 lost");
            output.WriteLine($"the cleaner cleaned {cleaned} segments in the killed writers");
            if (expectCleaning) Assert.True(cleaned > 0, "the cleaner never ran in the writer, so this test proved nothing about it");
            Assert.True(totalFlushes > iterations, "the writer acknowledged too few flushes for the test to mean anything");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>Applies a writer's log to the expectation: after each F, the values written so far are durable.</summary>
    private static (int Writes, int Flushes, long SegmentsCleaned) Replay(string[] lines, long[] durable, HashSet<long>?[] since)
    {
        var touched = new List<int>();
        var latest = new Dictionary<int, long>();
        int writes = 0, flushes = 0;
        long segmentsCleaned = 0;
        foreach (string line in lines)
        {
            string[] f = line.Split(' ');
            switch (f[0])
            {
                case "W" when f.Length == 4:
                    Mark(long.Parse(f[1]), long.Parse(f[2]), long.Parse(f[3]));
                    writes++;
                    break;
                case "T" when f.Length == 3:
                    Mark(0, long.Parse(f[1]), long.Parse(f[2]));
                    break;
                case "F":
                    foreach ((int sector, long value) in latest)
                    {
                        durable[sector] = value;
                        since[sector] = null;
                    }
                    latest.Clear();
                    flushes++;
                    break;
                case "S" when f.Length == 3:
                    segmentsCleaned = Math.Max(segmentsCleaned, long.Parse(f[1]));
                    break;
                default:
                    // A torn last line: the operation it names was never started.
                    break;
            }
        }
        return (writes, flushes, segmentsCleaned);

        void Mark(long tag, long offset, long length)
        {
            for (long o = offset; o < offset + length; o += CrashPattern.SectorBytes)
            {
                int sector = (int)(o / CrashPattern.SectorBytes);
                (since[sector] ??= new HashSet<long>()).Add(tag);
                latest[sector] = tag;
            }
        }
    }

    private const int SigKill = 9;

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int Kill(int pid, int signal);

    private static async Task RunAndKillAsync(string pool, string log, int seed, long tagStart, string mode, int killAfterMs, long volumeBytes, long poolBytes, long cacheBytes)
    {
        string writer = Path.Combine(AppContext.BaseDirectory, "crash-writer.dll");
        Assert.True(File.Exists(writer), $"{writer} missing: build the solution");
        var psi = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string a in new[] { writer, "--pool", pool, "--log", log, "--seed", seed.ToString(), "--tag-start", tagStart.ToString(), "--mode", mode, "--volume-bytes", volumeBytes.ToString(), "--pool-bytes", poolBytes.ToString(), "--cache-bytes", cacheBytes.ToString() })
            psi.ArgumentList.Add(a);
        using Process child = Process.Start(psi)!;
        Task<string> errors = child.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        string? first = await child.StandardOutput.ReadLineAsync(timeout.Token);
        if (first != "ready")
        {
            child.Kill();
            await child.WaitForExitAsync();
            Assert.Fail($"crash writer did not start: {first} {await errors}");
        }
        await Task.Delay(killAfterMs);
        if (child.HasExited) Assert.Fail($"crash writer exited early: {await errors}");
        Assert.Equal(0, Kill(child.Id, SigKill));
        await child.WaitForExitAsync();
    }
}
