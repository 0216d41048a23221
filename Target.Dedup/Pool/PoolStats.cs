namespace Target.Dedup;

public sealed record VolumeStats
{
    public required string Name { get; init; }
    public required Guid Uuid { get; init; }
    public required long SizeBytes { get; init; }
    public required int LogicalBlockSize { get; init; }
    public required string WriteMode { get; init; }
    /// <summary>Logical bytes that map to stored data (not holes, not zero chunks).</summary>
    public required long MappedBytes { get; init; }
    /// <summary>Logical 4 KiB blocks written as zeros (no storage behind them).</summary>
    public required long ZeroChunks { get; init; }
    public required long DirtyBytes { get; init; }
    public required long RamBytes { get; init; }
}

public sealed record PoolStats
{
    public required Guid Uuid { get; init; }
    public required string Fingerprint { get; init; }
    public required long CapacityBytes { get; init; }
    public required long FreeBytes { get; init; }
    /// <summary>Bytes of chunk data stored (unique chunks x chunk size).</summary>
    public required long PhysicalBytes { get; init; }
    /// <summary>Logical bytes mapped to data, over all volumes.</summary>
    public required long LogicalBytes { get; init; }
    public required long UniqueChunks { get; init; }
    public required long ZeroChunks { get; init; }
    /// <summary>LogicalBytes / PhysicalBytes (1.0 when nothing is stored).</summary>
    public required double DedupRatio { get; init; }
    /// <summary>Bytes of journal metadata appended since the last checkpoint.</summary>
    public required long JournalBytes { get; init; }
    public required long RamBytesIndex { get; init; }
    public required long RamBytesChunkTable { get; init; }
    public required long RamBytesMaps { get; init; }
    public required double RamBytesPerUniqueChunk { get; init; }
    public required double RamBytesPerMappedBlock { get; init; }
    public required DateTimeOffset? LastRecoveryTime { get; init; }
    public required double LastRecoveryMs { get; init; }
    public required long SegmentsTotal { get; init; }
    public required long SegmentsFree { get; init; }
    /// <summary>Segments in use (log or live chunks).</summary>
    public long SegmentsUsed { get; init; }
    /// <summary>Dead segments waiting for one more checkpoint before reuse.</summary>
    public long SegmentsQuarantined { get; init; }
    /// <summary>Bytes of live chunks (same as PhysicalBytes).</summary>
    public long LiveBytes { get; init; }
    /// <summary>Bytes in used segments that hold no live chunk (garbage, journal headers, torn tails): what the cleaner can reclaim.</summary>
    public long DeadBytes { get; init; }
    public long GcBytesMoved { get; init; }
    /// <summary>Of GcBytesMoved, the bytes moved inline into the log head (no room for the cleaner's own segment).</summary>
    public long GcBytesMovedInline { get; init; }
    public long GcSegmentsCleaned { get; init; }
    public double GcMs { get; init; }
    /// <summary>Checkpoints written since the pool opened (every CheckpointJournalBytes of journal, and as the cleaner frees segments).</summary>
    public long CheckpointsWritten { get; init; }
    /// <summary>Time spent encoding and writing those checkpoints (their fsync included).</summary>
    public double CheckpointMs { get; init; }
    /// <summary>Time the destager spent in turns (build, device wait, apply and land all included).</summary>
    public double DestageMs { get; init; }
    /// <summary>Of DestageMs, building batches (copies, fingerprints, dedup checks, records) and issuing their writes.</summary>
    public double DestageBuildMs { get; init; }
    /// <summary>Of DestageMs, waiting for a group's writes (and fdatasync, if it has one) after everything else was done.</summary>
    public double DestageDeviceWaitMs { get; init; }
    /// <summary>Destage groups written and applied (up to 32 batches each).</summary>
    public long DestageGroups { get; init; }
    /// <summary>fdatasyncs of the journal (a destage group's, a batch of the cleaner's or a metadata change's, or before a checkpoint or on demand).</summary>
    public long JournalFlushes { get; init; }
    /// <summary>Bytes written by hosts (accepted writes, before dedup).</summary>
    public long HostBytesWritten { get; init; }
    /// <summary>Of HostBytesWritten, whole chunks that held what their block already held durably (nop-writes: nothing stored or destaged).</summary>
    public long NopWriteBytes { get; init; }
    /// <summary>Bytes written to the back-end log (data, journal headers, cleaner moves; checkpoints not counted).</summary>
    public long DeviceBytesWritten { get; init; }
    /// <summary>Live data as a percentage of capacity.</summary>
    public double FillPercent { get; init; }
    /// <summary>The highest fill-warning threshold crossed (0 when none).</summary>
    public int FillWarningPercent { get; init; }
    public long ReadCacheBytes { get; init; }
    public long ReadCacheChunks { get; init; }
    public long ReadCacheHits { get; init; }
    public long ReadCacheMisses { get; init; }
    /// <summary>DeviceBytesWritten / HostBytesWritten (0 before any write).</summary>
    public double WriteAmplification { get; init; }
    public required IReadOnlyList<VolumeStats> Volumes { get; init; }
}
