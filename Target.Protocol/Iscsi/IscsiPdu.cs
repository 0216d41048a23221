// iSCSI PDU framing (RFC 7143 11.2): a pure header parser and the field accessors of a parsed
// header. Never touches a socket. The data segment is not part of the parsed header: the caller
// receives it (possibly straight into a task buffer) and checks its digest with DataDigest.
using System.Buffers.Binary;
using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using Target.Dedup.Hashing;

namespace Target.Protocol.Iscsi;

public enum IscsiParseStatus
{
    /// <summary>Not enough bytes for the whole header yet; nothing consumed.</summary>
    Incomplete,
    /// <summary>A header parsed; <c>headerBytes</c> belong to it.</summary>
    Complete,
    /// <summary>The header digest does not match: the stream cannot be trusted (close the connection).</summary>
    HeaderDigestError,
}

[InlineArray(IscsiLimits.BhsBytes)]
public struct IscsiBhs
{
    private byte _element0;
}

/// <summary>A parsed PDU header: a copy of the 48-byte BHS plus the sizes of what follows it.</summary>
public struct IscsiPduHeader
{
    public IscsiBhs Bhs;

    /// <summary>Bytes of additional header segments (a multiple of 4).</summary>
    public int AhsBytes;

    /// <summary>BHS + AHS + header digest.</summary>
    public int HeaderBytes;

    /// <summary>DataSegmentLength (without padding or digest).</summary>
    public int DataSegmentBytes;

    [UnscopedRef]
    public readonly ReadOnlySpan<byte> Span => Bhs;

    public readonly IscsiOpcode Opcode => (IscsiOpcode)(Span[0] & 0x3F);

    public readonly bool Immediate => (Span[0] & IscsiFlags.Immediate) != 0;

    public readonly byte Flags => Span[1];

    public readonly bool Final => (Span[1] & IscsiFlags.Final) != 0;

    /// <summary>The LUN field (bytes 8-15) as raw big-endian bits.</summary>
    public readonly ulong LunField => BinaryPrimitives.ReadUInt64BigEndian(Span.Slice(8));

    public readonly uint InitiatorTaskTag => BinaryPrimitives.ReadUInt32BigEndian(Span.Slice(16));

    /// <summary>Bytes 20-23: Expected Data Transfer Length (SCSI Command) or Target Transfer Tag (Data-Out, NOP-Out, Text).</summary>
    public readonly uint Word20 => BinaryPrimitives.ReadUInt32BigEndian(Span.Slice(20));

    /// <summary>Bytes 24-27: CmdSN in most initiator PDUs.</summary>
    public readonly uint CmdSn => BinaryPrimitives.ReadUInt32BigEndian(Span.Slice(24));

    /// <summary>Bytes 28-31: ExpStatSN in most initiator PDUs.</summary>
    public readonly uint ExpStatSn => BinaryPrimitives.ReadUInt32BigEndian(Span.Slice(28));

    /// <summary>Bytes 32-35: RefCmdSN (task management).</summary>
    public readonly uint Word32 => BinaryPrimitives.ReadUInt32BigEndian(Span.Slice(32));

    /// <summary>Bytes 36-39: DataSN (Data-Out) or ExpDataSN (task management).</summary>
    public readonly uint Word36 => BinaryPrimitives.ReadUInt32BigEndian(Span.Slice(36));

    /// <summary>Bytes 40-43: Buffer Offset (Data-Out).</summary>
    public readonly uint Word40 => BinaryPrimitives.ReadUInt32BigEndian(Span.Slice(40));

    /// <summary>Bytes 44-47.</summary>
    public readonly uint Word44 => BinaryPrimitives.ReadUInt32BigEndian(Span.Slice(44));

    /// <summary>Data segment bytes on the wire after the header: data, padding to 4 bytes, and the data digest if any.</summary>
    public readonly int WireDataBytes(bool dataDigest) =>
        DataSegmentBytes == 0 ? 0 : IscsiPdu.Pad4(DataSegmentBytes) + (dataDigest ? IscsiLimits.DigestBytes : 0);
}

public static class IscsiPdu
{
    public static int Pad4(int bytes) => (bytes + 3) & ~3;

    /// <summary>Parses a PDU header (BHS, AHS, header digest when <paramref name="headerDigest"/>).</summary>
    public static IscsiParseStatus TryParseHeader(ReadOnlySpan<byte> input, bool headerDigest, out IscsiPduHeader header)
    {
        header = default;
        if (input.Length < IscsiLimits.BhsBytes) return IscsiParseStatus.Incomplete;
        int ahsBytes = input[4] * 4;
        int headerBytes = IscsiLimits.BhsBytes + ahsBytes + (headerDigest ? IscsiLimits.DigestBytes : 0);
        if (input.Length < headerBytes) return IscsiParseStatus.Incomplete;
        if (headerDigest)
        {
            uint expected = Crc32C.Compute(input.Slice(0, IscsiLimits.BhsBytes + ahsBytes));
            uint actual = BinaryPrimitives.ReadUInt32LittleEndian(input.Slice(IscsiLimits.BhsBytes + ahsBytes));
            if (expected != actual) return IscsiParseStatus.HeaderDigestError;
        }
        input.Slice(0, IscsiLimits.BhsBytes).CopyTo(header.Bhs);
        header.AhsBytes = ahsBytes;
        header.HeaderBytes = headerBytes;
        header.DataSegmentBytes = input[5] << 16 | input[6] << 8 | input[7];
        return IscsiParseStatus.Complete;
    }

    /// <summary>CRC32C over a data segment and its padding, as carried in the data digest.</summary>
    public static uint DataDigest(ReadOnlySpan<byte> data, ReadOnlySpan<byte> padding) => Crc32C.Append(Crc32C.Compute(data), padding);

    /// <summary>Writes the 24-bit DataSegmentLength and TotalAHSLength of a BHS.</summary>
    public static void SetLengths(Span<byte> bhs, int ahsBytes, int dataSegmentBytes)
    {
        bhs[4] = (byte)(ahsBytes / 4);
        bhs[5] = (byte)(dataSegmentBytes >> 16);
        bhs[6] = (byte)(dataSegmentBytes >> 8);
        bhs[7] = (byte)dataSegmentBytes;
    }

    /// <summary>Writes a CRC32C digest (little-endian on the wire, as the reflected CRC is defined).</summary>
    public static void WriteDigest(Span<byte> destination, uint crc) => BinaryPrimitives.WriteUInt32LittleEndian(destination, crc);

    public static uint ReadDigest(ReadOnlySpan<byte> source) => BinaryPrimitives.ReadUInt32LittleEndian(source);
}
