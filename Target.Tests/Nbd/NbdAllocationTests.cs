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
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging.Abstractions;
using Target.Dedup;
using Target.Metrics;
using Target.Protocol.Nbd;
using Target.Tests.Engine;
using Target.Tests.Interop;
using Target.Tests.Support;
using static Target.Tests.Support.SteadyStateAllocation;
using Xunit.Abstractions;

namespace Target.Tests.Nbd;

[Collection(InteropCollection.Name)]
public sealed class NbdAllocationTests(ITestOutputHelper output)
{
    public enum Kind { DeviceRead, CachedRead, Write }

    [Theory]
    [InlineData(Kind.DeviceRead)]
    [InlineData(Kind.CachedRead)]
    [InlineData(Kind.Write)]
    public async Task SteadyStateRequestsAllocateNothing(Kind kind)
    {
        using var dir = new TempPoolDir();
        await using Pool pool = Pool.Open(Options(dir.Path, readCache: kind != Kind.DeviceRead));
        var random = new Random(6);
        Volume volume = await CreateFilledVolumeAsync(pool, 512, random);
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

        AssertAllocatesNothing(output, kind.ToString(), "request", RunBatches);
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

        public void Send(ReadOnlySpan<byte> bytes) => SendAll(_socket, bytes);

        public void ReceiveExactly(Span<byte> destination) => SteadyStateAllocation.ReceiveExactly(_socket, destination);

        public void Dispose() => _socket.Dispose();
    }
}
