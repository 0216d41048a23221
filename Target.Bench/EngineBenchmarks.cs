// Engine hot paths. Expected: 0 B allocated per operation for the index benchmarks and for the
// in-process chunk write (4 KiB into the write cache) and read (a mapped chunk, O_DIRECT read
// + CRC check) paths. The pool lives in a fresh directory under /tmp (ext4, O_DIRECT).
// Run: dotnet run -c Release --project Target.Bench -- --filter '*EngineBenchmarks*'
using BenchmarkDotNet.Attributes;
using Target.Dedup;
using Target.Dedup.Index;

namespace Target.Bench;

[MemoryDiagnoser]
public class EngineBenchmarks
{
    private const int ChunkBytes = Pool.ChunkBytes;
    private const int IndexEntries = 1 << 20;
    private const int IndexBatch = 1 << 16;
    private const int CachedBlocks = 1024;
    private const int StoredBlocks = 4096;

    private ChunkTable _chunks = null!;
    private DedupIndex _index = null!;
    private ulong[] _fingerprints = null!;
    private uint[] _candidates = new uint[4];
    private ChunkTable _insertChunks = null!;
    private DedupIndex _insertIndex = null!;
    private ulong[] _insertFingerprints = null!;

    private string _directory = null!;
    private Pool _pool = null!;
    private Volume _volume = null!;
    private byte[] _page = null!;
    private byte[] _readBuffer = null!;
    private int _next;
    private readonly byte[] _unique = new byte[ChunkBytes];
    private long _uniqueCounter;

    [GlobalSetup]
    public void Setup()
    {
        var random = new Random(42);
        _chunks = new ChunkTable();
        _index = new DedupIndex(_chunks);
        _fingerprints = new ulong[IndexEntries];
        for (int i = 0; i < IndexEntries; i++)
        {
            ulong fp = (ulong)random.NextInt64() ^ ((ulong)random.Next() << 63);
            uint id = _chunks.Allocate();
            _chunks[id].FpHigh = DedupIndex.HighOf(fp);
            _index.Insert(id, fp);
            _fingerprints[i] = fp;
        }
        _insertChunks = new ChunkTable();
        _insertIndex = new DedupIndex(_insertChunks);
        _insertFingerprints = new ulong[IndexBatch];
        for (int i = 0; i < IndexBatch; i++)
        {
            ulong fp = (ulong)random.NextInt64() ^ ((ulong)random.Next() << 63); // NextInt64 leaves bit 63 clear
            uint id = _insertChunks.Allocate();
            _insertChunks[id].FpHigh = DedupIndex.HighOf(fp);
            _insertFingerprints[i] = fp;
        }
        _insertIndex.Reserve(IndexBatch);

        _directory = Path.Combine("/tmp", "target-bench-" + Guid.NewGuid().ToString("N")[..8]);
        _pool = Pool.Open(new PoolOptions
        {
            Directory = _directory,
            CreateSizeBytes = (1L << 20) + 256L * Pool.DefaultSegmentBytes,
            CheckpointJournalBytes = 1L << 20, // a checkpoint per 256 batches frees the segments overwritten data leaves dead
            CacheBytes = 4L * CachedBlocks * ChunkBytes,
            DirtyAgeMaxMs = int.MaxValue / 2, // keep the benchmark's pages dirty in the cache
        });
        _volume = _pool.CreateVolumeAsync("bench", 256L << 20, 512, CancellationToken.None).AsTask().GetAwaiter().GetResult();
        _page = new byte[ChunkBytes];
        _readBuffer = new byte[ChunkBytes];
        byte[] data = new byte[ChunkBytes];
        for (int b = 0; b < StoredBlocks; b++)
        {
            random.NextBytes(data);
            _volume.WriteAsync((long)(CachedBlocks + b) * ChunkBytes, data, WriteFlags.None, CancellationToken.None).AsTask().GetAwaiter().GetResult();
        }
        _pool.CheckpointAsync(CancellationToken.None).AsTask().GetAwaiter().GetResult(); // destaged: reads go to the device
        random.NextBytes(_page);
        for (int b = 0; b < CachedBlocks; b++)
            _volume.WriteAsync((long)b * ChunkBytes, _page, WriteFlags.None, CancellationToken.None).AsTask().GetAwaiter().GetResult();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _pool.DisposeAsync().AsTask().GetAwaiter().GetResult();
        Directory.Delete(_directory, recursive: true);
        _index.Dispose();
        _chunks.Dispose();
        _insertIndex.Dispose();
        _insertChunks.Dispose();
    }

    [Benchmark(OperationsPerInvoke = 4096)]
    public int IndexLookup()
    {
        int found = 0;
        int start = _next;
        for (int i = 0; i < 4096; i++) found += _index.FindCandidates(_fingerprints[(start + i) & (IndexEntries - 1)], _candidates);
        _next = (start + 4096) & (IndexEntries - 1);
        return found;
    }

    [Benchmark(OperationsPerInvoke = 4096)]
    public int IndexLookupMiss()
    {
        int found = 0;
        for (int i = 0; i < 4096; i++) found += _index.FindCandidates(_fingerprints[i] ^ 0x5555_5555_0000_0000, _candidates);
        return found;
    }

    /// <summary>Insert then remove (steady size, no growth): one op = one insert + one remove.</summary>
    [Benchmark(OperationsPerInvoke = IndexBatch)]
    public long IndexInsertRemove()
    {
        for (int i = 0; i < IndexBatch; i++) _insertIndex.Insert((uint)(i + ChunkTable.FirstChunkId), _insertFingerprints[i]);
        long count = _insertIndex.Count;
        for (int i = 0; i < IndexBatch; i++) _insertIndex.Remove((uint)(i + ChunkTable.FirstChunkId));
        return count;
    }

    /// <summary>Volume.WriteAsync of 4 KiB into the write cache (the block's page is already dirty: 1way-wb, no destage).</summary>
    [Benchmark(OperationsPerInvoke = CachedBlocks)]
    public void WriteChunkIntoCache()
    {
        for (int b = 0; b < CachedBlocks; b++)
        {
            ValueTask t = _volume.WriteAsync((long)b * ChunkBytes, _page, WriteFlags.None, CancellationToken.None);
            if (!t.IsCompletedSuccessfully) t.AsTask().GetAwaiter().GetResult();
        }
    }

    /// <summary>Volume.ReadAsync of a 4 KiB mapped chunk: map, chunk table, O_DIRECT read, CRC check, copy.</summary>
    [Benchmark(OperationsPerInvoke = 256)]
    public void ReadMappedChunk()
    {
        int start = _next;
        for (int i = 0; i < 256; i++)
        {
            long block = CachedBlocks + (start + i) % StoredBlocks;
            ValueTask t = _volume.ReadAsync(block * ChunkBytes, _readBuffer, CancellationToken.None);
            if (!t.IsCompletedSuccessfully) t.AsTask().GetAwaiter().GetResult();
        }
        _next = (start + 256) % StoredBlocks;
    }

    /// <summary>
    /// New unique 4 KiB chunks through the whole write path: cache, destage (fingerprint, index,
    /// journal append of 256 chunks + fdatasync), map update; one FLUSH per 256 chunks. The
    /// allocation figure includes the destager's (amortised per chunk).
    /// </summary>
    [Benchmark(OperationsPerInvoke = 256)]
    public void WriteAndDestageUniqueChunks()
    {
        for (int i = 0; i < 256; i++)
        {
            BitConverter.TryWriteBytes(_unique, ++_uniqueCounter);
            long block = CachedBlocks + StoredBlocks + (_uniqueCounter % (16 * 1024));
            ValueTask t = _volume.WriteAsync(block * ChunkBytes, _unique, WriteFlags.None, CancellationToken.None);
            if (!t.IsCompletedSuccessfully) t.AsTask().GetAwaiter().GetResult();
        }
        ValueTask f = _volume.FlushAsync(CancellationToken.None);
        if (!f.IsCompletedSuccessfully) f.AsTask().GetAwaiter().GetResult();
    }

    /// <summary>Volume.ReadAsync of a 4 KiB block that is dirty in the cache.</summary>
    [Benchmark(OperationsPerInvoke = CachedBlocks)]
    public void ReadCachedChunk()
    {
        for (int b = 0; b < CachedBlocks; b++)
        {
            ValueTask t = _volume.ReadAsync((long)b * ChunkBytes, _readBuffer, CancellationToken.None);
            if (!t.IsCompletedSuccessfully) t.AsTask().GetAwaiter().GetResult();
        }
    }
}
