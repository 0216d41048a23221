// What the iSCSI server serves: each volume is the target "iqn.2026-11.io.target:<volume>" with
// one LUN (0). The catalog is asked at login and discovery time, so volumes may come and go.
using System.Diagnostics.CodeAnalysis;
using Target.Dedup;
using Target.Protocol.Nbd;

namespace Target.Protocol.Iscsi;

/// <param name="Name">The target's iSCSI name.</param>
/// <param name="Volume">The volume behind LUN 0.</param>
/// <param name="ReadOnly">Serve write-protected even if the volume is writable.</param>
public sealed record IscsiTarget(string Name, IBlockVolume Volume, bool ReadOnly);

public interface IIscsiTargetCatalog
{
    /// <summary>Targets in a stable order (SendTargets=All lists them in this order).</summary>
    IReadOnlyList<IscsiTarget> ListTargets();

    /// <summary>Finds a target by iSCSI name (names compare case-insensitively, RFC 3722).</summary>
    bool TryGetTarget(string name, [MaybeNullWhen(false)] out IscsiTarget target);
}

public static class IscsiNames
{
    /// <summary>Prefix of every target name; the volume name follows the colon.</summary>
    public const string TargetPrefix = "iqn.2026-11.io.target:";

    public static string ForVolume(string volumeName) => TargetPrefix + volumeName;

    /// <summary>The volume name in a target name of ours, or false when the prefix does not match.</summary>
    public static bool TryGetVolumeName(string targetName, [NotNullWhen(true)] out string? volumeName)
    {
        if (targetName.Length > TargetPrefix.Length && targetName.StartsWith(TargetPrefix, StringComparison.OrdinalIgnoreCase))
        {
            volumeName = targetName.Substring(TargetPrefix.Length);
            return true;
        }
        volumeName = null;
        return false;
    }

    /// <summary>
    /// A plausible iSCSI name (iqn., eui. or naa. form, printable, at most 223 bytes). Login
    /// refuses initiator names that fail this check.
    /// </summary>
    public static bool IsValidName(string? name)
    {
        if (string.IsNullOrEmpty(name) || name.Length > 223) return false;
        if (!(name.StartsWith("iqn.", StringComparison.OrdinalIgnoreCase)
              || name.StartsWith("eui.", StringComparison.OrdinalIgnoreCase)
              || name.StartsWith("naa.", StringComparison.OrdinalIgnoreCase)))
            return false;
        foreach (char c in name)
            if (char.IsControl(c) || c == ' ') return false;
        return true;
    }
}

/// <summary>Serves the exports of an NBD export catalog (the host's volume catalog) as iSCSI targets.</summary>
public sealed class ExportIscsiTargetCatalog : IIscsiTargetCatalog
{
    private readonly INbdExportCatalog _exports;

    public ExportIscsiTargetCatalog(INbdExportCatalog exports)
    {
        ArgumentNullException.ThrowIfNull(exports);
        _exports = exports;
    }

    public IReadOnlyList<IscsiTarget> ListTargets()
    {
        IReadOnlyList<NbdExport> exports = _exports.ListExports();
        var targets = new List<IscsiTarget>(exports.Count);
        foreach (NbdExport export in exports)
            targets.Add(new IscsiTarget(IscsiNames.ForVolume(export.Name), export.Volume, export.ReadOnly));
        return targets;
    }

    public bool TryGetTarget(string name, [MaybeNullWhen(false)] out IscsiTarget target)
    {
        target = null;
        if (!IscsiNames.TryGetVolumeName(name, out string? volumeName)) return false;
        if (_exports.TryGetExport(volumeName, out NbdExport? export))
        {
            target = new IscsiTarget(IscsiNames.ForVolume(export.Name), export.Volume, export.ReadOnly);
            return true;
        }
        // Case-insensitive fallback (iSCSI names are case-insensitive; volume names are not).
        foreach (NbdExport candidate in _exports.ListExports())
        {
            if (string.Equals(candidate.Name, volumeName, StringComparison.OrdinalIgnoreCase))
            {
                target = new IscsiTarget(IscsiNames.ForVolume(candidate.Name), candidate.Volume, candidate.ReadOnly);
                return true;
            }
        }
        return false;
    }
}

/// <summary>A fixed in-memory catalog (tests, embedding).</summary>
public sealed class IscsiTargetList : IIscsiTargetCatalog
{
    private readonly IscsiTarget[] _targets;

    public IscsiTargetList(params IEnumerable<IscsiTarget> targets) => _targets = targets.ToArray();

    public IReadOnlyList<IscsiTarget> ListTargets() => _targets;

    public bool TryGetTarget(string name, [MaybeNullWhen(false)] out IscsiTarget target)
    {
        foreach (IscsiTarget candidate in _targets)
        {
            if (string.Equals(candidate.Name, name, StringComparison.OrdinalIgnoreCase))
            {
                target = candidate;
                return true;
            }
        }
        target = null;
        return false;
    }
}
