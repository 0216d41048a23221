// Transmission-phase request header: a pure parser and encoder. Never touches a socket.
using System.Buffers.Binary;

namespace Target.Protocol.Nbd;

public enum NbdParseStatus
{
    /// <summary>Not enough bytes yet; nothing consumed.</summary>
    Incomplete,
    /// <summary>One message parsed; <c>consumed</c> bytes belong to it.</summary>
    Complete,
    /// <summary>The bytes do not start with the expected magic: a framing error, the stream cannot be resynchronised.</summary>
    BadMagic,
}

/// <summary>The 28-byte request header (the WRITE payload follows it and is not part of it).</summary>
public readonly record struct NbdRequestHeader(NbdCommandFlags Flags, NbdCommand Command, ulong Handle, ulong Offset, uint Length);

public static class NbdRequest
{
    public static NbdParseStatus TryParse(ReadOnlySpan<byte> input, out NbdRequestHeader header, out int consumed)
    {
        if (input.Length < NbdLimits.RequestHeaderBytes)
        {
            header = default;
            consumed = 0;
            return NbdParseStatus.Incomplete;
        }
        if (BinaryPrimitives.ReadUInt32BigEndian(input) != NbdMagic.Request)
        {
            header = default;
            consumed = 0;
            return NbdParseStatus.BadMagic;
        }
        header = new NbdRequestHeader(
            (NbdCommandFlags)BinaryPrimitives.ReadUInt16BigEndian(input.Slice(4)),
            (NbdCommand)BinaryPrimitives.ReadUInt16BigEndian(input.Slice(6)),
            BinaryPrimitives.ReadUInt64BigEndian(input.Slice(8)),
            BinaryPrimitives.ReadUInt64BigEndian(input.Slice(16)),
            BinaryPrimitives.ReadUInt32BigEndian(input.Slice(24)));
        consumed = NbdLimits.RequestHeaderBytes;
        return NbdParseStatus.Complete;
    }

    /// <summary>Encodes a request header (clients, tests and benchmarks use it).</summary>
    public static int Write(Span<byte> destination, in NbdRequestHeader header)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination, NbdMagic.Request);
        BinaryPrimitives.WriteUInt16BigEndian(destination.Slice(4), (ushort)header.Flags);
        BinaryPrimitives.WriteUInt16BigEndian(destination.Slice(6), (ushort)header.Command);
        BinaryPrimitives.WriteUInt64BigEndian(destination.Slice(8), header.Handle);
        BinaryPrimitives.WriteUInt64BigEndian(destination.Slice(16), header.Offset);
        BinaryPrimitives.WriteUInt32BigEndian(destination.Slice(24), header.Length);
        return NbdLimits.RequestHeaderBytes;
    }
}
