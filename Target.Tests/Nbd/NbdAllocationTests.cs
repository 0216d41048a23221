// Allocation on the NBD request path of a running server, in steady state. Invariant: reads (from
// the device through io_uring, and from the read cache) and 4 KiB writes into the write cache
// allocate nothing per request on any thread (receive loop, engine, io_uring thread, sender),
// through the metrics decorator the real host puts around each volume.
// Measured with GC.GetTotalAllocatedBytes (every thread) over many pipelined requests from an
// allocation-free blocking client, after a warm-up, minus what the process allocates while idle for
// as long (the pool's background timers, destager and cleaner ticks, allocate a little whatever
// the load); the budget is well under one byte per request, since one small object every few
// requests would already exceed it. Runs alone (the interop collection) so no other test allocates
// meanwhile. Not timed. On failure the sampled allocation types (GC AllocationTick) are printed.
using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging.Abstractions;
using Target.Dedup;
using Target.Metrics;
using Target.Protocol.Nbd;
using Target.Tests.Engine;
using Target.Tests.Interop;
using Target.Tests.Support;
using Xunit.Abstractions;

namespace Target.Tests.Nbd;

[Collection(InteropCollection.Name)]
public sealed class NbdAllocationTests(ITestOutputHelper output)
{
    private const int QueueDepth = 32;
    private const int BlockBytes = Pool.ChunkBytes;
    private const long VolumeBytes = 32L << 20;
    private const int WarmupBatches = 400;
    private const int MeasuredBatches = 3000;

    /// <summary>
    /// Allocated bytes allowed per request, all threads, after subtracting what the process
    /// allocates in as long idle. What is left is background work that grows with load (timer
    /// waits of the destager and cleaner, tier-1 JIT), measured at 0.0-0.6 B; one object per
    /// request (24 B or more) is far above this, and one per 32-request batch (0.75 B) above too.
    /// </summary>
    private const double BytesPerRequestMax = 0.7;

    public enum Kind { DeviceRead, CachedRead, Write }

    [Theory]
    [InlineData(Kind.DeviceRead)]
    [InlineData(Kind.CachedRead)]
    [InlineData(Kind.Write)]
    public async Task SteadyStateRequestsAllocateNothing(Kind kind)
    {
        using var dir = new TempPoolDir();
        // The write cache holds the whole volume: writes never wait for destage (that slow path is
        // not the steady state measured here).
        PoolOptions options = EngineTest.Options(dir.Path, segments: 64, cachePages: 2 * (int)(VolumeBytes / BlockBytes)) with
        {
            ReadCacheBytes = kind == Kind.DeviceRead ? 0 : 64L << 20,
            CheckpointJournalBytes = 4L << 20,
        };
        await using Pool pool = Pool.Open(options);
        Volume volume = await pool.CreateVolumeAsync("disk", VolumeBytes, 512, CancellationToken.None);
        var random = new Random(6);
        byte[] fill = new byte[1 << 20];
        for (long offset = 0; offset < VolumeBytes; offset += fill.Length)
        {
            random.NextBytes(fill);
            await volume.WriteAsync(offset, fill, WriteFlags.None, CancellationToken.None);
        }
        await volume.FlushAsync(CancellationToken.None);
        output.WriteLine($"io_uring reads: {pool.ReadsUseIoUring}");

        var catalog = new NbdExportCatalog(new NbdExport("disk", new MeteredVolume(volume), "", false));
        await using var server = new NbdServer(catalog, new NbdServerOptions(), NullLogger<NbdServer>.Instance);
        server.ListenTcp(new IPEndPoint(IPAddress.Loopback, 0));
        using var stop = new CancellationTokenSource();
        Task run = server.RunAsync(stop.Token);
        try
        {
            await Task.Run(() => Drive(kind, server.BoundEndPoints[0], random));
        }
        finally
        {
            stop.Cancel();
            await run;
        }
    }

    private void Drive(Kind kind, EndPoint endPoint, Random random)
    {
        using var client = new Client(endPoint);
        bool write = kind == Kind.Write;
        int payloadBytes = write ? BlockBytes : 0;
        const int batches = 64;
        byte[][] requests = new byte[batches][];
        for (int b = 0; b < batches; b++)
        {
            requests[b] = new byte[QueueDepth * (NbdLimits.RequestHeaderBytes + payloadBytes)];
            int used = 0;
            for (int i = 0; i < QueueDepth; i++)
            {
                ulong offset = (ulong)random.NextInt64(VolumeBytes / BlockBytes) * BlockBytes;
                used += NbdRequest.Write(requests[b].AsSpan(used), new NbdRequestHeader(NbdCommandFlags.None, write ? NbdCommand.Write : NbdCommand.Read, (ulong)i + 1, offset, BlockBytes));
                random.NextBytes(requests[b].AsSpan(used, payloadBytes));
                used += payloadBytes;
            }
        }
        int replyStride = NbdLimits.SimpleReplyHeaderBytes + (write ? 0 : BlockBytes);
        byte[] replies = new byte[QueueDepth * replyStride];
        long stamp = 0;

        void RunBatches(int count)
        {
            for (int n = 0; n < count; n++)
            {
                byte[] batch = requests[n % batches];
                if (write)
                {
                    stamp++;
                    for (int i = 0; i < QueueDepth; i++)
                        BinaryPrimitives.WriteInt64LittleEndian(batch.AsSpan(i * (NbdLimits.RequestHeaderBytes + BlockBytes) + NbdLimits.RequestHeaderBytes), stamp * QueueDepth + i);
                }
                client.Send(batch);
                client.ReceiveExactly(replies);
                for (int i = 0; i < QueueDepth; i++)
                {
                    // (Not Assert.Equal: xunit's comparer allocates, and this loop is measured.)
                    if (BinaryPrimitives.ReadUInt32BigEndian(replies.AsSpan(i * replyStride + 4)) != 0) throw new InvalidOperationException("NBD error reply");
                }
            }
        }

        RunBatches(WarmupBatches);
        // Best of up to three measurements: background work (timers, other threads of the test
        // host) lands in a window now and then, while an allocation on the request path would show
        // in every one of them.
        double best = double.MaxValue;
        for (int attempt = 1; attempt <= 3 && best > BytesPerRequestMax; attempt++)
        {
            using var sampler = new AllocationSampler();
            long before = GC.GetTotalAllocatedBytes(precise: true);
            long started = Stopwatch.GetTimestamp();
            RunBatches(MeasuredBatches);
            long allocated = GC.GetTotalAllocatedBytes(precise: true) - before;
            TimeSpan busy = Stopwatch.GetElapsedTime(started);
            // The same time idle: what the pool's timers allocate whatever the load.
            before = GC.GetTotalAllocatedBytes(precise: true);
            Thread.Sleep(busy);
            long idle = GC.GetTotalAllocatedBytes(precise: true) - before;
            double perRequest = (double)Math.Max(0, allocated - idle) / (MeasuredBatches * QueueDepth);
            output.WriteLine($"{kind} (attempt {attempt}): {allocated} B allocated over {MeasuredBatches * QueueDepth} requests in {busy.TotalMilliseconds:F0} ms, {idle} B in as long idle: {perRequest:F3} B per request");
            if (perRequest > BytesPerRequestMax)
            {
                foreach ((string type, int count) in sampler.Samples()) output.WriteLine($"  sampled allocation: {type} x{count}");
            }
            best = Math.Min(best, perRequest);
        }
        Assert.True(best <= BytesPerRequestMax, $"{kind}: {best:F3} B allocated per request at best of 3 (budget {BytesPerRequestMax})");
    }

    /// <summary>Blocking socket client: synchronous sends and receives allocate nothing.</summary>
    private sealed class Client : IDisposable
    {
        private readonly Socket _socket = new(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true, ReceiveTimeout = 30_000, SendTimeout = 30_000 };

        public Client(EndPoint endPoint)
        {
            _socket.Connect(endPoint);
            byte[] buffer = new byte[256];
            ReceiveExactly(buffer.AsSpan(0, 18));
            BinaryPrimitives.WriteUInt32BigEndian(buffer, NbdHandshakeFlags.ClientFixedNewstyle | NbdHandshakeFlags.ClientNoZeroes);
            Send(buffer.AsSpan(0, 4));
            int used = NbdOptions.WriteHeader(buffer, NbdOption.Go, 4 + 4 + 2);
            BinaryPrimitives.WriteUInt32BigEndian(buffer.AsSpan(used), 4);
            "disk"u8.CopyTo(buffer.AsSpan(used + 4));
            BinaryPrimitives.WriteUInt16BigEndian(buffer.AsSpan(used + 8), 0);
            Send(buffer.AsSpan(0, used + 10));
            while (true)
            {
                ReceiveExactly(buffer.AsSpan(0, NbdLimits.OptionReplyHeaderBytes));
                uint type = BinaryPrimitives.ReadUInt32BigEndian(buffer.AsSpan(12));
                int length = (int)BinaryPrimitives.ReadUInt32BigEndian(buffer.AsSpan(16));
                ReceiveExactly(new byte[length]);
                if (type == NbdOptionReply.Ack) return;
                Assert.True((type & NbdOptionReply.ErrorBit) == 0, $"NBD_OPT_GO failed: 0x{type:x8}");
            }
        }

        public void Send(ReadOnlySpan<byte> bytes)
        {
            while (!bytes.IsEmpty) bytes = bytes.Slice(_socket.Send(bytes));
        }

        public void ReceiveExactly(Span<byte> destination)
        {
            while (!destination.IsEmpty)
            {
                int received = _socket.Receive(destination);
                if (received == 0) throw new EndOfStreamException("server closed");
                destination = destination.Slice(received);
            }
        }

        public void Dispose() => _socket.Dispose();
    }
}
