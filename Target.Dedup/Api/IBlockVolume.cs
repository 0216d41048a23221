// The one narrow interface the protocol front ends (NBD, iSCSI) use to reach a volume.
// Invariants: offsets and lengths are bytes; callers have range-checked them, and
// implementations check again (the backend repeats the front end's range check on purpose).
// Errors cross this boundary only as StorageException subclasses.
namespace Target.Dedup;

public interface IBlockVolume
{
    string Name { get; }

    /// <summary>Logical size in bytes (a multiple of 4096).</summary>
    long SizeBytes { get; }

    /// <summary>Logical block size shown to SCSI hosts: 512 or 4096.</summary>
    int LogicalBlockSize { get; }

    /// <summary>Preferred I/O size (the chunk size, 4096).</summary>
    int PreferredBlockSize { get; }

    Guid Uuid { get; }

    VolumeCapabilities Capabilities { get; }

    ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken ct);

    ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, WriteFlags flags, CancellationToken ct);

    /// <summary>Makes every write completed before this call durable.</summary>
    ValueTask FlushAsync(CancellationToken ct);

    ValueTask TrimAsync(long offset, long length, CancellationToken ct);

    ValueTask WriteZeroesAsync(long offset, long length, ZeroFlags flags, CancellationToken ct);

    /// <summary>Data / zero / hole extents covering [offset, offset+length), in order, merged.</summary>
    ValueTask<ExtentList> GetAllocationAsync(long offset, long length, CancellationToken ct);

    /// <summary>Atomically: if the range equals <paramref name="expected"/>, write <paramref name="source"/>. Returns false on mismatch.</summary>
    ValueTask<bool> CompareAndWriteAsync(long offset, ReadOnlyMemory<byte> expected, ReadOnlyMemory<byte> source, CancellationToken ct);

    /// <summary>Copies by reference (shares chunks) into <paramref name="destination"/>, which must live in the same pool.</summary>
    ValueTask CopyAsync(long sourceOffset, IBlockVolume destination, long destinationOffset, long length, CancellationToken ct);
}

[Flags]
public enum VolumeCapabilities
{
    None = 0,
    ReadOnly = 1,
    /// <summary>Writes may be acknowledged before they are durable; FLUSH/FUA make them durable.</summary>
    VolatileWriteCache = 2,
    Trim = 4,
    WriteZeroes = 8,
    FastZero = 16,
    BlockStatus = 32,
    CopyByReference = 64,
}

[Flags]
public enum WriteFlags
{
    None = 0,
    /// <summary>Force unit access: durable before acknowledgement.</summary>
    Fua = 1,
}

[Flags]
public enum ZeroFlags
{
    None = 0,
    Fua = 1,
    /// <summary>The host asked for allocated zeroes (NBD_CMD_FLAG_NO_HOLE); the engine still stores no data for them.</summary>
    NoHole = 2,
    /// <summary>Fail with FastZeroUnsupported rather than doing slow work (NBD_CMD_FLAG_FAST_ZERO).</summary>
    Fast = 4,
}

public enum WriteMode
{
    /// <summary>Write-through: acknowledge after durable.</summary>
    WriteThrough,
    /// <summary>Write-back, mirrored to the partner before acknowledgement.</summary>
    WriteBack,
    /// <summary>Write-back to local memory only; FLUSH and FUA honoured.</summary>
    OneWayWriteBack,
}

public static class WriteModes
{
    public static string ToText(WriteMode mode) => mode switch
    {
        WriteMode.WriteThrough => "wt",
        WriteMode.WriteBack => "wb",
        WriteMode.OneWayWriteBack => "1way-wb",
        _ => throw new ArgumentOutOfRangeException(nameof(mode)),
    };

    public static bool TryParse(string text, out WriteMode mode)
    {
        switch (text)
        {
            case "wt": mode = WriteMode.WriteThrough; return true;
            case "wb": mode = WriteMode.WriteBack; return true;
            case "1way-wb": mode = WriteMode.OneWayWriteBack; return true;
            default: mode = default; return false;
        }
    }
}
