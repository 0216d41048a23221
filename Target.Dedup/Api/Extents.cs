namespace Target.Dedup;

public enum ExtentKind : byte
{
    /// <summary>Mapped, holds data.</summary>
    Data = 0,
    /// <summary>Reads as zeros, no storage behind it, but written (allocated in the host's view).</summary>
    Zero = 1,
    /// <summary>Unmapped (never written or trimmed): reads as zeros.</summary>
    Hole = 2,
}

public readonly record struct Extent(long Offset, long Length, ExtentKind Kind);

/// <summary>Extents in ascending offset order, adjacent extents of one kind merged.</summary>
public sealed class ExtentList
{
    private readonly List<Extent> _extents = new();

    public IReadOnlyList<Extent> Items => _extents;

    public int Count => _extents.Count;

    public Extent this[int index] => _extents[index];

    /// <summary>Appends an extent that starts where the previous one ended, merging when the kind is the same.</summary>
    public void Add(long offset, long length, ExtentKind kind)
    {
        if (length <= 0) return;
        if (_extents.Count > 0)
        {
            Extent last = _extents[^1];
            if (last.Offset + last.Length != offset)
                throw new InvalidOperationException($"extent at {offset} does not follow the previous one ending at {last.Offset + last.Length}");
            if (last.Kind == kind)
            {
                _extents[^1] = last with { Length = last.Length + length };
                return;
            }
        }
        _extents.Add(new Extent(offset, length, kind));
    }
}
