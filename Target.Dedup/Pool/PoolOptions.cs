using Microsoft.Extensions.Logging;
using Target.Dedup.Hashing;

namespace Target.Dedup;

/// <summary>How to open (or create) a pool. Sizes are bytes.</summary>
public sealed record PoolOptions
{
    /// <summary>Directory holding the pool's back-end files (created if missing).</summary>
    public required string Directory { get; init; }

    /// <summary>When the pool does not exist yet: create it with this many bytes of back-end space. Null: opening a missing pool fails.</summary>
    public long? CreateSizeBytes { get; init; }

    /// <summary>Block devices (or files) to use as back-end instead of a file in <see cref="Directory"/>; used only at creation.</summary>
    public IReadOnlyList<string>? DevicePaths { get; init; }

    /// <summary>Open back-end files without O_DIRECT (for tmpfs, which has none).</summary>
    public bool NoDirect { get; init; }

    public FingerprintAlgorithm Fingerprint { get; init; } = FingerprintAlgorithm.Xxh3_128;

    public WriteMode WriteMode { get; init; } = WriteMode.OneWayWriteBack;

    /// <summary>Memory for dirty pages of the write cache.</summary>
    public long CacheBytes { get; init; } = 256L << 20;

    /// <summary>Memory for the read cache of clean stored chunks (keyed by chunk id, so shared chunks are cached once). 0 disables it.</summary>
    public long ReadCacheBytes { get; init; } = 256L << 20;

    /// <summary>Dirty pages older than this are destaged by the timer.</summary>
    public int DirtyAgeMaxMs { get; init; } = 1000;

    /// <summary>
    /// The longest a journal write waits for the disk's write cache to be flushed when no host asks
    /// for durability (FLUSH, FUA, <c>wt</c>), no checkpoint is written and the destager does not
    /// run dry (ext4's default commit interval, and ZFS's transaction group timeout, are also 5 s).
    /// 0: every destage group ends with an fdatasync.
    /// </summary>
    public int JournalFlushMs { get; init; } = DefaultJournalFlushMs;

    public const int DefaultJournalFlushMs = 5000;

    /// <summary>A checkpoint is written once this many journal bytes have been appended since the last one.</summary>
    public long CheckpointJournalBytes { get; init; } = 256L << 20;

    /// <summary>Live-data fill levels (percent of capacity) at which a warning is logged once.</summary>
    public int[] FillWarningPercents { get; init; } = [80, 90, 95];

    public ILoggerFactory? LoggerFactory { get; init; }

    /// <summary>Called before a write is acknowledged in <see cref="WriteMode.WriteBack"/> mode (the HA partner link).</summary>
    public IWriteMirror? Mirror { get; init; }

    /// <summary>Test seam: replaces the fingerprint function (collision tests). Must match <see cref="Fingerprint"/>'s persisted algorithm semantics only in tests.</summary>
    internal IFingerprinter? FingerprinterOverride { get; init; }

    /// <summary>Destage writes and flushes run as thread-pool pwritev/fdatasync tasks instead of through io_uring (the fallback where io_uring is missing; tests and A/B runs).</summary>
    public bool NoLogRing { get; init; }

    /// <summary>Test seam: wraps each opened back-end device (fault injection).</summary>
    internal Func<Device.IBlockDevice, Device.IBlockDevice>? DeviceDecorator { get; init; }

    /// <summary>Test seam: called on the destage thread once a batch was decided from its cache pages, before it is written from them (a host write meanwhile must go to a new page).</summary>
    internal Action? AfterBatchDecidedFromPages { get; init; }
}

/// <summary>The seam for write-back mirroring: the pool calls it with each dirty page before the write is acknowledged.</summary>
public interface IWriteMirror
{
    ValueTask MirrorAsync(Guid volume, long offsetBytes, ReadOnlyMemory<byte> page, CancellationToken ct);

    /// <summary>Told when pages up to this destage sequence are durable in the pool, so the partner can drop copies.</summary>
    void Destaged(long destageSequence);
}
