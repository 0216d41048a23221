// Per-volume request counters and latency histograms, updated on the I/O path.
// Invariants: updates are Interlocked and allocation-free; a snapshot may be torn between
// fields (a scrape sees each counter monotonic, not all counters at one instant).
using System.Diagnostics;

namespace Target.Metrics;

public enum VolumeOp
{
    Read,
    Write,
    Flush,
    Trim,
    WriteZeroes,
    BlockStatus,
    CompareAndWrite,
    Copy,
}

public static class VolumeOps
{
    public const int Count = (int)VolumeOp.Copy + 1;

    /// <summary>Prometheus label values, indexed by <see cref="VolumeOp"/>.</summary>
    public static readonly string[] Labels =
        ["read", "write", "flush", "trim", "write_zeroes", "block_status", "compare_and_write", "copy"];
}

/// <summary>A fixed-bucket latency histogram (Prometheus style, cumulative on output).</summary>
public sealed class LatencyHistogram
{
    /// <summary>Upper bounds in seconds; the last, implicit bucket is +Inf.</summary>
    public static readonly double[] BoundsSeconds =
    [
        0.000_010, 0.000_025, 0.000_050, 0.000_100, 0.000_250, 0.000_500,
        0.001, 0.002_5, 0.005, 0.010, 0.025, 0.050, 0.100, 0.250, 0.500,
        1.0, 2.5, 5.0, 10.0,
    ];

    private static readonly long[] s_boundsTicks = BoundsSeconds.Select(s => (long)Math.Ceiling(s * Stopwatch.Frequency)).ToArray();

    // One count per bound plus +Inf; not cumulative.
    private readonly long[] _counts = new long[BoundsSeconds.Length + 1];
    private long _sumTicks;
    private long _count;

    public void Record(long elapsedTicks)
    {
        if (elapsedTicks < 0) elapsedTicks = 0;
        long[] bounds = s_boundsTicks;
        int bucket = 0;
        while (bucket < bounds.Length && elapsedTicks > bounds[bucket])
            bucket++;
        Interlocked.Increment(ref _counts[bucket]);
        Interlocked.Add(ref _sumTicks, elapsedTicks);
        Interlocked.Increment(ref _count);
    }

    public long Count => Interlocked.Read(ref _count);

    public double SumSeconds => (double)Interlocked.Read(ref _sumTicks) / Stopwatch.Frequency;

    /// <summary>Cumulative counts per bound, then +Inf (length BoundsSeconds.Length + 1).</summary>
    public long[] CumulativeCounts()
    {
        var cumulative = new long[_counts.Length];
        long total = 0;
        for (int i = 0; i < _counts.Length; i++)
        {
            total += Interlocked.Read(ref _counts[i]);
            cumulative[i] = total;
        }
        return cumulative;
    }
}

public sealed class OpMetrics
{
    private long _ops;
    private long _bytes;
    private long _errors;

    public LatencyHistogram Latency { get; } = new();

    public long Ops => Interlocked.Read(ref _ops);
    public long Bytes => Interlocked.Read(ref _bytes);
    public long Errors => Interlocked.Read(ref _errors);

    public void Completed(long bytes, long startTimestamp)
    {
        long elapsedTicks = Stopwatch.GetTimestamp() - startTimestamp;
        Interlocked.Increment(ref _ops);
        Interlocked.Add(ref _bytes, bytes);
        Latency.Record(elapsedTicks);
    }

    public void Failed() => Interlocked.Increment(ref _errors);
}

public sealed class VolumeMetrics
{
    private readonly OpMetrics[] _ops;

    public VolumeMetrics()
    {
        _ops = new OpMetrics[VolumeOps.Count];
        for (int i = 0; i < _ops.Length; i++)
            _ops[i] = new OpMetrics();
    }

    public OpMetrics this[VolumeOp op] => _ops[(int)op];
}
