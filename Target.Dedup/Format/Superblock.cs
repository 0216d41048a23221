// The pool superblock: two copies (sectors 0 and 1 of the first device), each CRC32C-protected.
// It names the format, the pool, the chunk size, the fingerprint algorithm and the log geometry.
// Invariant: it is written only at creation; a pool opens when at least one copy is valid.
using System.Buffers.Binary;
using Target.Dedup.Device;
using Target.Dedup.Hashing;

namespace Target.Dedup.Format;

public sealed record Superblock
{
    public const ulong Magic = 0x314C4F4F50544754; // "TGTPOOL1"
    public const uint FormatVersion = 1;
    public const int ChunkBytes = 4096;
    /// <summary>Segments start here on the device; the space before holds the superblocks.</summary>
    public const long DataStartBytes = 1L << 20;

    public required Guid PoolUuid { get; init; }
    public required FingerprintAlgorithm Fingerprint { get; init; }
    public required int SegmentBytes { get; init; }
    public required uint SegmentCount { get; init; }
    public required long CreatedUnixMs { get; init; }

    public int BlocksPerSegment => SegmentBytes / ChunkBytes;

    /// <summary>Bytes of the log: every segment, so the most chunk data the pool can hold.</summary>
    public long LogBytes => (long)SegmentCount * SegmentBytes;

    public long SegmentOffset(uint segment) => DataStartBytes + (long)segment * SegmentBytes;

    /// <summary>Log block number (4 KiB units from DataStartBytes) -> device byte offset.</summary>
    public static long BlockOffset(uint block) => DataStartBytes + (long)block * ChunkBytes;

    public void Encode(Span<byte> sector)
    {
        sector.Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(sector, Magic);
        BinaryPrimitives.WriteUInt32LittleEndian(sector[8..], FormatVersion);
        PoolUuid.TryWriteBytes(sector[16..32]);
        BinaryPrimitives.WriteInt32LittleEndian(sector[32..], ChunkBytes);
        BinaryPrimitives.WriteInt32LittleEndian(sector[36..], (int)Fingerprint);
        BinaryPrimitives.WriteInt32LittleEndian(sector[40..], SegmentBytes);
        BinaryPrimitives.WriteUInt32LittleEndian(sector[44..], SegmentCount);
        BinaryPrimitives.WriteInt64LittleEndian(sector[48..], DataStartBytes);
        BinaryPrimitives.WriteInt64LittleEndian(sector[56..], CreatedUnixMs);
        BinaryPrimitives.WriteUInt32LittleEndian(sector[12..], Crc32C.Compute(sector[16..DeviceConstants.SectorBytes]));
    }

    /// <summary>Decodes one copy; null with a reason when it is not a valid superblock.</summary>
    public static Superblock? TryDecode(ReadOnlySpan<byte> sector, out string? problem)
    {
        problem = null;
        if (BinaryPrimitives.ReadUInt64LittleEndian(sector) != Magic) { problem = "no Target pool signature"; return null; }
        uint version = BinaryPrimitives.ReadUInt32LittleEndian(sector[8..]);
        if (version != FormatVersion) { problem = $"unsupported format version {version}"; return null; }
        if (BinaryPrimitives.ReadUInt32LittleEndian(sector[12..]) != Crc32C.Compute(sector[16..DeviceConstants.SectorBytes])) { problem = "superblock checksum mismatch"; return null; }
        int chunk = BinaryPrimitives.ReadInt32LittleEndian(sector[32..]);
        if (chunk != ChunkBytes) { problem = $"unsupported chunk size {chunk}"; return null; }
        if (BinaryPrimitives.ReadInt64LittleEndian(sector[48..]) != DataStartBytes) { problem = "unexpected data start"; return null; }
        return new Superblock
        {
            PoolUuid = new Guid(sector[16..32]),
            Fingerprint = (FingerprintAlgorithm)BinaryPrimitives.ReadInt32LittleEndian(sector[36..]),
            SegmentBytes = BinaryPrimitives.ReadInt32LittleEndian(sector[40..]),
            SegmentCount = BinaryPrimitives.ReadUInt32LittleEndian(sector[44..]),
            CreatedUnixMs = BinaryPrimitives.ReadInt64LittleEndian(sector[56..]),
        };
    }
}
