// The offline consistency checker (`target pool check`). It recovers the pool in memory
// (nothing is written) and proves: refcounts equal the references from the volume maps;
// every map entry names a live chunk; the index holds every live chunk once; per-segment
// live counts match chunk locations; every live chunk reads back with a matching CRC and
// fingerprint. Any problem makes the report unclean.
using Target.Dedup.Device;
using Target.Dedup.Engine;
using Target.Dedup.Format;
using Target.Dedup.Hashing;
using Target.Dedup.Index;

namespace Target.Dedup;

public sealed record PoolCheckProgress(string Phase, long Done, long Total);

public sealed record PoolCheckReport(bool Clean, IReadOnlyList<string> Problems, long ChunksChecked, long ReferencesChecked, long VolumesChecked);

public static class PoolChecker
{
    /// <summary>Problems listed by name; beyond this the report only counts them.</summary>
    internal const int MaxProblemsListed = 100;

    /// <summary>Offline consistency check of a pool that no process has open.</summary>
    public static Task<PoolCheckReport> CheckAsync(string directory, bool noDirect, IProgress<PoolCheckProgress>? progress, CancellationToken ct) =>
        Task.Run(() =>
        {
            var options = new PoolOptions { Directory = directory, NoDirect = noDirect, CacheBytes = 64 * Pool.ChunkBytes };
            Pool pool = Pool.Open(options, checkOnly: true);
            try
            {
                return pool.Check(progress, ct);
            }
            finally
            {
                pool.DisposeAsync().AsTask().GetAwaiter().GetResult();
            }
        }, ct);
}

public sealed partial class Pool
{
    internal PoolCheckReport Check(IProgress<PoolCheckProgress>? progress, CancellationToken ct)
    {
        var problems = new List<string>();
        long problemCount = 0;
        void Problem(string text)
        {
            problemCount++;
            if (problems.Count < PoolChecker.MaxProblemsListed) problems.Add(text);
        }

        ChunkTable chunks = _state.Chunks;
        uint highWater = chunks.HighWater;
        var references = new uint[highWater];
        long referencesChecked = 0;
        int volumeIndex = 0;
        foreach (VolumeState volume in _state.VolumesById.Values)
        {
            ct.ThrowIfCancellationRequested();
            long blocks = volume.Map.Blocks;
            long data = 0, zero = 0;
            for (long b = volume.Map.NextAllocatedPageStart(0); b < blocks; b = volume.Map.NextAllocatedPageStart(b + 1))
            {
                uint id = volume.Map.Get(b);
                if (id == ChunkTable.HoleId) continue;
                referencesChecked++;
                if (id == ChunkTable.ZeroId) { zero++; continue; }
                data++;
                if (id >= highWater || chunks[id].RefCount == 0)
                {
                    Problem($"volume {volume.Name} block {b} maps to chunk {id}, which is not live");
                    continue;
                }
                references[id]++;
            }
            if (data != volume.Map.DataBlocks || zero != volume.Map.ZeroBlocks)
                Problem($"volume {volume.Name}: map counters say {volume.Map.DataBlocks} data / {volume.Map.ZeroBlocks} zero blocks, entries say {data} / {zero}");
            progress?.Report(new PoolCheckProgress("maps", ++volumeIndex, _state.VolumesById.Count));
        }

        var segmentLive = new int[_state.SegmentLive.Length];
        long live = 0;
        using var buffer = new AlignedBuffer(ChunkBytes);
        long chunksChecked = 0;
        long total = Math.Max(1, highWater - ChunkTable.FirstChunkId);
        for (uint id = ChunkTable.FirstChunkId; id < highWater; id++)
        {
            if ((id & 0xFFF) == 0)
            {
                ct.ThrowIfCancellationRequested();
                progress?.Report(new PoolCheckProgress("chunks", id - ChunkTable.FirstChunkId, total));
            }
            ChunkEntry e = chunks[id];
            if (e.RefCount != references[id])
                Problem($"chunk {id}: refcount {e.RefCount}, but {references[id]} map entries reference it");
            if (e.RefCount == 0) continue;
            live++;
            chunksChecked++;
            uint segment = _state.SegmentOf(e.Location);
            if (segment >= segmentLive.Length) { Problem($"chunk {id}: location {e.Location} beyond the pool"); continue; }
            segmentLive[segment]++;
            if (_segments[segment] != SegmentState.Used) Problem($"chunk {id} lives in segment {segment}, which is marked {_segments[segment]}");
            try
            {
                _device.Read(Superblock.BlockOffset(e.Location), buffer.Span);
            }
            catch (IOException ex)
            {
                Problem($"chunk {id} at block {e.Location}: read failed: {ex.Message}");
                continue;
            }
            if (Crc32C.Compute(buffer.Span) != e.Crc)
            {
                Problem($"chunk {id} at block {e.Location}: CRC mismatch (stored data is corrupt)");
                continue;
            }
            Fingerprint fp = _fingerprinter.Compute(buffer.Span);
            if (DedupIndex.HighOf(fp.Low) != e.FpHigh)
            {
                Problem($"chunk {id} at block {e.Location}: fingerprint does not match the chunk table");
                continue;
            }
            // Contains, not FindCandidates: many chunks may share a prefix (collisions), and a bounded candidate list would miss some.
            if (!_state.Index.Contains(id, fp.Low)) Problem($"chunk {id}: missing from the dedup index");
        }
        if (_state.Index.Count != live) Problem($"dedup index holds {_state.Index.Count} entries for {live} live chunks");
        if (chunks.LiveCount != live) Problem($"chunk table counts {chunks.LiveCount} live chunks, found {live}");
        for (int s = 0; s < segmentLive.Length; s++)
        {
            if (segmentLive[s] != _state.SegmentLive[s])
                Problem($"segment {s}: live count {_state.SegmentLive[s]}, chunks located there {segmentLive[s]}");
        }
        progress?.Report(new PoolCheckProgress("chunks", total, total));
        if (problemCount > problems.Count) problems.Add($"... and {problemCount - problems.Count} more problems");
        return new PoolCheckReport(problemCount == 0, problems, chunksChecked, referencesChecked, _state.VolumesById.Count);
    }
}
