// The exports NBD (and later iSCSI) see: the pool's volumes, each wrapped once in a MeteredVolume.
// Invariant: a name maps to the decorator of the pool's current volume of that name; a volume
// deleted and re-created under the same name gets a fresh decorator (and fresh counters).
using System.Diagnostics.CodeAnalysis;
using Target.Dedup;
using Target.Metrics;
using Target.Protocol.Nbd;

namespace Target.Hosting;

public sealed class VolumeCatalog : INbdExportCatalog
{
    private readonly Pool _pool;
    private readonly object _lock = new();
    private readonly Dictionary<string, MeteredVolume> _metered = new(StringComparer.Ordinal);

    public VolumeCatalog(Pool pool)
    {
        _pool = pool;
    }

    public bool TryGetExport(string name, [MaybeNullWhen(false)] out NbdExport export)
    {
        if (_pool.TryGetVolume(name, out Volume volume))
        {
            export = ToExport(Metered(volume));
            return true;
        }
        export = null;
        return false;
    }

    public IReadOnlyList<NbdExport> ListExports() => MeteredVolumes().Select(ToExport).ToList();

    /// <summary>The decorators of the pool's current volumes, in the pool's order.</summary>
    public IReadOnlyList<MeteredVolume> MeteredVolumes()
    {
        IReadOnlyList<Volume> volumes = _pool.Volumes;
        var result = new List<MeteredVolume>(volumes.Count);
        lock (_lock)
        {
            foreach (Volume volume in volumes)
                result.Add(MeteredLocked(volume));
            // Drop the counters of volumes that are gone.
            if (_metered.Count > volumes.Count)
            {
                var live = volumes.Select(v => v.Name).ToHashSet(StringComparer.Ordinal);
                foreach (string name in _metered.Keys.Where(n => !live.Contains(n)).ToList())
                    _metered.Remove(name);
            }
        }
        return result;
    }

    public void Forget(string name)
    {
        lock (_lock)
            _metered.Remove(name);
    }

    private MeteredVolume Metered(Volume volume)
    {
        lock (_lock)
            return MeteredLocked(volume);
    }

    private MeteredVolume MeteredLocked(Volume volume)
    {
        if (_metered.TryGetValue(volume.Name, out MeteredVolume? metered) && ReferenceEquals(metered.Inner, volume))
            return metered;
        metered = new MeteredVolume(volume);
        _metered[volume.Name] = metered;
        return metered;
    }

    private static NbdExport ToExport(MeteredVolume volume) =>
        new(volume.Name,
            volume,
            $"Target volume {volume.Name} ({Cli.SizeParser.Human(volume.SizeBytes)}, deduplicated)",
            (volume.Capabilities & VolumeCapabilities.ReadOnly) != 0);
}
