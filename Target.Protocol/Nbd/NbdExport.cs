// What the NBD server serves: named exports over IBlockVolume, found through a catalog the host
// owns. The catalog is asked at handshake time, so exports may come and go while the server runs.
using System.Diagnostics.CodeAnalysis;
using Target.Dedup;

namespace Target.Protocol.Nbd;

/// <param name="Name">Export name as clients ask for it (NBD_OPT_GO / EXPORT_NAME).</param>
/// <param name="Volume">The volume served.</param>
/// <param name="Description">Human-readable text for NBD_INFO_DESCRIPTION and NBD_OPT_LIST.</param>
/// <param name="ReadOnly">Serve read-only (writes get EPERM) even if the volume is writable.</param>
public sealed record NbdExport(string Name, IBlockVolume Volume, string Description, bool ReadOnly);

public interface INbdExportCatalog
{
    bool TryGetExport(string name, [MaybeNullWhen(false)] out NbdExport export);

    /// <summary>Exports in a stable order; the first is the default export unless the options name one.</summary>
    IReadOnlyList<NbdExport> ListExports();
}

/// <summary>A thread-safe in-memory catalog, enough for a host that adds and removes exports as volumes come and go.</summary>
public sealed class NbdExportCatalog : INbdExportCatalog
{
    private readonly object _lock = new();
    private NbdExport[] _exports = [];

    public NbdExportCatalog(params IEnumerable<NbdExport> exports)
    {
        foreach (NbdExport export in exports) Add(export);
    }

    /// <summary>Adds or replaces the export with this name.</summary>
    public void Add(NbdExport export)
    {
        ArgumentNullException.ThrowIfNull(export);
        if (!NbdOptions.TryDecodeString(System.Text.Encoding.UTF8.GetBytes(export.Name), out _))
            throw new ArgumentException($"export name '{export.Name}' is not a valid NBD string", nameof(export));
        lock (_lock)
        {
            var next = new List<NbdExport>(_exports);
            int index = next.FindIndex(e => e.Name == export.Name);
            if (index >= 0) next[index] = export;
            else next.Add(export);
            _exports = next.ToArray();
        }
    }

    public bool Remove(string name)
    {
        lock (_lock)
        {
            var next = new List<NbdExport>(_exports);
            int removed = next.RemoveAll(e => e.Name == name);
            _exports = next.ToArray();
            return removed > 0;
        }
    }

    public bool TryGetExport(string name, [MaybeNullWhen(false)] out NbdExport export)
    {
        foreach (NbdExport candidate in Volatile.Read(ref _exports))
        {
            if (candidate.Name == name)
            {
                export = candidate;
                return true;
            }
        }
        export = null;
        return false;
    }

    public IReadOnlyList<NbdExport> ListExports() => Volatile.Read(ref _exports);
}

public sealed class NbdServerOptions
{
    /// <summary>Export served for an empty name; null means the first export of the catalog.</summary>
    public string? DefaultExportName { get; set; }

    /// <summary>A client that has not reached the transmission phase by then is dropped.</summary>
    public TimeSpan HandshakeTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// With structured replies, a READ at least this long asks the volume for its allocation first
    /// and sends holes and zero extents as NBD_REPLY_TYPE_OFFSET_HOLE chunks. Shorter reads skip
    /// the extra query (it would cost more than the bytes it saves). int.MaxValue turns it off.
    /// </summary>
    public int HoleReplyMinBytes { get; set; } = 64 * 1024;
}
