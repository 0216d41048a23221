// NBD hot paths. Expected: 0 B allocated per operation for every benchmark here.
// - NbdCodecBenchmarks: the pure parser and reply encoders, per request.
// - NbdLoopbackBenchmarks: a real NbdServer on 127.0.0.1 over a flat RAM volume, driven by an
//   allocation-free blocking client with 32 pipelined 4 KiB requests per batch. BenchmarkDotNet's
//   MemoryDiagnoser counts the whole process, so this shows the server's own per-request allocation.
using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using BenchmarkDotNet.Attributes;
using Microsoft.Extensions.Logging.Abstractions;
using Target.Dedup;
using Target.Protocol.Nbd;

namespace Target.Bench;

[MemoryDiagnoser]
public class NbdCodecBenchmarks
{
    private const int QueueDepth = 32;
    private const int Seed = 10809;

    private readonly byte[] _requests = new byte[QueueDepth * NbdLimits.RequestHeaderBytes];
    private readonly byte[] _replies = new byte[QueueDepth * NbdReplies.OffsetDataPrefixBytes];

    [GlobalSetup]
    public void Setup()
    {
        var random = new Random(Seed);
        for (int i = 0; i < QueueDepth; i++)
        {
            var header = new NbdRequestHeader(NbdCommandFlags.None, NbdCommand.Read, (ulong)i + 1, (ulong)random.Next(0, 1 << 18) * 4096, 4096);
            NbdRequest.Write(_requests.AsSpan(i * NbdLimits.RequestHeaderBytes), header);
        }
    }

    [Benchmark(OperationsPerInvoke = QueueDepth)]
    public ulong ParseRequests()
    {
        ReadOnlySpan<byte> input = _requests;
        ulong sum = 0;
        while (NbdRequest.TryParse(input, out NbdRequestHeader header, out int consumed) == NbdParseStatus.Complete)
        {
            sum += header.Offset + header.Handle;
            input = input.Slice(consumed);
        }
        return sum;
    }

    [Benchmark(OperationsPerInvoke = QueueDepth)]
    public int EncodeSimpleReplies()
    {
        Span<byte> output = _replies;
        int used = 0;
        for (int i = 0; i < QueueDepth; i++) used += NbdReplies.WriteSimpleReply(output.Slice(used), NbdError.None, (ulong)i);
        return used;
    }

    [Benchmark(OperationsPerInvoke = QueueDepth)]
    public int EncodeStructuredReadPrefixes()
    {
        Span<byte> output = _replies;
        int used = 0;
        for (int i = 0; i < QueueDepth; i++)
            used += NbdReplies.WriteOffsetDataPrefix(output.Slice(used), NbdReplyType.FlagDone, (ulong)i, (ulong)i * 4096, 4096);
        return used;
    }

    [Benchmark]
    public int EncodeErrorChunk() => NbdReplies.WriteErrorChunk(_replies, 7, NbdError.NoSpace, "no space left for volume 'disk'");

    [Benchmark]
    public int EncodeBlockStatus()
    {
        Span<byte> output = _replies;
        int used = NbdReplies.WriteBlockStatusPrefix(output, NbdReplyType.FlagDone, 9, NbdMetaContext.BaseAllocationId, 3);
        used += NbdReplies.WriteBlockStatusDescriptor(output.Slice(used), 4096, 0);
        used += NbdReplies.WriteBlockStatusDescriptor(output.Slice(used), 8192, NbdReplies.AllocationStatus(ExtentKind.Hole));
        used += NbdReplies.WriteBlockStatusDescriptor(output.Slice(used), 4096, NbdReplies.AllocationStatus(ExtentKind.Zero));
        return used;
    }
}

[MemoryDiagnoser]
public class NbdLoopbackBenchmarks
{
    private const int QueueDepth = 32;
    private const int BlockBytes = 4096;
    private const int VolumeBytes = 64 << 20;
    private const int Seed = 10810;

    [Params(NbdCommand.Read, NbdCommand.Write)]
    public NbdCommand Command { get; set; }

    private NbdServer _server = null!;
    private Task _run = null!;
    private CancellationTokenSource _stop = null!;
    private BlockingNbdClient _client = null!;
    private byte[] _batch = [];
    private byte[] _replies = [];

    [GlobalSetup]
    public void Setup()
    {
        var catalog = new NbdExportCatalog(new NbdExport("disk", new FlatVolume(VolumeBytes), "", false));
        _server = new NbdServer(catalog, new NbdServerOptions(), NullLogger<NbdServer>.Instance);
        _server.ListenTcp(new IPEndPoint(IPAddress.Loopback, 0));
        _stop = new CancellationTokenSource();
        _run = _server.RunAsync(_stop.Token);

        _client = BlockingNbdClient.Connect(_server.BoundEndPoints[0], "disk");

        var random = new Random(Seed);
        int payloadBytes = Command == NbdCommand.Write ? BlockBytes : 0;
        _batch = new byte[QueueDepth * (NbdLimits.RequestHeaderBytes + payloadBytes)];
        int used = 0;
        for (int i = 0; i < QueueDepth; i++)
        {
            ulong offset = (ulong)random.Next(0, VolumeBytes / BlockBytes) * BlockBytes;
            used += NbdRequest.Write(_batch.AsSpan(used), new NbdRequestHeader(NbdCommandFlags.None, Command, (ulong)i + 1, offset, BlockBytes));
            random.NextBytes(_batch.AsSpan(used, payloadBytes));
            used += payloadBytes;
        }
        _replies = new byte[QueueDepth * (NbdLimits.SimpleReplyHeaderBytes + (Command == NbdCommand.Read ? BlockBytes : 0))];
    }

    /// <summary>32 pipelined requests in one send; all 32 replies (any order) received.</summary>
    [Benchmark(OperationsPerInvoke = QueueDepth)]
    public uint Pipelined4KiB()
    {
        _client.Send(_batch);
        _client.ReceiveExactly(_replies);
        return BinaryPrimitives.ReadUInt32BigEndian(_replies);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _client.Dispose();
        _stop.Cancel();
        _run.GetAwaiter().GetResult();
        _server.DisposeAsync().AsTask().GetAwaiter().GetResult();
    }

    /// <summary>A flat RAM volume that completes every call synchronously: only the server's costs are measured.</summary>
    private sealed class FlatVolume(int sizeBytes) : IBlockVolume
    {
        private readonly byte[] _bytes = new byte[sizeBytes];

        public string Name => "flat";
        public long SizeBytes => _bytes.Length;
        public int LogicalBlockSize => 512;
        public int PreferredBlockSize => BlockBytes;
        public Guid Uuid { get; } = Guid.NewGuid();
        public VolumeCapabilities Capabilities => VolumeCapabilities.Trim | VolumeCapabilities.WriteZeroes;

        public ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken ct)
        {
            _bytes.AsSpan((int)offset, destination.Length).CopyTo(destination.Span);
            return default;
        }

        public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, WriteFlags flags, CancellationToken ct)
        {
            source.Span.CopyTo(_bytes.AsSpan((int)offset));
            return default;
        }

        public ValueTask FlushAsync(CancellationToken ct) => default;

        public ValueTask TrimAsync(long offset, long length, CancellationToken ct)
        {
            _bytes.AsSpan((int)offset, (int)length).Clear();
            return default;
        }

        public ValueTask WriteZeroesAsync(long offset, long length, ZeroFlags flags, CancellationToken ct) => TrimAsync(offset, length, ct);

        public ValueTask<ExtentList> GetAllocationAsync(long offset, long length, CancellationToken ct)
        {
            var extents = new ExtentList();
            extents.Add(offset, length, ExtentKind.Data);
            return ValueTask.FromResult(extents);
        }

        public ValueTask<bool> CompareAndWriteAsync(long offset, ReadOnlyMemory<byte> expected, ReadOnlyMemory<byte> source, CancellationToken ct)
            => throw new NotSupportedException();

        public ValueTask CopyAsync(long sourceOffset, IBlockVolume destination, long destinationOffset, long length, CancellationToken ct)
            => throw new NotSupportedException();
    }
}
