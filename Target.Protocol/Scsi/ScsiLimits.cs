// Limits of the SCSI block device server, reported in the Block Limits VPD page (B0h) and
// enforced by the command handlers. Relations between them are asserted in ScsiLimitsTests.
namespace Target.Protocol.Scsi;

public static class ScsiLimits
{
    /// <summary>
    /// Largest READ/WRITE/VERIFY transfer (MAXIMUM TRANSFER LENGTH, in bytes). 32 MiB: 65536 blocks
    /// of 512 bytes in one command, which libiscsi's WRITE SAME tests send regardless of the limit.
    /// </summary>
    public const int MaxTransferBytes = 32 * 1024 * 1024;

    /// <summary>OPTIMAL TRANSFER LENGTH reported to hosts (bytes).</summary>
    public const int OptimalTransferBytes = 1024 * 1024;

    /// <summary>Most blocks one WRITE SAME may cover (MAXIMUM WRITE SAME LENGTH, bytes). Zeroing is metadata only.</summary>
    public const long MaxWriteSameBytes = 1L << 30;

    /// <summary>A non-zero WRITE SAME pattern is written in pieces of at most this many bytes.</summary>
    public const int WriteSamePieceBytes = 1024 * 1024;

    /// <summary>MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT.</summary>
    public const int MaxUnmapDescriptors = 256;

    /// <summary>
    /// MAXIMUM UNMAP LBA COUNT in bytes (0xFFFFFFFF blocks would mean "no limit"; we keep one): 512 MiB,
    /// at most 2^20 blocks, which conformance suites treat as the sane upper bound.
    /// </summary>
    public const long MaxUnmapBytes = 1L << 29;

    /// <summary>MAXIMUM COMPARE AND WRITE LENGTH in blocks (one byte in the VPD page).</summary>
    public const int MaxCompareAndWriteBlocks = 255;

    /// <summary>Largest parameter list accepted by commands that take one (UNMAP, MODE SELECT, PR OUT, EXTENDED COPY).</summary>
    public const int MaxParameterListBytes = 64 * 1024;

    /// <summary>GET LBA STATUS looks at most this far ahead of its starting LBA per command.</summary>
    public const long LbaStatusWindowBytes = 1L << 32;

    /// <summary>Descriptors in one GET LBA STATUS reply (the allocation length limits it further).</summary>
    public const int MaxLbaStatusDescriptors = 1024;

    /// <summary>The engine's chunk: physical block size and unmap granularity.</summary>
    public const int PhysicalBlockBytes = 4096;
}
