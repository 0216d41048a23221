// A pool: back-end device, log, chunk table, dedup index, volume maps and write cache.
// Invariants kept here: one process opens a pool (flock); metadata changes only through
// durable journal batches applied by PoolState.ApplyBatch, all under the commit mutex;
// reads and cache updates take the short pool lock (_sync) only.
using System.Diagnostics;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Target.Dedup.Device;
using Target.Dedup.Engine;
using Target.Dedup.Format;
using Target.Dedup.Hashing;

namespace Target.Dedup;

public sealed partial class Pool : IAsyncDisposable
{
    public const int ChunkBytes = Superblock.ChunkBytes;
    public const int DefaultSegmentBytes = 4 << 20;
    private const string DeviceFileName = "pool-0.dat";
    private const string DeviceLinkFileName = "device";
    private const string LockFileName = "lock";

    private readonly object _sync = new();
    private readonly SemaphoreSlim _commit = new(1, 1);
    private readonly PoolOptions _options;
    private readonly ILogger _log;
    private readonly PoolLock _lock;
    private readonly IBlockDevice _device;
    private readonly Superblock _super;
    private readonly ulong _poolTag;
    private readonly IFingerprinter _fingerprinter;
    private readonly PoolState _state;
    private readonly Dictionary<uint, Volume> _volumes = new();
    private bool _disposed;
    private bool _checkOnly;

    /// <summary>How long a closing pool waits for host requests to finish before it destages and checkpoints anyway (a writer may wait SpaceWaitMaxMs for space).</summary>
    internal const int HostDrainMaxMs = 2 * SpaceWaitMaxMs;
    /// <summary>How long a pool whose background work stopped waits for the last host requests to leave before it frees its memory.</summary>
    private const int HostLeaveAfterStopMaxMs = 10_000;

    /// <summary>The gate every host request passes (Volume's I/O, volume and checkpoint requests); closed by DisposeAsync.</summary>
    internal HostGate Hosts { get; } = new();

    private Pool(PoolOptions options, ILogger log, PoolLock poolLock, IBlockDevice device, Superblock super)
    {
        _options = options;
        _log = log;
        _lock = poolLock;
        _device = device;
        _super = super;
        _poolTag = PoolTagOf(super.PoolUuid);
        _fingerprinter = options.FingerprinterOverride ?? Fingerprinters.Create(super.Fingerprint);
        _state = new PoolState(super.SegmentCount, super.BlocksPerSegment);
        _segments = new SegmentState[super.SegmentCount];
        _cache = new WriteCache((int)Math.Max(64, options.CacheBytes / ChunkBytes));
        _logBuffer = new AlignedBuffer((MaxHeaderBlocks + MaxBatchBlocks) * ChunkBytes);
        _verifyBuffer = new AlignedBuffer(ChunkBytes);
        // No more chunks can be live than the log has blocks: a larger read cache would only reserve memory.
        _chunkCache = new ChunkCache(Math.Min(options.ReadCacheBytes, super.LogBytes));
        _state.ChunkFreed = _chunkCache.Remove;
        _state.FreeingChunk = _chunkCache.PrefetchEntry;
    }

    public Guid Uuid => _super.PoolUuid;

    public FingerprintAlgorithm FingerprintAlgorithm => _super.Fingerprint;

    public WriteMode WriteMode => _options.WriteMode;

    internal static ulong PoolTagOf(Guid uuid)
    {
        Span<byte> b = stackalloc byte[16];
        uuid.TryWriteBytes(b);
        return BitConverter.ToUInt64(b) ^ BitConverter.ToUInt64(b[8..]);
    }

    /// <summary>Opens the pool in options.Directory, creating it first when it is missing and CreateSizeBytes is set. Recovers after a crash.</summary>
    public static Pool Open(PoolOptions options) => Open(options, checkOnly: false);

    /// <summary>Opens an existing pool for the offline checker: recovery runs in memory only, nothing is written.</summary>
    internal static Pool Open(PoolOptions options, bool checkOnly)
    {
        ILogger log = (options.LoggerFactory ?? NullLoggerFactory.Instance).CreateLogger("Target.Pool");
        Directory.CreateDirectory(options.Directory);
        var poolLock = PoolLock.Acquire(Path.Combine(options.Directory, LockFileName));
        IBlockDevice? device = null;
        try
        {
            string devicePath = DevicePath(options, out bool exists);
            Superblock? super = null;
            if (exists)
            {
                device = OpenDevice(options, devicePath, null);
                super = ReadSuperblock(device, out string? problem);
                if (super == null && (problem != "no Target pool signature" || HasCheckpoint(options.Directory)))
                    throw new InvalidDataException($"{devicePath}: {problem}");
                if (super == null) { device.Dispose(); device = null; }
            }
            if (super == null)
            {
                if (checkOnly) throw new NotFoundException($"no pool in {options.Directory}");
                if (options.CreateSizeBytes is not long size)
                    throw new NotFoundException($"no pool in {options.Directory} (give a size to create one)");
                (device, super) = Create(options, devicePath, size, log);
            }
            var pool = new Pool(options, log, poolLock, device!, super) { _checkOnly = checkOnly };
            try
            {
                pool.Recover();
                if (!checkOnly) pool.StartBackground();
                return pool;
            }
            catch
            {
                pool.DisposeResources();
                throw;
            }
        }
        catch
        {
            device?.Dispose();
            poolLock.Dispose();
            throw;
        }
    }

    private static bool HasCheckpoint(string directory) =>
        File.Exists(Checkpoint.PathOf(directory, 0)) || File.Exists(Checkpoint.PathOf(directory, 1));

    private static string DevicePath(PoolOptions options, out bool exists)
    {
        string link = Path.Combine(options.Directory, DeviceLinkFileName);
        if (File.Exists(link))
        {
            string path = File.ReadAllText(link).Trim();
            exists = true;
            return path;
        }
        if (options.DevicePaths is { Count: > 0 } paths)
        {
            if (paths.Count > 1) throw new NotSupportedException("one back-end device per pool for now");
            exists = File.Exists(paths[0]) && (new FileInfo(paths[0]).Length > 0 || paths[0].StartsWith("/dev/", StringComparison.Ordinal));
            return paths[0];
        }
        string file = Path.Combine(options.Directory, DeviceFileName);
        exists = File.Exists(file);
        return file;
    }

    private static IBlockDevice OpenDevice(PoolOptions options, string path, long? createSizeBytes)
    {
        IBlockDevice device = FileDevice.Open(path, direct: !options.NoDirect, createSizeBytes);
        return options.DeviceDecorator != null ? options.DeviceDecorator(device) : device;
    }

    private static Superblock? ReadSuperblock(IBlockDevice device, out string? problem)
    {
        using var buffer = new AlignedBuffer(2 * DeviceConstants.SectorBytes);
        device.Read(0, buffer.Span);
        Superblock? first = Superblock.TryDecode(buffer.Slice(0, DeviceConstants.SectorBytes), out problem);
        if (first != null) return first;
        // The first copy is damaged: the second one, written at creation too, still names the pool.
        return Superblock.TryDecode(buffer.Slice(DeviceConstants.SectorBytes, DeviceConstants.SectorBytes), out _);
    }

    private static (IBlockDevice, Superblock) Create(PoolOptions options, string devicePath, long sizeBytes, ILogger log)
    {
        int segmentBytes = DefaultSegmentBytes;
        long usable = sizeBytes - Superblock.DataStartBytes;
        if (usable < 4L * segmentBytes)
            throw new ArgumentException($"pool size {sizeBytes} bytes is too small: at least {Superblock.DataStartBytes + 4L * segmentBytes} bytes");
        uint segments = (uint)(usable / segmentBytes);
        long deviceBytes = Superblock.DataStartBytes + (long)segments * segmentBytes;
        // A block device exists before the pool; a path under /dev that does not (a file on /dev/shm) is a file to create.
        bool isBlockDevice = devicePath.StartsWith("/dev/", StringComparison.Ordinal) && File.Exists(devicePath);
        IBlockDevice device = OpenDevice(options, devicePath, isBlockDevice ? null : deviceBytes);
        if (device.SizeBytes < deviceBytes) { device.Dispose(); throw new ArgumentException($"{devicePath} holds {device.SizeBytes} bytes, fewer than {deviceBytes}"); }
        var super = new Superblock
        {
            PoolUuid = Guid.NewGuid(),
            Fingerprint = options.Fingerprint,
            SegmentBytes = segmentBytes,
            SegmentCount = segments,
            CreatedUnixMs = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds(),
        };
        using (var buffer = new AlignedBuffer(2 * DeviceConstants.SectorBytes))
        {
            super.Encode(buffer.Slice(0, DeviceConstants.SectorBytes));
            super.Encode(buffer.Slice(DeviceConstants.SectorBytes, DeviceConstants.SectorBytes));
            // Make stale log data from an earlier pool on this device unreadable as a batch of this one: segment 0 starts empty.
            using (var empty = new AlignedBuffer(DeviceConstants.SectorBytes)) device.Write(Superblock.DataStartBytes, empty.Span);
            device.Write(0, buffer.Span);
            device.Flush();
        }
        if (options.DevicePaths is { Count: > 0 }) File.WriteAllText(Path.Combine(options.Directory, DeviceLinkFileName), devicePath + "\n");
        foreach (int slot in new[] { 0, 1 }) File.Delete(Checkpoint.PathOf(options.Directory, slot));
        log.LogInformation("created pool {Uuid} in {Directory}: {Segments} segments of {SegmentMiB} MiB, fingerprint {Fingerprint}, O_DIRECT {Direct}",
            super.PoolUuid, options.Directory, segments, segmentBytes >> 20, super.Fingerprint, !options.NoDirect);
        return (device, super);
    }

    /// <summary>A snapshot of the volumes, by name.</summary>
    public IReadOnlyList<Volume> Volumes
    {
        get
        {
            lock (_sync) return _volumes.Values.OrderBy(v => v.Name, StringComparer.Ordinal).ToList();
        }
    }

    public bool TryGetVolume(string name, out Volume volume)
    {
        lock (_sync)
        {
            if (_state.VolumesByName.TryGetValue(name, out VolumeState? state) && _volumes.TryGetValue(state.Id, out Volume? v))
            {
                volume = v;
                return true;
            }
        }
        volume = null!;
        return false;
    }

    public ValueTask<Volume> CreateVolumeAsync(string name, long sizeBytes, int logicalBlockSize, CancellationToken ct)
    {
        ValidateName(name);
        if (sizeBytes <= 0 || sizeBytes % ChunkBytes != 0) throw new ArgumentException($"volume size must be a positive multiple of {ChunkBytes} bytes");
        if (sizeBytes / ChunkBytes >= 1L << 40) throw new ArgumentException("volume too large");
        if (logicalBlockSize != 512 && logicalBlockSize != 4096) throw new ArgumentException("logical block size must be 512 or 4096");
        return ChangeVolumesAsync(() =>
        {
            uint id;
            lock (_sync)
            {
                if (_state.VolumesByName.ContainsKey(name)) throw new AlreadyExistsException($"volume {name} exists");
                id = _state.NextVolumeId;
            }
            Guid uuid = Guid.NewGuid();
            CommitRecords((ref RecordWriter w) => w.CreateVolume(id, uuid, sizeBytes, logicalBlockSize, name));
            lock (_sync) return _volumes[id];
        }, ct);
    }

    public async ValueTask DeleteVolumeAsync(string name, CancellationToken ct) =>
        await ChangeVolumesAsync(() =>
        {
            VolumeState state = FindVolume(name);
            DropCachedPages(state.Id, 0, state.Map.Blocks);
            CommitRecords((ref RecordWriter w) => w.DeleteVolume(state.Id));
            return state;
        }, ct).ConfigureAwait(false);

    public async ValueTask ResizeVolumeAsync(string name, long newSizeBytes, CancellationToken ct)
    {
        if (newSizeBytes <= 0 || newSizeBytes % ChunkBytes != 0) throw new ArgumentException($"volume size must be a positive multiple of {ChunkBytes} bytes");
        await ChangeVolumesAsync(() =>
        {
            VolumeState state = FindVolume(name);
            if (newSizeBytes < state.SizeBytes) DropCachedPages(state.Id, newSizeBytes / ChunkBytes, state.Map.Blocks);
            CommitRecords((ref RecordWriter w) => w.ResizeVolume(state.Id, newSizeBytes));
            return state;
        }, ct).ConfigureAwait(false);
    }

    /// <summary>Runs a change of the volume set inside the host gate and under the commit mutex.</summary>
    private ValueTask<T> ChangeVolumesAsync<T>(Func<T> change, CancellationToken ct) =>
        Hosts.Run(static s => s.Pool.UnderCommitAsync(s.Change, s.Ct), (Pool: this, Change: change, Ct: ct));

    private async ValueTask<T> UnderCommitAsync<T>(Func<T> change, CancellationToken ct)
    {
        await _commit.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            return change();
        }
        finally
        {
            _commit.Release();
        }
    }

    private VolumeState FindVolume(string name)
    {
        lock (_sync)
            return _state.VolumesByName.TryGetValue(name, out VolumeState? s) ? s : throw new NotFoundException($"no volume {name}");
    }

    private static void ValidateName(string name)
    {
        if (string.IsNullOrEmpty(name) || System.Text.Encoding.UTF8.GetByteCount(name) > BatchHeader.MaxNameBytes)
            throw new ArgumentException("volume name must be 1 to 255 bytes");
        foreach (char c in name)
        {
            if (!(char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.' or ':'))
                throw new ArgumentException($"volume name '{name}' may hold only letters, digits, '-', '_', '.', ':'");
        }
    }

    /// <summary>Keeps the Volume objects in step with the volumes in the state (after apply).</summary>
    private void SyncVolumeObjects()
    {
        foreach (VolumeState s in _state.VolumesById.Values)
        {
            if (!_volumes.ContainsKey(s.Id)) _volumes.Add(s.Id, new Volume(this, s));
        }
        List<uint>? gone = null;
        foreach (uint id in _volumes.Keys)
        {
            if (!_state.VolumesById.ContainsKey(id)) (gone ??= new()).Add(id);
        }
        if (gone != null) foreach (uint id in gone) _volumes.Remove(id);
    }

    public PoolStats GetStats()
    {
        lock (_sync)
        {
            long unique = _state.Chunks.LiveCount;
            long logicalBlocks = 0, zeroBlocks = 0, mapBlocks = 0;
            var volumes = new List<VolumeStats>();
            foreach (Volume v in _volumes.Values.OrderBy(v => v.Name, StringComparer.Ordinal))
            {
                VolumeStats vs = v.StatsLocked();
                volumes.Add(vs);
                logicalBlocks += vs.MappedBytes / ChunkBytes;
                zeroBlocks += vs.ZeroChunks;
                mapBlocks += vs.MappedBytes / ChunkBytes + vs.ZeroChunks;
            }
            long usedSegments = 0, deadBlocks = 0;
            for (uint s = 0; s < _segments.Length; s++)
            {
                if (_segments[s] != SegmentState.Used) continue;
                usedSegments++;
                deadBlocks += BlocksPerSegment - _state.SegmentLive[s];
            }
            deadBlocks -= BlocksPerSegment - _headOffsetBlocks; // the head's unwritten rest is free, not dead
            if (_nextSegment != BatchHeader.NoSegment) deadBlocks -= BlocksPerSegment;
            deadBlocks -= ColdRoomLocked(); // so is the cleaner's segment's
            long indexRam = _state.Index.RamBytes, tableRam = _state.Chunks.RamBytes, mapRam = _state.MapRamBytes();
            return new PoolStats
            {
                Uuid = Uuid,
                Fingerprint = _super.Fingerprint == FingerprintAlgorithm.Sha256 ? "sha256" : "xxh3-128",
                CapacityBytes = _super.LogBytes,
                FreeBytes = (FreeBlocksLocked() + ColdRoomLocked()) * ChunkBytes,
                PhysicalBytes = unique * ChunkBytes,
                LogicalBytes = logicalBlocks * ChunkBytes,
                UniqueChunks = unique,
                ZeroChunks = zeroBlocks,
                DedupRatio = unique == 0 ? 1.0 : (double)logicalBlocks / unique,
                JournalBytes = _journalBytesSinceCheckpoint,
                RamBytesIndex = indexRam,
                RamBytesChunkTable = tableRam,
                RamBytesMaps = mapRam,
                RamBytesPerUniqueChunk = unique == 0 ? 0 : (double)(indexRam + tableRam) / unique,
                RamBytesPerMappedBlock = mapBlocks == 0 ? 0 : (double)mapRam / mapBlocks,
                LastRecoveryTime = _lastRecoveryTime,
                LastRecoveryMs = _lastRecoveryMs,
                SegmentsTotal = _super.SegmentCount,
                SegmentsFree = _freeSegments.Count,
                SegmentsUsed = usedSegments,
                SegmentsQuarantined = _quarantine.Count,
                FillPercent = 100.0 * unique / Math.Max(1, (long)_super.SegmentCount * BlocksPerSegment),
                FillWarningPercent = _fillWarnedPercent,
                ReadCacheBytes = (long)_chunkCache.Slots * ChunkBytes,
                ReadCacheChunks = _chunkCache.Count,
                ReadCacheHits = _chunkCache.Hits,
                ReadCacheMisses = _chunkCache.Misses,
                LiveBytes = unique * ChunkBytes,
                DeadBytes = deadBlocks * ChunkBytes,
                GcBytesMoved = _gcBytesMoved,
                GcBytesMovedInline = _gcBytesMovedInline,
                GcSegmentsCleaned = _gcSegmentsCleaned,
                GcMs = _gcTicks * 1000.0 / Stopwatch.Frequency,
                CheckpointsWritten = Interlocked.Read(ref _checkpointsWritten),
                CheckpointMs = Interlocked.Read(ref _checkpointTicks) * 1000.0 / Stopwatch.Frequency,
                DestageMs = Interlocked.Read(ref _destageTicks) * 1000.0 / Stopwatch.Frequency,
                DestageBuildMs = Interlocked.Read(ref _destageBuildTicks) * 1000.0 / Stopwatch.Frequency,
                DestageDeviceWaitMs = Interlocked.Read(ref _destageDeviceWaitTicks) * 1000.0 / Stopwatch.Frequency,
                DestageGroups = Interlocked.Read(ref _destageGroups),
                JournalFlushes = _journalFlushes,
                HostBytesWritten = Interlocked.Read(ref _hostBytesWritten),
                NopWriteBytes = Volatile.Read(ref _nopWrites) * ChunkBytes,
                DeviceBytesWritten = _deviceBytesWritten,
                WriteAmplification = _hostBytesWritten == 0 ? 0 : (double)_deviceBytesWritten / _hostBytesWritten,
                Volumes = volumes,
            };
        }
    }

    /// <summary>Destages everything and writes a checkpoint.</summary>
    public ValueTask CheckpointAsync(CancellationToken ct) => Hosts.Run(static s => s.Pool.CheckpointNowAsync(s.Ct), (Pool: this, Ct: ct));

    private async ValueTask CheckpointNowAsync(CancellationToken ct)
    {
        await FlushAllAsync(ct).ConfigureAwait(false);
        await _commit.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            WriteCheckpointLocked("requested");
        }
        finally
        {
            _commit.Release();
        }
    }

    /// <summary>
    /// Clean shutdown: refuse new host requests and let those running finish, destage, checkpoint,
    /// close devices. The checkpoint comes after the last write the pool acknowledged.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        if (_disposed) return;
        if (!await CloseHostGateAsync(HostDrainMaxMs).ConfigureAwait(false))
            _log.LogError("{Count} host requests still running {Seconds} s after the pool began to close; closing anyway", Hosts.Inside, HostDrainMaxMs / 1000);
        try
        {
            if (_failure == null && !_checkOnly) await CheckpointNowAsync(CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            _log.LogError(e, "final checkpoint failed; the next open replays the journal");
        }
        await StopBackgroundAsync().ConfigureAwait(false);
        await DisposeResourcesWhenHostsLeftAsync().ConfigureAwait(false);
        _log.LogInformation("pool {Uuid} closed", Uuid);
    }

    /// <summary>Test seam: stops without destaging or checkpointing, as a crash would (the process lives on).</summary>
    internal async ValueTask AbandonAsync()
    {
        _failure ??= new MediaErrorException("pool abandoned");
        _ = Hosts.CloseAsync();
        await StopBackgroundAsync().ConfigureAwait(false);
        await DisposeResourcesWhenHostsLeftAsync().ConfigureAwait(false);
    }

    /// <summary>Closes the host gate; true when every request inside left within <paramref name="timeoutMs"/>.</summary>
    private async Task<bool> CloseHostGateAsync(int timeoutMs)
    {
        try
        {
            await Hosts.CloseAsync().WaitAsync(TimeSpan.FromMilliseconds(timeoutMs)).ConfigureAwait(false);
            return true;
        }
        catch (TimeoutException)
        {
            return false;
        }
    }

    /// <summary>
    /// Frees the pool's memory and closes its files once no host request is inside (the background
    /// work has stopped and failed whatever waited for it, so the rest leave soon). A request still
    /// inside after HostLeaveAfterStopMaxMs keeps everything open: better a leak until the process
    /// exits than a request reading freed memory or a reused descriptor.
    /// </summary>
    private async Task DisposeResourcesWhenHostsLeftAsync()
    {
        if (!await CloseHostGateAsync(HostLeaveAfterStopMaxMs).ConfigureAwait(false))
        {
            _disposed = true;
            _log.LogError("{Count} host requests still inside the stopped pool after {Seconds} s: its memory and files stay open until the process exits",
                Hosts.Inside, HostLeaveAfterStopMaxMs / 1000);
            return;
        }
        DisposeResources();
    }

    private void DisposeResources()
    {
        if (_disposed) return;
        _disposed = true;
        _logRing?.Dispose();
        _device.Dispose();
        _lock.Dispose();
        _state.Dispose();
        _cache.Dispose();
        _logBuffer.Dispose();
        for (int i = 1; i < _slots.Length; i++) _slots[i].Dispose(); // slot 0 is _logBuffer
        _prefetchBufferStore?.Dispose();
        _verifyBuffer.Dispose();
        _chunkCache.Dispose();
    }

    private static long NowMs() => Environment.TickCount64;

    private static double ElapsedMs(long startTimestamp) => Stopwatch.GetElapsedTime(startTimestamp).TotalMilliseconds;
}
