// The engine's view of a back-end device: a fixed-size range of bytes addressed by offset,
// read and written only in whole 4096-byte sectors from 4096-aligned native buffers.
// Invariant: Flush returns only after every write completed before it is durable.
namespace Target.Dedup.Device;

public interface IBlockDevice : IDisposable
{
    /// <summary>Bytes addressable on the device (a multiple of SectorBytes).</summary>
    long SizeBytes { get; }

    /// <summary>Path or description, for messages.</summary>
    string Name { get; }

    /// <summary>Reads sectors into an aligned buffer; offset and length are multiples of 4096.</summary>
    void Read(long offsetBytes, Span<byte> destination);

    /// <summary>Writes sectors from an aligned buffer; offset and length are multiples of 4096.</summary>
    void Write(long offsetBytes, ReadOnlySpan<byte> source);

    /// <summary>
    /// Writes <paramref name="head"/> (an aligned buffer, a multiple of 4096 bytes) followed by the
    /// 4096 bytes at each of <paramref name="pages"/> (4096-aligned native memory), as one
    /// contiguous range starting at <paramref name="offsetBytes"/>.
    /// </summary>
    void WriteGathered(long offsetBytes, ReadOnlySpan<byte> head, ReadOnlySpan<nint> pages);

    /// <summary>fdatasync.</summary>
    void Flush();
}

public static class DeviceConstants
{
    public const int SectorBytes = 4096;
}
