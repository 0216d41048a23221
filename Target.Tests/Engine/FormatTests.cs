// On-disk formats, each checked before it is written and again after it is read back:
// journal records (every type round-trips; truncated and unknown records are rejected), the
// batch header (fixed fields, CRC seal and verify; any corrupted byte is detected), the
// superblock (round trip, CRC, the second copy), and checkpoints (write, validate, load into
// an empty state gives the same maps, chunk table, index and segment states; a corrupted
// byte makes the checkpoint invalid).
using System.Buffers.Binary;
using Target.Dedup;
using Target.Dedup.Engine;
using Target.Dedup.Format;
using Target.Dedup.Hashing;
using Target.Dedup.Index;
using Target.Dedup.Maps;
using Xunit.Abstractions;

namespace Target.Tests.Engine;

public sealed class FormatTests(ITestOutputHelper output)
{
    [Fact]
    public void EveryRecordTypeRoundTrips()
    {
        byte[] buffer = new byte[4096];
        var uuid = Guid.NewGuid();
        var fp = new Fingerprint(0x0123456789ABCDEF, 0xFEDCBA9876543210);
        var w = new RecordWriter(buffer);
        w.NewChunk(77, 3, 0xDEADBEEF, fp);
        w.Map(4, 1L << 39, 78);
        w.MapRange(5, 100, 1L << 33, 1);
        w.CopyRange(6, 7, 8, 9, 10);
        w.CreateVolume(11, uuid, 1L << 40, 512, "vol-ü:1");
        w.DeleteVolume(12);
        w.ResizeVolume(13, 8192);
        int length = w.Length;
        Assert.Equal(BatchHeader.NewChunkBytes + BatchHeader.MapBytes + BatchHeader.MapRangeBytes + BatchHeader.CopyRangeBytes
            + 34 + System.Text.Encoding.UTF8.GetByteCount("vol-ü:1") + BatchHeader.DeleteVolumeBytes + BatchHeader.ResizeVolumeBytes, length);

        var r = new RecordReader(buffer.AsSpan(0, length));
        Assert.True(r.Next(out LogRecord a));
        Assert.Equal((RecordType.NewChunk, 77u, 3, 0xDEADBEEFu, fp), (a.Type, a.ChunkId, a.DataIndex, a.Crc, a.Fingerprint));
        Assert.True(r.Next(out LogRecord b));
        Assert.Equal((RecordType.Map, 4u, 1L << 39, 78u), (b.Type, b.VolumeId, b.Block, b.ChunkId));
        Assert.True(r.Next(out LogRecord c));
        Assert.Equal((RecordType.MapRange, 5u, 100L, 1L << 33, 1u), (c.Type, c.VolumeId, c.Block, c.Count, c.Value));
        Assert.True(r.Next(out LogRecord d));
        Assert.Equal((RecordType.CopyRange, 6u, 7L, 8u, 9L, 10L), (d.Type, d.VolumeId, d.Block, d.DestinationVolumeId, d.DestinationBlock, d.Count));
        Assert.True(r.Next(out LogRecord e));
        Assert.Equal((RecordType.CreateVolume, 11u, uuid, 1L << 40, 512, "vol-ü:1"), (e.Type, e.VolumeId, e.Uuid, e.SizeBytes, e.LogicalBlockSize, e.Name));
        Assert.True(r.Next(out LogRecord f));
        Assert.Equal((RecordType.DeleteVolume, 12u), (f.Type, f.VolumeId));
        Assert.True(r.Next(out LogRecord g));
        Assert.Equal((RecordType.ResizeVolume, 13u, 8192L), (g.Type, g.VolumeId, g.SizeBytes));
        Assert.False(r.Next(out _));
    }

    [Fact]
    public void TruncatedAndUnknownRecordsAreRejected()
    {
        byte[] buffer = new byte[256];
        var w = new RecordWriter(buffer);
        w.CreateVolume(1, Guid.NewGuid(), 4096, 4096, "abc");
        int length = w.Length;
        for (int cut = 1; cut < length; cut++)
        {
            Assert.Throws<InvalidDataException>(() =>
            {
                var r = new RecordReader(buffer.AsSpan(0, cut));
                r.Next(out _);
            });
        }
        buffer[0] = 200;
        Assert.Throws<InvalidDataException>(() =>
        {
            var r = new RecordReader(buffer.AsSpan(0, length));
            r.Next(out _);
        });
        Assert.Throws<ArgumentException>(() =>
        {
            var w2 = new RecordWriter(new byte[1024]);
            w2.CreateVolume(1, Guid.Empty, 4096, 4096, new string('x', 256));
        });
        Assert.Throws<InvalidOperationException>(() =>
        {
            var w3 = new RecordWriter(new byte[10]);
            w3.DeleteVolume(1);
            w3.DeleteVolume(2);
            w3.DeleteVolume(3);
        });
    }

    [Fact]
    public void AFullDestageBatchFitsInTheHeaderSectors()
    {
        int worst = Pool.MaxBatchBlocks * (BatchHeader.NewChunkBytes + BatchHeader.MapBytes);
        Assert.True(BatchHeader.HeaderBlocks(worst) <= Pool.MaxHeaderBlocks, $"{worst} record bytes need {BatchHeader.HeaderBlocks(worst)} header blocks");
        Assert.True(BatchHeader.HeaderBlocks(BatchHeader.CreateVolumeMaxBytes) == 1);
        Assert.Equal(1, BatchHeader.HeaderBlocks(0));
        Assert.Equal(1, BatchHeader.HeaderBlocks(4096 - 64));
        Assert.Equal(2, BatchHeader.HeaderBlocks(4096 - 63));
    }

    private static byte[] SealedHeader(int recordBytes, ulong poolTag, out byte[] records)
    {
        int blocks = BatchHeader.HeaderBlocks(recordBytes);
        byte[] header = new byte[blocks * 4096];
        records = new byte[recordBytes];
        new Random(recordBytes).NextBytes(records);
        records.CopyTo(header, BatchHeader.FixedBytes);
        BatchHeader.WriteFixed(header, seq: 42, epoch: 7, poolTag, blocks, dataBlocks: 5, recordBytes, nextSegment: 3, dataCrc: 0xCAFEF00D, previousHeaderCrc: 0x5EED5EED);
        BatchHeader.Seal(header);
        return header;
    }

    [Theory]
    [InlineData(0)]
    [InlineData(100)]
    [InlineData(9000)]
    public void BatchHeaderFixedFieldsAndCrc(int recordBytes)
    {
        const ulong tag = 0x1122334455667788;
        byte[] header = SealedHeader(recordBytes, tag, out byte[] records);
        Assert.True(BatchHeader.CrcMatches(header));
        Assert.True(BatchHeader.TryReadFixed(header.AsSpan(0, 4096), tag, out BatchHeader.Info info));
        uint sealedCrc = BitConverter.ToUInt32(header, 4);
        Assert.Equal(new BatchHeader.Info(42, 7, BatchHeader.HeaderBlocks(recordBytes), 5, recordBytes, 3, 0xCAFEF00D, 0x5EED5EED, sealedCrc), info);
        Assert.True(header.AsSpan(BatchHeader.FixedBytes, recordBytes).SequenceEqual(records));
        Assert.False(BatchHeader.TryReadFixed(header.AsSpan(0, 4096), tag + 1, out _));
    }

    [Fact]
    public void AnyCorruptedHeaderByteIsDetected()
    {
        const ulong tag = 99;
        int seed = EngineTest.Seed(output);
        var random = new Random(seed);
        byte[] header = SealedHeader(6000, tag, out _);
        for (int i = 0; i < 3000; i++)
        {
            byte[] copy = (byte[])header.Clone();
            int at = i < 64 ? i : random.Next(copy.Length);
            copy[at] ^= (byte)(1 << random.Next(8));
            bool accepted = BatchHeader.TryReadFixed(copy.AsSpan(0, 4096), tag, out BatchHeader.Info info) && BatchHeader.CrcMatches(copy.AsSpan(0, info.HeaderBlocks * 4096));
            Assert.False(accepted, $"seed {seed}: flipped a bit of byte {at} and the header still validates");
        }
    }

    [Fact]
    public void SuperblockRoundTripsAndDetectsCorruption()
    {
        var super = new Superblock { PoolUuid = Guid.NewGuid(), Fingerprint = FingerprintAlgorithm.Sha256, SegmentBytes = 4 << 20, SegmentCount = 123, CreatedUnixMs = 1_700_000_000_000 };
        byte[] sector = new byte[4096];
        super.Encode(sector);
        Superblock? back = Superblock.TryDecode(sector, out string? problem);
        Assert.Null(problem);
        Assert.Equal(super, back);
        Assert.Equal(1024, back!.BlocksPerSegment);
        Assert.Equal((1L << 20) + 2L * (4 << 20), back.SegmentOffset(2));
        Assert.Equal((1L << 20) + 5L * 4096, Superblock.BlockOffset(5));
        for (int at = 0; at < 4096; at += 61)
        {
            byte[] copy = (byte[])sector.Clone();
            copy[at] ^= 0x10;
            Assert.Null(Superblock.TryDecode(copy, out string? why));
            Assert.NotNull(why);
        }
        Assert.Null(Superblock.TryDecode(new byte[4096], out string? none));
        Assert.Equal("no Target pool signature", none);
    }

    private static PoolState BuildState(int seed, out int volumes)
    {
        var random = new Random(seed);
        var state = new PoolState(segmentCount: 8, blocksPerSegment: 1024);
        byte[] buffer = new byte[16384];
        var w = new RecordWriter(buffer);
        w.CreateVolume(1, Guid.NewGuid(), 64L << 20, 4096, "a");
        w.CreateVolume(2, Guid.NewGuid(), 1L << 30, 512, "b");
        state.ApplyBatch(buffer.AsSpan(0, w.Length), 0, replaying: true);
        volumes = 2;
        uint nextId = 2;
        for (int batch = 0; batch < 20; batch++)
        {
            w = new RecordWriter(buffer);
            int n = random.Next(1, 100);
            for (int i = 0; i < n; i++)
            {
                uint id = nextId++;
                w.NewChunk(id, i, (uint)random.Next(), new Fingerprint((ulong)random.NextInt64(), (ulong)random.NextInt64()));
                w.Map((uint)random.Next(1, 3), random.Next(16384), id);
            }
            state.ApplyBatch(buffer.AsSpan(0, w.Length), (uint)(batch * 200 + 1), replaying: true);
        }
        w = new RecordWriter(buffer);
        w.MapRange(1, 100, 1000, ChunkTable.ZeroId);
        w.CopyRange(1, 0, 2, 100_000, 5000);
        state.ApplyBatch(buffer.AsSpan(0, w.Length), 0, replaying: true);
        return state;
    }

    [Fact]
    public void CheckpointRoundTripsTheWholeState()
    {
        int seed = EngineTest.Seed(output);
        using var dir = new TempPoolDir();
        using PoolState state = BuildState(seed, out _);
        var position = new CheckpointPosition(LogSeq: 55, Segment: 3, OffsetBlocks: 17, NextSegment: 4, PreviousHeaderCrc: 0xABCD1234);
        var segments = new SegmentState[8];
        segments[3] = SegmentState.Used;
        segments[4] = SegmentState.Used;
        segments[6] = SegmentState.Quarantined;
        string path = Checkpoint.PathOf(dir.Path, 1);
        Checkpoint.Write(path, 9, poolTag: 0x77, position, state, segments);

        Checkpoint.Header? header = Checkpoint.TryReadHeader(path, 0x77, out string? problem);
        Assert.Null(problem);
        Assert.Equal(9ul, header!.Seq);
        Assert.Equal(position, header.Position);
        Assert.Null(Checkpoint.TryReadHeader(path, 0x78, out problem));
        Assert.Equal("belongs to another pool", problem);

        using var loaded = new PoolState(8, 1024);
        SegmentState[] loadedSegments = Checkpoint.Load(path, loaded);
        Assert.Equal(segments, loadedSegments);
        Assert.Equal(state.NextVolumeId, loaded.NextVolumeId);
        Assert.Equal(state.SegmentLive, loaded.SegmentLive);
        Assert.Equal(state.Chunks.HighWater, loaded.Chunks.HighWater);
        Assert.Equal(state.Chunks.LiveCount, loaded.Chunks.LiveCount);
        Assert.Equal(state.Index.Count, loaded.Index.Count);
        for (uint id = 2; id < state.Chunks.HighWater; id++)
        {
            ChunkEntry a = state.Chunks[id], b = loaded.Chunks[id];
            Assert.Equal(a.RefCount, b.RefCount);
            if (a.RefCount == 0) continue;
            Assert.Equal((a.Location, a.Crc, a.FpHigh), (b.Location, b.Crc, b.FpHigh));
        }
        var tags = new Dictionary<uint, uint>();
        state.Index.ForEach((id, tag) => tags[id] = tag);
        foreach ((uint id, uint tag) in tags)
            Assert.True(loaded.Index.Contains(id, ((ulong)loaded.Chunks[id].FpHigh << 32) | tag), $"chunk {id} missing from the loaded index");
        foreach (VolumeState v in state.VolumesById.Values)
        {
            VolumeState u = loaded.VolumesById[v.Id];
            Assert.Equal((v.Name, v.Uuid, v.SizeBytes, v.LogicalBlockSize), (u.Name, u.Uuid, u.SizeBytes, u.LogicalBlockSize));
            Assert.Equal((v.Map.DataBlocks, v.Map.ZeroBlocks, v.Map.AllocatedPages), (u.Map.DataBlocks, u.Map.ZeroBlocks, u.Map.AllocatedPages));
            for (long b = 0; b < v.Map.Blocks; b = v.Map.NextAllocatedPageStart(b + 1))
                Assert.Equal(v.Map.Get(b), u.Map.Get(b));
        }
        Assert.Same(loaded.VolumesByName["b"], loaded.VolumesById[2]);
    }

    [Fact]
    public void ACheckpointBodyIsWhatBinaryWriterWritesAndALongNonAsciiNameRoundTrips()
    {
        // The body encoder writes fields itself (not through BinaryWriter); Load decodes them itself
        // too. A 200-byte UTF-8 name needs a two-byte length prefix.
        using var dir = new TempPoolDir();
        using var state = new PoolState(segmentCount: 4, blocksPerSegment: 1024);
        string name = string.Concat(Enumerable.Repeat("é", 100));
        var uuid = Guid.NewGuid();
        byte[] buffer = new byte[4096];
        var records = new RecordWriter(buffer);
        records.CreateVolume(7, uuid, 8L << 20, 512, name);
        state.ApplyBatch(buffer.AsSpan(0, records.Length), 0, replaying: true);
        var segments = new SegmentState[4];
        segments[2] = SegmentState.Quarantined;
        string path = Checkpoint.PathOf(dir.Path, 0);
        Checkpoint.Write(path, 1, 9, new CheckpointPosition(1, 0, 0, 1, 0), state, segments);

        var expected = new MemoryStream();
        using (var w = new BinaryWriter(expected, System.Text.Encoding.UTF8, leaveOpen: true))
        {
            w.Write(segments.Length);
            foreach (SegmentState s in segments) w.Write((byte)s);
            w.Write(state.NextVolumeId);
            w.Write(1);
            w.Write(7u);
            w.Write(uuid.ToByteArray());
            w.Write(8L << 20);
            w.Write(512);
            w.Write(name);
            w.Write(state.VolumesById[7].Map.AllocatedPages);
            w.Write(state.Chunks.HighWater);
            w.Write(state.Index.Count);
        }
        byte[] body = File.ReadAllBytes(path)[4096..];
        Assert.Equal(Convert.ToHexString(expected.ToArray()), Convert.ToHexString(body));

        using var loaded = new PoolState(4, 1024);
        Assert.Equal(segments, Checkpoint.Load(path, loaded));
        Assert.Equal(name, loaded.VolumesById[7].Name);
        Assert.Same(loaded.VolumesByName[name], loaded.VolumesById[7]);
    }

    [Fact]
    public void ACheckpointBodyWrittenByBinaryWriterLoadsFieldForField()
    {
        // Load decodes with its own 1 MiB buffer; the body here is what BinaryWriter writes (the
        // format since the first checkpoint), 4.8 MB of chunk entries make fields straddle the
        // buffer's refills, and two volumes carry map pages and a two-byte name length.
        using var dir = new TempPoolDir();
        const int segmentCount = 4, blocksPerSegment = 1024, chunkCount = 300_000;
        uint highWater = ChunkTable.FirstChunkId + chunkCount;
        var rng = new Random(6);
        var segments = new[] { SegmentState.Free, SegmentState.Quarantined, SegmentState.Free, SegmentState.Free };
        string longName = string.Concat(Enumerable.Repeat("ü", 90));
        var uuids = new[] { Guid.NewGuid(), Guid.NewGuid() };
        var pages = new uint[3][];
        for (int p = 0; p < pages.Length; p++)
        {
            pages[p] = new uint[VolumeMap.PageEntries];
            for (int k = 0; k < pages[p].Length; k++) pages[p][k] = (uint)rng.Next(0, (int)highWater);
        }
        var entries = new (uint Location, uint RefCount, uint Crc, uint FpHigh)[chunkCount];
        for (int i = 0; i < chunkCount; i++)
            entries[i] = i % 7 == 3 ? default : ((uint)rng.Next(0, segmentCount * blocksPerSegment), (uint)rng.Next(1, 5), (uint)rng.Next(), (uint)rng.Next());
        var indexed = new List<(uint Id, uint Tag)>();
        for (int i = 0; i < chunkCount; i += 3)
            if (entries[i].RefCount > 0) indexed.Add((ChunkTable.FirstChunkId + (uint)i, DedupIndex.TagOf((ulong)rng.Next())));

        string path = Checkpoint.PathOf(dir.Path, 0);
        using (var file = File.Create(path))
        using (var w = new BinaryWriter(file, System.Text.Encoding.UTF8))
        {
            w.Write(new byte[4096]);
            w.Write(segments.Length);
            foreach (SegmentState s in segments) w.Write((byte)s);
            w.Write(12u);
            w.Write(2);
            (uint Id, string Name, long[] Pages)[] volumes = [(3u, "a", [0L, 5L]), (11u, longName, [2L])];
            for (int v = 0; v < volumes.Length; v++)
            {
                w.Write(volumes[v].Id);
                w.Write(uuids[v].ToByteArray());
                w.Write(1L << 30);
                w.Write(4096);
                w.Write(volumes[v].Name);
                w.Write(volumes[v].Pages.Length);
                for (int p = 0; p < volumes[v].Pages.Length; p++)
                {
                    w.Write(volumes[v].Pages[p]);
                    foreach (uint e in pages[v * 2 + p]) w.Write(e);
                }
            }
            w.Write(highWater);
            foreach ((uint location, uint refCount, uint crc, uint fpHigh) in entries)
            {
                w.Write(location);
                w.Write(refCount);
                w.Write(crc);
                w.Write(fpHigh);
            }
            w.Write((long)indexed.Count);
            foreach ((uint id, uint tag) in indexed)
            {
                w.Write(id);
                w.Write(tag);
            }
        }

        using var state = new PoolState(segmentCount, blocksPerSegment);
        Assert.Equal(segments, Checkpoint.Load(path, state));
        Assert.Equal(12u, state.NextVolumeId);
        VolumeState first = state.VolumesById[3], second = state.VolumesById[11];
        Assert.Equal(("a", uuids[0], 1L << 30, 4096), (first.Name, first.Uuid, first.SizeBytes, first.LogicalBlockSize));
        Assert.Equal((longName, uuids[1]), (second.Name, second.Uuid));
        Assert.Equal(2, first.Map.AllocatedPages);
        for (int k = 0; k < VolumeMap.PageEntries; k += 97)
        {
            Assert.Equal(pages[0][k], first.Map.Get(k));
            Assert.Equal(pages[1][k], first.Map.Get(5L * VolumeMap.PageEntries + k));
            Assert.Equal(pages[2][k], second.Map.Get(2L * VolumeMap.PageEntries + k));
        }
        Assert.Equal(highWater, state.Chunks.HighWater);
        var live = new int[segmentCount];
        for (int i = 0; i < chunkCount; i++)
        {
            ChunkEntry e = state.Chunks[ChunkTable.FirstChunkId + (uint)i];
            Assert.Equal(entries[i], (e.RefCount > 0 ? e.Location : entries[i].Location, e.RefCount, e.Crc, e.FpHigh));
            if (entries[i].RefCount > 0) live[entries[i].Location / blocksPerSegment]++;
        }
        Assert.Equal(live, state.SegmentLive);
        var loadedIndex = new List<(uint Id, uint Tag)>();
        state.Index.ForEach((id, tag) => loadedIndex.Add((id, tag)));
        Assert.Equal(indexed.OrderBy(x => x.Id), loadedIndex.OrderBy(x => x.Id));
    }

    [Fact]
    public void ACorruptedCheckpointIsRejected()
    {
        int seed = EngineTest.Seed(output);
        var random = new Random(seed);
        using var dir = new TempPoolDir();
        using PoolState state = BuildState(seed, out _);
        string path = Checkpoint.PathOf(dir.Path, 0);
        Checkpoint.Write(path, 3, 5, new CheckpointPosition(1, 0, 0, 1, 0), state, new SegmentState[8]);
        byte[] good = File.ReadAllBytes(path);
        for (int i = 0; i < 20; i++)
        {
            byte[] bad = (byte[])good.Clone();
            int at = i < 10 ? random.Next(64) : random.Next(4096, bad.Length);
            bad[at] ^= (byte)(1 << random.Next(8));
            File.WriteAllBytes(path, bad);
            Assert.Null(Checkpoint.TryReadHeader(path, 5, out string? problem));
            output.WriteLine($"byte {at}: {problem}");
        }
        File.WriteAllBytes(path, good.AsSpan(0, good.Length - 1).ToArray());
        Assert.Null(Checkpoint.TryReadHeader(path, 5, out string? truncated));
        Assert.Equal("truncated body", truncated);
        Assert.Null(Checkpoint.TryReadHeader(Checkpoint.PathOf(dir.Path, 1), 5, out string? missing));
        Assert.Equal("missing", missing);
    }
}
