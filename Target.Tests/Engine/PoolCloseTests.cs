// Closing a pool while hosts still send it requests (a protocol server that did not stop in time,
// an admin request racing shutdown). Invariants: a clean close keeps every write it acknowledged
// (the final checkpoint comes after the last acknowledged write); a request that arrives once the
// pool is closing fails with the typed NotOwnerException (NBD ESHUTDOWN, SCSI NOT READY), never
// with another exception and never by touching memory the close has freed; the checker is clean.
using Target.Dedup;
using Xunit.Abstractions;
using static Target.Tests.Engine.EngineTest;

namespace Target.Tests.Engine;

public sealed class PoolCloseTests(ITestOutputHelper output)
{
    private static readonly CancellationToken None = CancellationToken.None;

    [Theory]
    [InlineData(WriteMode.OneWayWriteBack)]
    [InlineData(WriteMode.WriteThrough)]
    public async Task ClosingUnderHostLoadKeepsEveryAcknowledgedWriteAndRefusesLaterRequests(WriteMode mode)
    {
        int seed = Seed(output);
        using var dir = new TempPoolDir();
        const int writers = 4, blocksPerWriter = 64;
        PoolOptions options = Options(dir.Path, mode: mode, cachePages: 1024);
        // Per block: the last version acknowledged, and the version in flight when its writer stopped.
        int[] acknowledged = new int[writers * blocksPerWriter], inFlight = new int[writers * blocksPerWriter];
        var unexpected = new System.Collections.Concurrent.ConcurrentQueue<string>();
        int refused = 0;
        long requests = 0;

        Pool pool = Pool.Open(options);
        Volume v = await pool.CreateVolumeAsync("v", (long)writers * blocksPerWriter * Chunk, 512, None);
        // Each writer owns its blocks: writes a new version, sometimes with FUA, reads some back.
        async Task WriteUntilRefusedAsync(int writer)
        {
            var random = new Random(seed + writer);
            byte[] read = new byte[Chunk];
            for (int version = 1; ; version++)
            {
                int b = writer * blocksPerWriter + random.Next(blocksPerWriter);
                inFlight[b] = version;
                try
                {
                    switch (random.Next(8))
                    {
                        case 0:
                            await v.ReadAsync((long)b * Chunk, read, None);
                            byte[] expected = acknowledged[b] == 0 ? new byte[Chunk] : Pattern(b, acknowledged[b]);
                            if (!read.AsSpan().SequenceEqual(expected)) unexpected.Enqueue($"block {b} read wrong data before the close");
                            break;
                        case 1:
                            await v.FlushAsync(None);
                            break;
                        default:
                            await v.WriteAsync((long)b * Chunk, Pattern(b, version), random.Next(4) == 0 ? WriteFlags.Fua : WriteFlags.None, None);
                            acknowledged[b] = version;
                            break;
                    }
                    Interlocked.Increment(ref requests);
                }
                catch (NotOwnerException)
                {
                    Interlocked.Increment(ref refused);
                    return;
                }
                catch (Exception e)
                {
                    unexpected.Enqueue($"writer {writer}: {e.GetType().Name}: {e.Message}");
                    return;
                }
                inFlight[b] = 0;
            }
        }
        Task[] running = Enumerable.Range(0, writers).Select(w => Task.Run(() => WriteUntilRefusedAsync(w))).ToArray();
        while (Interlocked.Read(ref requests) < 2000) await Task.Delay(5);
        await pool.DisposeAsync();
        Task all = Task.WhenAll(running);
        Assert.True(await Task.WhenAny(all, Task.Delay(TimeSpan.FromSeconds(30))) == all, $"seed {seed}: hosts still running 30 s after the close");
        output.WriteLine($"{Interlocked.Read(ref requests)} requests before the close, {refused} refused after it");
        Assert.True(unexpected.IsEmpty, $"seed {seed}: " + string.Join("; ", unexpected.Take(5)));
        Assert.Equal(writers, refused);
        // A request after the close is refused the same way.
        await Assert.ThrowsAsync<NotOwnerException>(async () => await v.ReadAsync(0, new byte[Chunk], None));
        await Assert.ThrowsAsync<NotOwnerException>(async () => await v.WriteAsync(0, Pattern(0, 1), WriteFlags.None, None));

        await using (Pool again = Pool.Open(options with { CreateSizeBytes = null }))
        {
            Assert.True(again.TryGetVolume("v", out Volume w));
            for (int b = 0; b < acknowledged.Length; b++)
            {
                byte[] got = await ReadAsync(w, (long)b * Chunk, Chunk);
                bool isAcknowledged = acknowledged[b] == 0 ? got.AsSpan().IndexOfAnyExcept((byte)0) < 0 : got.AsSpan().SequenceEqual(Pattern(b, acknowledged[b]));
                bool isInFlight = inFlight[b] != 0 && got.AsSpan().SequenceEqual(Pattern(b, inFlight[b]));
                Assert.True(isAcknowledged || isInFlight,
                    $"seed {seed}: block {b} lost its acknowledged version {acknowledged[b]} in a clean close (in flight: {inFlight[b]})");
            }
        }
        await AssertCleanAsync(dir.Path, output);
    }
}
