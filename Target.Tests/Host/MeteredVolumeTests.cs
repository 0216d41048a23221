using System.Diagnostics;
using Target.Admin;
using Target.Dedup;
using Target.Metrics;

namespace Target.Tests.Host;

public sealed class MeteredVolumeTests
{
    [Fact]
    public async Task Counts_ops_bytes_and_latency_per_op_type()
    {
        var inner = new FakeVolume();
        var volume = new MeteredVolume(inner);
        byte[] buffer = new byte[8192];

        await volume.WriteAsync(0, buffer, WriteFlags.None, default);
        await volume.WriteAsync(8192, buffer.AsMemory(0, 4096), WriteFlags.Fua, default);
        await volume.ReadAsync(0, buffer, default);
        await volume.FlushAsync(default);
        await volume.TrimAsync(0, 1 << 20, default);
        await volume.WriteZeroesAsync(0, 4096, ZeroFlags.None, default);
        ExtentList extents = await volume.GetAllocationAsync(0, 4096, default);
        Assert.True(await volume.CompareAndWriteAsync(0, buffer.AsMemory(0, 512), buffer.AsMemory(0, 512), default));

        Assert.Equal(2, volume.Metrics[VolumeOp.Write].Ops);
        Assert.Equal(8192 + 4096, volume.Metrics[VolumeOp.Write].Bytes);
        Assert.Equal(1, volume.Metrics[VolumeOp.Read].Ops);
        Assert.Equal(8192, volume.Metrics[VolumeOp.Read].Bytes);
        Assert.Equal(1, volume.Metrics[VolumeOp.Flush].Ops);
        Assert.Equal(1 << 20, volume.Metrics[VolumeOp.Trim].Bytes);
        Assert.Equal(1, volume.Metrics[VolumeOp.WriteZeroes].Ops);
        Assert.Equal(1, volume.Metrics[VolumeOp.BlockStatus].Ops);
        Assert.Equal(1, volume.Metrics[VolumeOp.CompareAndWrite].Ops);
        Assert.Same(inner.Extents, extents);
        Assert.Equal(2, volume.Metrics[VolumeOp.Write].Latency.Count);
        Assert.Equal([WriteFlags.None, WriteFlags.Fua], inner.WriteFlagsSeen);
    }

    [Fact]
    public async Task Forwards_asynchronous_completions_and_errors()
    {
        var inner = new FakeVolume { Delay = true };
        var volume = new MeteredVolume(inner);
        await volume.WriteAsync(0, new byte[4096], WriteFlags.None, default);
        Assert.True(await volume.CompareAndWriteAsync(0, new byte[1], new byte[1], default));
        Assert.Equal(1, volume.Metrics[VolumeOp.Write].Ops);

        inner.Fail = new NoSpaceException("full");
        await Assert.ThrowsAsync<NoSpaceException>(async () => await volume.WriteAsync(0, new byte[4096], WriteFlags.None, default));
        inner.Delay = false;
        await Assert.ThrowsAsync<NoSpaceException>(async () => await volume.WriteAsync(0, new byte[4096], WriteFlags.None, default));
        inner.ThrowSynchronously = true;
        Assert.Throws<NoSpaceException>(() => { _ = volume.WriteAsync(0, new byte[4096], WriteFlags.None, default); });
        Assert.Equal(3, volume.Metrics[VolumeOp.Write].Errors);
        Assert.Equal(1, volume.Metrics[VolumeOp.Write].Ops);
    }

    [Fact]
    public async Task Copy_hands_the_engine_the_undecorated_destination()
    {
        var source = new MeteredVolume(new FakeVolume());
        var destinationInner = new FakeVolume();
        var destination = new MeteredVolume(destinationInner);
        await source.CopyAsync(0, destination, 4096, 8192, default);
        Assert.Same(destinationInner, ((FakeVolume)source.Inner).CopyDestination);
        Assert.Equal(8192, source.Metrics[VolumeOp.Copy].Bytes);
    }

    [Fact]
    public void Forwards_properties()
    {
        var inner = new FakeVolume();
        var volume = new MeteredVolume(inner);
        Assert.Equal(inner.Name, volume.Name);
        Assert.Equal(inner.SizeBytes, volume.SizeBytes);
        Assert.Equal(inner.Uuid, volume.Uuid);
        Assert.Equal(inner.Capabilities, volume.Capabilities);
        Assert.Equal(512, volume.LogicalBlockSize);
        Assert.Equal(4096, volume.PreferredBlockSize);
    }

    [Fact]
    public async Task Synchronous_fast_path_allocates_nothing()
    {
        var volume = new MeteredVolume(new FakeVolume());
        byte[] buffer = new byte[4096];
        for (int i = 0; i < 1000; i++)
            await volume.WriteAsync(0, buffer, WriteFlags.None, default);

        long allocated = AllocatedBySynchronousCalls(volume, buffer, 1000);
        Assert.Equal(0, allocated);
    }

    private static long AllocatedBySynchronousCalls(MeteredVolume volume, byte[] buffer, int count)
    {
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < count; i++)
        {
            ValueTask write = volume.WriteAsync(0, buffer, WriteFlags.None, default);
            Assert.True(write.IsCompletedSuccessfully);
            ValueTask read = volume.ReadAsync(0, buffer, default);
            Assert.True(read.IsCompletedSuccessfully);
        }
        return GC.GetAllocatedBytesForCurrentThread() - before;
    }

    [Fact]
    public void Histogram_buckets_are_cumulative_and_end_in_inf()
    {
        var histogram = new LatencyHistogram();
        histogram.Record(0);
        histogram.Record(Stopwatch.Frequency / 1000);     // 1 ms: lands in the 0.001 bucket
        histogram.Record(Stopwatch.Frequency * 60);       // 60 s: +Inf
        long[] cumulative = histogram.CumulativeCounts();
        Assert.Equal(LatencyHistogram.BoundsSeconds.Length + 1, cumulative.Length);
        Assert.Equal(1, cumulative[0]);
        int oneMs = Array.IndexOf(LatencyHistogram.BoundsSeconds, 0.001);
        Assert.Equal(2, cumulative[oneMs]);
        Assert.Equal(2, cumulative[^2]);
        Assert.Equal(3, cumulative[^1]);
        Assert.Equal(3, histogram.Count);
        Assert.InRange(histogram.SumSeconds, 60.0, 60.01);
        Assert.True(LatencyHistogram.BoundsSeconds.Zip(LatencyHistogram.BoundsSeconds.Skip(1)).All(p => p.First < p.Second), "bounds must ascend");
    }

    [Fact]
    public async Task Prometheus_text_has_help_type_and_histograms()
    {
        var volume = new MeteredVolume(new FakeVolume { VolumeName = "v\"1" });
        await volume.ReadAsync(0, new byte[4096], default);
        string text = PrometheusWriter.Write(null, [volume]);

        Assert.Contains("# TYPE target_volume_ops_total counter\n", text, StringComparison.Ordinal);
        Assert.Contains("target_volume_ops_total{volume=\"v\\\"1\",op=\"read\"} 1\n", text, StringComparison.Ordinal);
        Assert.Contains("target_volume_bytes_total{volume=\"v\\\"1\",op=\"read\"} 4096\n", text, StringComparison.Ordinal);
        Assert.Contains("# TYPE target_volume_latency_seconds histogram\n", text, StringComparison.Ordinal);
        Assert.Contains("target_volume_latency_seconds_bucket{volume=\"v\\\"1\",op=\"read\",le=\"+Inf\"} 1\n", text, StringComparison.Ordinal);
        Assert.Contains("target_volume_latency_seconds_count{volume=\"v\\\"1\",op=\"read\"} 1\n", text, StringComparison.Ordinal);
        Assert.Contains(",le=\"0.00001\"} ", text, StringComparison.Ordinal);
        Assert.Contains(",le=\"2.5\"} ", text, StringComparison.Ordinal);
        foreach (string label in VolumeOps.Labels)
            Assert.Contains($"op=\"{label}\"", text, StringComparison.Ordinal);
        Assert.All(text.Split('\n', StringSplitOptions.RemoveEmptyEntries), line =>
            Assert.True(line.StartsWith('#') || line.StartsWith("target_", StringComparison.Ordinal), line));
    }

    [Fact]
    public void Prometheus_text_has_pool_gauges()
    {
        // The engine adds fields over time; start from an empty record so this test only names what it checks.
        var stats = Empty<PoolStats>() with
        {
            Uuid = Guid.NewGuid(), Fingerprint = "xxh3-128", CapacityBytes = 4L << 30, FreeBytes = 1 << 30,
            PhysicalBytes = 64 << 20, LogicalBytes = 128 << 20, UniqueChunks = 16384, ZeroChunks = 3, DedupRatio = 2.0,
            RamBytesIndex = 1, RamBytesChunkTable = 2, RamBytesMaps = 3, RamBytesPerUniqueChunk = 24.5,
            LastRecoveryMs = 1500, SegmentsTotal = 10, SegmentsFree = 5, WriteAmplification = 1.25,
            DestageMs = 2500, DestageBuildMs = 1000, DestageDeviceWaitMs = 500, DestageGroups = 7,
            Volumes =
            [
                Empty<VolumeStats>() with { Name = "vol0", SizeBytes = 10L << 30, MappedBytes = 128 << 20, DirtyBytes = 4096 },
            ],
        };
        string text = PrometheusWriter.Write(stats, []);
        Assert.Contains("target_pool_unique_chunks 16384\n", text, StringComparison.Ordinal);
        Assert.Contains("target_pool_dedup_ratio 2\n", text, StringComparison.Ordinal);
        Assert.Contains("target_pool_physical_bytes 67108864\n", text, StringComparison.Ordinal);
        Assert.Contains("target_pool_logical_bytes 134217728\n", text, StringComparison.Ordinal);
        Assert.Contains("target_pool_ram_bytes_per_unique_chunk 24.5\n", text, StringComparison.Ordinal);
        Assert.Contains("target_pool_ram_bytes{part=\"index\"} 1\n", text, StringComparison.Ordinal);
        Assert.Contains("target_pool_last_recovery_seconds 1.5\n", text, StringComparison.Ordinal);
        Assert.Contains("target_volume_size_bytes{volume=\"vol0\"} 10737418240\n", text, StringComparison.Ordinal);
        Assert.Contains("target_volume_dirty_bytes{volume=\"vol0\"} 4096\n", text, StringComparison.Ordinal);
        Assert.Contains("target_pool_write_amplification 1.25\n", text, StringComparison.Ordinal);
        Assert.Contains("target_pool_destage_seconds_total{phase=\"all\"} 2.5\n", text, StringComparison.Ordinal);
        Assert.Contains("target_pool_destage_seconds_total{phase=\"build\"} 1\n", text, StringComparison.Ordinal);
        Assert.Contains("target_pool_destage_seconds_total{phase=\"device_wait\"} 0.5\n", text, StringComparison.Ordinal);
        Assert.Contains("target_pool_destage_groups_total 7\n", text, StringComparison.Ordinal);
        Assert.Contains("# TYPE target_pool_host_written_bytes_total counter\n", text, StringComparison.Ordinal);
    }

    private static T Empty<T>() where T : class => (T)System.Runtime.CompilerServices.RuntimeHelpers.GetUninitializedObject(typeof(T));

    private sealed class FakeVolume : IBlockVolume
    {
        public string VolumeName { get; init; } = "fake";
        public bool Delay { get; set; }
        public bool ThrowSynchronously { get; set; }
        public Exception? Fail { get; set; }
        public ExtentList Extents { get; } = new();
        public List<WriteFlags> WriteFlagsSeen { get; } = [];
        public IBlockVolume? CopyDestination { get; private set; }

        public string Name => VolumeName;
        public long SizeBytes => 1L << 30;
        public int LogicalBlockSize => 512;
        public int PreferredBlockSize => 4096;
        public Guid Uuid { get; } = Guid.NewGuid();
        public VolumeCapabilities Capabilities => VolumeCapabilities.Trim | VolumeCapabilities.VolatileWriteCache;

        private ValueTask Done()
        {
            if (Fail is not null && ThrowSynchronously)
                throw Fail;
            if (Delay)
                return new ValueTask(DelayedAsync());
            return Fail is null ? ValueTask.CompletedTask : ValueTask.FromException(Fail);
        }

        private async Task DelayedAsync()
        {
            await Task.Yield();
            if (Fail is not null)
                throw Fail;
        }

        public ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken ct) => Done();

        public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, WriteFlags flags, CancellationToken ct)
        {
            if (!Delay && Fail is null && WriteFlagsSeen.Count < 2)
                WriteFlagsSeen.Add(flags);
            return Done();
        }

        public ValueTask FlushAsync(CancellationToken ct) => Done();
        public ValueTask TrimAsync(long offset, long length, CancellationToken ct) => Done();
        public ValueTask WriteZeroesAsync(long offset, long length, ZeroFlags flags, CancellationToken ct) => Done();
        public ValueTask<ExtentList> GetAllocationAsync(long offset, long length, CancellationToken ct) => ValueTask.FromResult(Extents);

        public async ValueTask<bool> CompareAndWriteAsync(long offset, ReadOnlyMemory<byte> expected, ReadOnlyMemory<byte> source, CancellationToken ct)
        {
            await Done();
            return true;
        }

        public ValueTask CopyAsync(long sourceOffset, IBlockVolume destination, long destinationOffset, long length, CancellationToken ct)
        {
            CopyDestination = destination;
            return Done();
        }
    }
}
