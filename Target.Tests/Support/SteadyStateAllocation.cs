// What NbdAllocationTests and IscsiAllocationTests share: a pool with one volume written full of
// random data, and the measurement. Warm-up, then up to three windows of pipelined requests, each
// counted with GC.GetTotalAllocatedBytes (every thread) minus what the process allocates idle for
// as long; the best window must stay within the budget. Not timed. The clients use blocking
// sockets (SendAll, ReceiveExactly): synchronous sends and receives allocate nothing.
using System.Diagnostics;
using System.Net.Sockets;
using Target.Dedup;
using Target.Tests.Engine;
using Xunit.Abstractions;

namespace Target.Tests.Support;

internal static class SteadyStateAllocation
{
    public const int BlockBytes = Pool.ChunkBytes;
    public const long VolumeBytes = 32L << 20;
    public const int QueueDepth = 32;
    private const int WarmupBatches = 400;
    private const int MeasuredBatches = 3000;

    /// <summary>
    /// Allocated bytes allowed per request, all threads, after subtracting what the process
    /// allocates in as long idle. What is left is background work that grows with load (timer
    /// waits of the destager and cleaner, tier-1 JIT), measured at 0.0-0.6 B; one object per
    /// request (24 B or more) is far above this, and one per 32-request batch (0.75 B) above too.
    /// </summary>
    public const double BytesPerRequestMax = 0.7;

    /// <summary>
    /// The write cache holds the whole volume: writes never wait for destage (that slow path is not
    /// the steady state measured here). The read cache is off for reads that must reach the device.
    /// </summary>
    public static PoolOptions Options(string directory, bool readCache) =>
        EngineTest.Options(directory, segments: 64, cachePages: 2 * (int)(VolumeBytes / BlockBytes)) with
        {
            ReadCacheBytes = readCache ? 64L << 20 : 0,
            CheckpointJournalBytes = 4L << 20,
        };

    /// <summary>A volume of <see cref="VolumeBytes"/>, written full of random data and flushed.</summary>
    public static async Task<Volume> CreateFilledVolumeAsync(Pool pool, int logicalBlockSize, Random random)
    {
        Volume volume = await pool.CreateVolumeAsync("disk", VolumeBytes, logicalBlockSize, CancellationToken.None);
        byte[] fill = new byte[1 << 20];
        for (long offset = 0; offset < VolumeBytes; offset += fill.Length)
        {
            random.NextBytes(fill);
            await volume.WriteAsync(offset, fill, WriteFlags.None, CancellationToken.None);
        }
        await volume.FlushAsync(CancellationToken.None);
        return volume;
    }

    /// <summary>
    /// Runs <paramref name="runBatches"/> (batches of <see cref="QueueDepth"/> requests) to warm up,
    /// then measures. Best of up to three windows: background work (timers, other threads of the
    /// test host) lands in a window now and then, while an allocation on the request path would
    /// show in every one of them. <paramref name="unit"/> names a request in the output ("request", "command").
    /// </summary>
    public static void AssertAllocatesNothing(ITestOutputHelper output, string label, string unit, Action<int> runBatches)
    {
        runBatches(WarmupBatches);
        double best = double.MaxValue;
        for (int attempt = 1; attempt <= 3 && best > BytesPerRequestMax; attempt++)
        {
            using var sampler = new AllocationSampler();
            long before = GC.GetTotalAllocatedBytes(precise: true);
            long started = Stopwatch.GetTimestamp();
            runBatches(MeasuredBatches);
            long allocated = GC.GetTotalAllocatedBytes(precise: true) - before;
            TimeSpan busy = Stopwatch.GetElapsedTime(started);
            // The same time idle: what the pool's timers allocate whatever the load.
            before = GC.GetTotalAllocatedBytes(precise: true);
            Thread.Sleep(busy);
            long idle = GC.GetTotalAllocatedBytes(precise: true) - before;
            double perRequest = (double)Math.Max(0, allocated - idle) / (MeasuredBatches * QueueDepth);
            output.WriteLine($"{label} (attempt {attempt}): {allocated} B allocated over {MeasuredBatches * QueueDepth} {unit}s in {busy.TotalMilliseconds:F0} ms, {idle} B in as long idle: {perRequest:F3} B per {unit}");
            if (perRequest > BytesPerRequestMax)
            {
                foreach ((string type, int count) in sampler.Samples()) output.WriteLine($"  sampled allocation: {type} x{count}");
            }
            best = Math.Min(best, perRequest);
        }
        Assert.True(best <= BytesPerRequestMax, $"{label}: {best:F3} B allocated per {unit} at best of 3 (budget {BytesPerRequestMax})");
    }

    /// <summary>Sends all of <paramref name="bytes"/> on a blocking socket.</summary>
    public static void SendAll(Socket socket, ReadOnlySpan<byte> bytes)
    {
        while (!bytes.IsEmpty) bytes = bytes.Slice(socket.Send(bytes));
    }

    /// <summary>Fills <paramref name="destination"/> from a blocking socket; the server closing first is an error.</summary>
    public static void ReceiveExactly(Socket socket, Span<byte> destination)
    {
        while (!destination.IsEmpty)
        {
            int received = socket.Receive(destination);
            if (received == 0) throw new EndOfStreamException("the server closed the connection");
            destination = destination.Slice(received);
        }
    }
}
