// Reply encoders for both phases: pure functions writing big-endian wire bytes into a span.
// Each returns the number of bytes written. Callers size the span; the sizes are constants here.
using System.Buffers.Binary;
using System.Text.Unicode;
using Target.Dedup;

namespace Target.Protocol.Nbd;

public static class NbdReplies
{
    /// <summary>Bytes of an OFFSET_DATA chunk before its data: chunk header plus the 64-bit offset.</summary>
    public const int OffsetDataPrefixBytes = NbdLimits.StructuredReplyHeaderBytes + 8;

    /// <summary>Bytes of a whole OFFSET_HOLE chunk.</summary>
    public const int OffsetHoleBytes = NbdLimits.StructuredReplyHeaderBytes + 12;

    /// <summary>Bytes of a BLOCK_STATUS chunk before its descriptors: chunk header plus the context id.</summary>
    public const int BlockStatusPrefixBytes = NbdLimits.StructuredReplyHeaderBytes + 4;

    public const int BlockStatusDescriptorBytes = 8;

    /// <summary>Bytes of an ERROR chunk before its message.</summary>
    public const int ErrorPrefixBytes = NbdLimits.StructuredReplyHeaderBytes + 6;

    public static int WriteSimpleReply(Span<byte> destination, uint error, ulong handle)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination, NbdMagic.SimpleReply);
        BinaryPrimitives.WriteUInt32BigEndian(destination.Slice(4), error);
        BinaryPrimitives.WriteUInt64BigEndian(destination.Slice(8), handle);
        return NbdLimits.SimpleReplyHeaderBytes;
    }

    public static int WriteChunkHeader(Span<byte> destination, ushort flags, ushort type, ulong handle, uint payloadBytes)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination, NbdMagic.StructuredReply);
        BinaryPrimitives.WriteUInt16BigEndian(destination.Slice(4), flags);
        BinaryPrimitives.WriteUInt16BigEndian(destination.Slice(6), type);
        BinaryPrimitives.WriteUInt64BigEndian(destination.Slice(8), handle);
        BinaryPrimitives.WriteUInt32BigEndian(destination.Slice(16), payloadBytes);
        return NbdLimits.StructuredReplyHeaderBytes;
    }

    /// <summary>The NONE chunk that ends a structured reply (always with DONE).</summary>
    public static int WriteNoneChunk(Span<byte> destination, ulong handle)
        => WriteChunkHeader(destination, NbdReplyType.FlagDone, NbdReplyType.None, handle, 0);

    /// <summary>Header and offset of an OFFSET_DATA chunk; the caller puts <paramref name="dataBytes"/> bytes right after.</summary>
    public static int WriteOffsetDataPrefix(Span<byte> destination, ushort flags, ulong handle, ulong offset, int dataBytes)
    {
        WriteChunkHeader(destination, flags, NbdReplyType.OffsetData, handle, (uint)dataBytes + 8);
        BinaryPrimitives.WriteUInt64BigEndian(destination.Slice(NbdLimits.StructuredReplyHeaderBytes), offset);
        return OffsetDataPrefixBytes;
    }

    public static int WriteOffsetHole(Span<byte> destination, ushort flags, ulong handle, ulong offset, uint holeBytes)
    {
        WriteChunkHeader(destination, flags, NbdReplyType.OffsetHole, handle, 12);
        BinaryPrimitives.WriteUInt64BigEndian(destination.Slice(NbdLimits.StructuredReplyHeaderBytes), offset);
        BinaryPrimitives.WriteUInt32BigEndian(destination.Slice(NbdLimits.StructuredReplyHeaderBytes + 8), holeBytes);
        return OffsetHoleBytes;
    }

    /// <summary>An ERROR chunk with DONE set. The message is cut (on a character boundary) to fit <see cref="NbdLimits.ErrorMessageBytesMax"/>.</summary>
    public static int WriteErrorChunk(Span<byte> destination, ulong handle, uint error, ReadOnlySpan<char> message)
    {
        Span<byte> messageSpan = destination.Slice(ErrorPrefixBytes, Math.Min(NbdLimits.ErrorMessageBytesMax, destination.Length - ErrorPrefixBytes));
        Utf8.FromUtf16(message, messageSpan, out _, out int messageBytes, replaceInvalidSequences: true, isFinalBlock: true);
        WriteChunkHeader(destination, NbdReplyType.FlagDone, NbdReplyType.Error, handle, (uint)(6 + messageBytes));
        BinaryPrimitives.WriteUInt32BigEndian(destination.Slice(NbdLimits.StructuredReplyHeaderBytes), error);
        BinaryPrimitives.WriteUInt16BigEndian(destination.Slice(NbdLimits.StructuredReplyHeaderBytes + 4), (ushort)messageBytes);
        return ErrorPrefixBytes + messageBytes;
    }

    /// <summary>Header and context id of a BLOCK_STATUS chunk; <paramref name="descriptorCount"/> descriptors follow.</summary>
    public static int WriteBlockStatusPrefix(Span<byte> destination, ushort flags, ulong handle, uint contextId, int descriptorCount)
    {
        WriteChunkHeader(destination, flags, NbdReplyType.BlockStatus, handle, (uint)(4 + descriptorCount * BlockStatusDescriptorBytes));
        BinaryPrimitives.WriteUInt32BigEndian(destination.Slice(NbdLimits.StructuredReplyHeaderBytes), contextId);
        return BlockStatusPrefixBytes;
    }

    public static int WriteBlockStatusDescriptor(Span<byte> destination, uint lengthBytes, uint status)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination, lengthBytes);
        BinaryPrimitives.WriteUInt32BigEndian(destination.Slice(4), status);
        return BlockStatusDescriptorBytes;
    }

    /// <summary>base:allocation status flags of an engine extent kind.</summary>
    public static uint AllocationStatus(ExtentKind kind) => kind switch
    {
        ExtentKind.Hole => NbdAllocationState.Hole | NbdAllocationState.Zero,
        ExtentKind.Zero => NbdAllocationState.Zero,
        _ => 0,
    };

    // ---- handshake phase ----

    public static int WriteOptionReplyHeader(Span<byte> destination, uint option, uint replyType, uint payloadBytes)
    {
        BinaryPrimitives.WriteUInt64BigEndian(destination, NbdMagic.OptionReply);
        BinaryPrimitives.WriteUInt32BigEndian(destination.Slice(8), option);
        BinaryPrimitives.WriteUInt32BigEndian(destination.Slice(12), replyType);
        BinaryPrimitives.WriteUInt32BigEndian(destination.Slice(16), payloadBytes);
        return NbdLimits.OptionReplyHeaderBytes;
    }

    /// <summary>The server's first 18 bytes: NBDMAGIC, IHAVEOPT, handshake flags.</summary>
    public static int WriteGreeting(Span<byte> destination, ushort handshakeFlags)
    {
        BinaryPrimitives.WriteUInt64BigEndian(destination, NbdMagic.InitPassword);
        BinaryPrimitives.WriteUInt64BigEndian(destination.Slice(8), NbdMagic.IHaveOpt);
        BinaryPrimitives.WriteUInt16BigEndian(destination.Slice(16), handshakeFlags);
        return 18;
    }
}
