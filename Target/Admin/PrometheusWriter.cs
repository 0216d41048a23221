using System.Globalization;
using System.Text;
using Target.Dedup;
using Target.Metrics;

namespace Target.Admin;

/// <summary>Prometheus text exposition format 0.0.4 of the pool and per-volume metrics.</summary>
public static class PrometheusWriter
{
    public const string ContentType = "text/plain; version=0.0.4; charset=utf-8";

    public static string Write(PoolStats? pool, IReadOnlyList<MeteredVolume> volumes)
    {
        var text = new StringBuilder(16 * 1024);

        if (pool is not null)
        {
            Gauge(text, "target_pool_capacity_bytes", "Back-end space of the pool.", pool.CapacityBytes);
            Gauge(text, "target_pool_free_bytes", "Free back-end space.", pool.FreeBytes);
            Gauge(text, "target_pool_physical_bytes", "Bytes of unique chunk data stored.", pool.PhysicalBytes);
            Gauge(text, "target_pool_logical_bytes", "Logical bytes mapped to data over all volumes.", pool.LogicalBytes);
            Gauge(text, "target_pool_unique_chunks", "Unique 4 KiB chunks stored.", pool.UniqueChunks);
            Gauge(text, "target_pool_zero_chunks", "Logical chunks written as zeros (no storage).", pool.ZeroChunks);
            Gauge(text, "target_pool_dedup_ratio", "Logical bytes / physical bytes.", pool.DedupRatio);
            Gauge(text, "target_pool_journal_bytes", "Journal bytes appended since the last checkpoint.", pool.JournalBytes);
            Header(text, "target_pool_ram_bytes", "RAM used by engine structures.", "gauge");
            Sample(text, "target_pool_ram_bytes", "part", "index", pool.RamBytesIndex);
            Sample(text, "target_pool_ram_bytes", "part", "chunk_table", pool.RamBytesChunkTable);
            Sample(text, "target_pool_ram_bytes", "part", "maps", pool.RamBytesMaps);
            Gauge(text, "target_pool_ram_bytes_per_unique_chunk", "RAM bytes per unique chunk.", pool.RamBytesPerUniqueChunk);
            Gauge(text, "target_pool_ram_bytes_per_mapped_block", "RAM bytes per mapped logical block.", pool.RamBytesPerMappedBlock);
            Gauge(text, "target_pool_segments_total", "Log segments.", pool.SegmentsTotal);
            Gauge(text, "target_pool_segments_free", "Free log segments.", pool.SegmentsFree);
            Gauge(text, "target_pool_segments_used", "Log segments in use.", pool.SegmentsUsed);
            Gauge(text, "target_pool_segments_quarantined", "Dead segments waiting for a checkpoint before reuse.", pool.SegmentsQuarantined);
            Gauge(text, "target_pool_live_bytes", "Bytes of live chunks.", pool.LiveBytes);
            Gauge(text, "target_pool_dead_bytes", "Bytes in used segments that the cleaner can reclaim.", pool.DeadBytes);
            Counter(text, "target_pool_gc_moved_bytes_total", "Bytes moved by the segment cleaner.", pool.GcBytesMoved);
            Counter(text, "target_pool_gc_moved_inline_bytes_total", "Bytes the cleaner moved into the log head rather than its own segment.", pool.GcBytesMovedInline);
            Counter(text, "target_pool_gc_segments_cleaned_total", "Segments cleaned.", pool.GcSegmentsCleaned);
            Counter(text, "target_pool_gc_seconds_total", "Time spent cleaning segments.", pool.GcMs / 1000.0);
            Counter(text, "target_pool_checkpoints_total", "Metadata checkpoints written.", pool.CheckpointsWritten);
            Counter(text, "target_pool_checkpoint_seconds_total", "Time spent writing metadata checkpoints (fsync included).", pool.CheckpointMs / 1000.0);
            Header(text, "target_pool_destage_seconds_total", "Destager time: in turns (all), building batches (build), waiting for writes and fdatasync (device_wait).", "counter");
            Sample(text, "target_pool_destage_seconds_total", "phase", "all", pool.DestageMs / 1000.0);
            Sample(text, "target_pool_destage_seconds_total", "phase", "build", pool.DestageBuildMs / 1000.0);
            Sample(text, "target_pool_destage_seconds_total", "phase", "device_wait", pool.DestageDeviceWaitMs / 1000.0);
            Counter(text, "target_pool_destage_groups_total", "Destage groups written and applied.", pool.DestageGroups);
            Counter(text, "target_pool_journal_flushes_total", "fdatasyncs of the journal (destage groups that end with one, other batches, before checkpoints, on demand).", pool.JournalFlushes);
            Counter(text, "target_pool_host_written_bytes_total", "Bytes written by hosts, before dedup.", pool.HostBytesWritten);
            Counter(text, "target_pool_nop_write_bytes_total", "Of the host's bytes, whole chunks that held what their block already held (nothing stored).", pool.NopWriteBytes);
            Counter(text, "target_pool_device_written_bytes_total", "Bytes written to the back-end log.", pool.DeviceBytesWritten);
            Gauge(text, "target_pool_write_amplification", "Device bytes written / host bytes written.", pool.WriteAmplification);
            Gauge(text, "target_pool_fill_percent", "Live data as a percentage of capacity.", pool.FillPercent);
            Gauge(text, "target_pool_fill_warning_percent", "Highest fill-warning threshold crossed (0: none).", pool.FillWarningPercent);
            Counter(text, "target_pool_read_cache_hits_total", "Reads of stored chunks served from the read cache.", pool.ReadCacheHits);
            Counter(text, "target_pool_read_cache_misses_total", "Reads of stored chunks that went to the device.", pool.ReadCacheMisses);
            Gauge(text, "target_pool_last_recovery_seconds", "Duration of the last recovery.", pool.LastRecoveryMs / 1000.0);

            Header(text, "target_volume_size_bytes", "Logical size of the volume.", "gauge");
            foreach (VolumeStats v in pool.Volumes)
                Sample(text, "target_volume_size_bytes", "volume", v.Name, v.SizeBytes);
            Header(text, "target_volume_mapped_bytes", "Logical bytes of the volume mapped to data.", "gauge");
            foreach (VolumeStats v in pool.Volumes)
                Sample(text, "target_volume_mapped_bytes", "volume", v.Name, v.MappedBytes);
            Header(text, "target_volume_dirty_bytes", "Bytes of the volume in the write cache, not yet destaged.", "gauge");
            foreach (VolumeStats v in pool.Volumes)
                Sample(text, "target_volume_dirty_bytes", "volume", v.Name, v.DirtyBytes);
        }

        Header(text, "target_volume_ops_total", "Completed requests by op type.", "counter");
        foreach (MeteredVolume v in volumes)
            for (int op = 0; op < VolumeOps.Count; op++)
                Sample2(text, "target_volume_ops_total", v.Name, VolumeOps.Labels[op], v.Metrics[(VolumeOp)op].Ops);

        Header(text, "target_volume_bytes_total", "Bytes moved (or covered, for trim/zero/status/copy) by op type.", "counter");
        foreach (MeteredVolume v in volumes)
            for (int op = 0; op < VolumeOps.Count; op++)
                Sample2(text, "target_volume_bytes_total", v.Name, VolumeOps.Labels[op], v.Metrics[(VolumeOp)op].Bytes);

        Header(text, "target_volume_errors_total", "Failed requests by op type.", "counter");
        foreach (MeteredVolume v in volumes)
            for (int op = 0; op < VolumeOps.Count; op++)
                Sample2(text, "target_volume_errors_total", v.Name, VolumeOps.Labels[op], v.Metrics[(VolumeOp)op].Errors);

        Header(text, "target_volume_latency_seconds", "Request latency by op type.", "histogram");
        foreach (MeteredVolume v in volumes)
        {
            for (int op = 0; op < VolumeOps.Count; op++)
            {
                LatencyHistogram histogram = v.Metrics[(VolumeOp)op].Latency;
                long[] cumulative = histogram.CumulativeCounts();
                string labels = $"volume=\"{Escape(v.Name)}\",op=\"{VolumeOps.Labels[op]}\"";
                for (int b = 0; b < cumulative.Length; b++)
                {
                    string le = b < LatencyHistogram.BoundsSeconds.Length
                        ? LatencyHistogram.BoundsSeconds[b].ToString("0.#########", CultureInfo.InvariantCulture)
                        : "+Inf";
                    text.Append("target_volume_latency_seconds_bucket{").Append(labels).Append(",le=\"").Append(le).Append("\"} ")
                        .Append(cumulative[b].ToString(CultureInfo.InvariantCulture)).Append('\n');
                }
                text.Append("target_volume_latency_seconds_sum{").Append(labels).Append("} ")
                    .Append(Number(histogram.SumSeconds)).Append('\n');
                text.Append("target_volume_latency_seconds_count{").Append(labels).Append("} ")
                    .Append(cumulative[^1].ToString(CultureInfo.InvariantCulture)).Append('\n');
            }
        }

        return text.ToString();
    }

    private static void Header(StringBuilder text, string name, string help, string type) =>
        text.Append("# HELP ").Append(name).Append(' ').Append(help).Append('\n')
            .Append("# TYPE ").Append(name).Append(' ').Append(type).Append('\n');

    private static void Gauge(StringBuilder text, string name, string help, double value)
    {
        Header(text, name, help, "gauge");
        text.Append(name).Append(' ').Append(Number(value)).Append('\n');
    }

    private static void Counter(StringBuilder text, string name, string help, double value)
    {
        Header(text, name, help, "counter");
        text.Append(name).Append(' ').Append(Number(value)).Append('\n');
    }

    private static void Sample(StringBuilder text, string name, string label, string labelValue, double value) =>
        text.Append(name).Append('{').Append(label).Append("=\"").Append(Escape(labelValue)).Append("\"} ")
            .Append(Number(value)).Append('\n');

    private static void Sample2(StringBuilder text, string name, string volume, string op, long value) =>
        text.Append(name).Append("{volume=\"").Append(Escape(volume)).Append("\",op=\"").Append(op).Append("\"} ")
            .Append(value.ToString(CultureInfo.InvariantCulture)).Append('\n');

    internal static string Number(double value) =>
        double.IsNaN(value) ? "NaN"
        : double.IsPositiveInfinity(value) ? "+Inf"
        : double.IsNegativeInfinity(value) ? "-Inf"
        : value.ToString("R", CultureInfo.InvariantCulture);

    internal static string Escape(string value) =>
        value.Replace("\\", "\\\\", StringComparison.Ordinal)
            .Replace("\"", "\\\"", StringComparison.Ordinal)
            .Replace("\n", "\\n", StringComparison.Ordinal);
}
