// The whole NBD request path over a real pool: a real NbdServer on 127.0.0.1 serving a Volume of a
// pool on O_DIRECT files in /tmp, driven by an allocation-free blocking client that pipelines 32
// 4 KiB requests per batch and receives all 32 replies. Expected: 0 B allocated per operation.
// BenchmarkDotNet's MemoryDiagnoser counts every thread of the process (GC.GetTotalAllocatedBytes),
// so the figure covers the server's receive loop, the engine, the io_uring thread and the sender.
// - DeviceRead: read cache off, every read goes to the device (io_uring path).
// - CachedRead: the chunks are in the read cache (completes inline).
// - Write: unique data each batch (1way-wb: acknowledged from the write cache; destage, the
//   cleaner and checkpoints run in the background and are counted too).
// Run: dotnet run -c Release --project Target.Bench -- --filter '*NbdPoolBenchmarks*'
using System.Buffers.Binary;
using System.Net;
using BenchmarkDotNet.Attributes;
using Microsoft.Extensions.Logging.Abstractions;
using Target.Dedup;
using Target.Protocol.Nbd;

namespace Target.Bench;

public enum NbdPoolWorkload { DeviceRead, CachedRead, Write }

[MemoryDiagnoser]
public class NbdPoolBenchmarks
{
    private const int QueueDepth = 32;
    private const int BlockBytes = Pool.ChunkBytes;
    private const long VolumeBytes = 64L << 20;
    private const int Batches = 64;
    private const int Seed = 10811;

    [Params(NbdPoolWorkload.DeviceRead, NbdPoolWorkload.CachedRead, NbdPoolWorkload.Write)]
    public NbdPoolWorkload Workload { get; set; }

    private string _directory = null!;
    private Pool _pool = null!;
    private NbdServer _server = null!;
    private Task _run = null!;
    private CancellationTokenSource _stop = null!;
    private BlockingNbdClient _client = null!;
    private byte[][] _batches = [];
    private byte[] _replies = [];
    private int _replyStride;
    private int _next;
    private long _stamp;

    [GlobalSetup]
    public void Setup()
    {
        _directory = Path.Combine("/tmp", "target-bench-nbd-" + Guid.NewGuid().ToString("N")[..8]);
        _pool = Pool.Open(new PoolOptions
        {
            Directory = _directory,
            CreateSizeBytes = (1L << 20) + 256L * Pool.DefaultSegmentBytes,
            CheckpointJournalBytes = 4L << 20,
            ReadCacheBytes = Workload == NbdPoolWorkload.DeviceRead ? 0 : 128L << 20,
        });
        Volume volume = _pool.CreateVolumeAsync("disk", VolumeBytes, 512, CancellationToken.None).AsTask().GetAwaiter().GetResult();
        var random = new Random(Seed);
        byte[] chunk = new byte[1 << 20];
        for (long offset = 0; offset < VolumeBytes; offset += chunk.Length)
        {
            random.NextBytes(chunk);
            volume.WriteAsync(offset, chunk, WriteFlags.None, CancellationToken.None).AsTask().GetAwaiter().GetResult();
        }
        volume.FlushAsync(CancellationToken.None).AsTask().GetAwaiter().GetResult();

        var catalog = new NbdExportCatalog(new NbdExport("disk", volume, "", false));
        _server = new NbdServer(catalog, new NbdServerOptions(), NullLogger<NbdServer>.Instance);
        _server.ListenTcp(new IPEndPoint(IPAddress.Loopback, 0));
        _stop = new CancellationTokenSource();
        _run = _server.RunAsync(_stop.Token);
        _client = BlockingNbdClient.Connect(_server.BoundEndPoints[0], "disk");

        bool write = Workload == NbdPoolWorkload.Write;
        NbdCommand command = write ? NbdCommand.Write : NbdCommand.Read;
        int payloadBytes = write ? BlockBytes : 0;
        _batches = new byte[Batches][];
        for (int b = 0; b < Batches; b++)
        {
            byte[] batch = new byte[QueueDepth * (NbdLimits.RequestHeaderBytes + payloadBytes)];
            int used = 0;
            for (int i = 0; i < QueueDepth; i++)
            {
                ulong offset = (ulong)random.NextInt64(VolumeBytes / BlockBytes) * BlockBytes;
                used += NbdRequest.Write(batch.AsSpan(used), new NbdRequestHeader(NbdCommandFlags.None, command, (ulong)i + 1, offset, BlockBytes));
                random.NextBytes(batch.AsSpan(used, payloadBytes));
                used += payloadBytes;
            }
            _batches[b] = batch;
        }
        _replyStride = NbdLimits.SimpleReplyHeaderBytes + (write ? 0 : BlockBytes);
        _replies = new byte[QueueDepth * _replyStride];
    }

    /// <summary>32 pipelined 4 KiB requests in one send; all 32 replies received and checked.</summary>
    [Benchmark(OperationsPerInvoke = QueueDepth)]
    public uint Pipelined4KiB()
    {
        byte[] batch = _batches[_next];
        _next = (_next + 1) % Batches;
        if (Workload == NbdPoolWorkload.Write)
        {
            // Unique data every time: a fresh stamp at the start of each payload.
            long stamp = ++_stamp;
            int stride = NbdLimits.RequestHeaderBytes + BlockBytes;
            for (int i = 0; i < QueueDepth; i++) BinaryPrimitives.WriteInt64LittleEndian(batch.AsSpan(i * stride + NbdLimits.RequestHeaderBytes), stamp * QueueDepth + i);
        }
        _client.Send(batch);
        _client.ReceiveExactly(_replies);
        for (int i = 0; i < QueueDepth; i++)
        {
            uint error = BinaryPrimitives.ReadUInt32BigEndian(_replies.AsSpan(i * _replyStride + 4));
            if (error != 0) throw new InvalidOperationException($"NBD error {error}");
        }
        return BinaryPrimitives.ReadUInt32BigEndian(_replies);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _client.Dispose();
        _stop.Cancel();
        _run.GetAwaiter().GetResult();
        _server.DisposeAsync().AsTask().GetAwaiter().GetResult();
        _pool.DisposeAsync().AsTask().GetAwaiter().GetResult();
        Directory.Delete(_directory, recursive: true);
    }
}
