// Encoders of the target's PDU headers (RFC 7143 11.x). Each writes a whole 48-byte BHS except
// StatSN / ExpCmdSN / MaxCmdSN (bytes 24-35), which the sender fills in at send time with
// SetSequenceNumbers so that they are always current and StatSN follows send order.
using System.Buffers.Binary;

namespace Target.Protocol.Iscsi;

public static class IscsiPduWriter
{
    public static void SetSequenceNumbers(Span<byte> bhs, uint statSn, uint expCmdSn, uint maxCmdSn)
    {
        BinaryPrimitives.WriteUInt32BigEndian(bhs.Slice(24), statSn);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.Slice(28), expCmdSn);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.Slice(32), maxCmdSn);
    }

    private static Span<byte> Start(Span<byte> bhs, IscsiOpcode opcode, byte flags, int dataSegmentBytes)
    {
        Span<byte> h = bhs.Slice(0, IscsiLimits.BhsBytes);
        h.Clear();
        h[0] = (byte)opcode;
        h[1] = flags;
        IscsiPdu.SetLengths(h, 0, dataSegmentBytes);
        return h;
    }

    /// <param name="residualFlags">Overflow / Underflow bits (IscsiFlags.Overflow, IscsiFlags.Underflow).</param>
    public static void ScsiResponse(Span<byte> bhs, uint itt, byte residualFlags, byte response, byte status, uint residualCount, uint expDataSn, int dataSegmentBytes)
    {
        Span<byte> h = Start(bhs, IscsiOpcode.ScsiResponse, (byte)(IscsiFlags.Final | residualFlags), dataSegmentBytes);
        h[2] = response;
        h[3] = status;
        BinaryPrimitives.WriteUInt32BigEndian(h.Slice(16), itt);
        BinaryPrimitives.WriteUInt32BigEndian(h.Slice(36), expDataSn);
        BinaryPrimitives.WriteUInt32BigEndian(h.Slice(44), residualCount);
    }

    /// <param name="flags">F, S, O, U bits.</param>
    public static void DataIn(Span<byte> bhs, byte flags, byte status, uint itt, uint dataSn, uint bufferOffset, uint residualCount, int dataSegmentBytes)
    {
        Span<byte> h = Start(bhs, IscsiOpcode.DataIn, flags, dataSegmentBytes);
        if ((flags & IscsiFlags.Status) != 0) h[3] = status;
        BinaryPrimitives.WriteUInt32BigEndian(h.Slice(16), itt);
        BinaryPrimitives.WriteUInt32BigEndian(h.Slice(20), IscsiReservedTag.None);
        BinaryPrimitives.WriteUInt32BigEndian(h.Slice(36), dataSn);
        BinaryPrimitives.WriteUInt32BigEndian(h.Slice(40), bufferOffset);
        if ((flags & IscsiFlags.Status) != 0) BinaryPrimitives.WriteUInt32BigEndian(h.Slice(44), residualCount);
    }

    public static void ReadyToTransfer(Span<byte> bhs, ulong lunField, uint itt, uint ttt, uint r2tSn, uint bufferOffset, uint desiredLength)
    {
        Span<byte> h = Start(bhs, IscsiOpcode.ReadyToTransfer, IscsiFlags.Final, 0);
        BinaryPrimitives.WriteUInt64BigEndian(h.Slice(8), lunField);
        BinaryPrimitives.WriteUInt32BigEndian(h.Slice(16), itt);
        BinaryPrimitives.WriteUInt32BigEndian(h.Slice(20), ttt);
        BinaryPrimitives.WriteUInt32BigEndian(h.Slice(36), r2tSn);
        BinaryPrimitives.WriteUInt32BigEndian(h.Slice(40), bufferOffset);
        BinaryPrimitives.WriteUInt32BigEndian(h.Slice(44), desiredLength);
    }

    public static void NopIn(Span<byte> bhs, ulong lunField, uint itt, uint ttt, int dataSegmentBytes)
    {
        Span<byte> h = Start(bhs, IscsiOpcode.NopIn, IscsiFlags.Final, dataSegmentBytes);
        BinaryPrimitives.WriteUInt64BigEndian(h.Slice(8), lunField);
        BinaryPrimitives.WriteUInt32BigEndian(h.Slice(16), itt);
        BinaryPrimitives.WriteUInt32BigEndian(h.Slice(20), ttt);
    }

    public static void TextResponse(Span<byte> bhs, bool final, bool more, ulong lunField, uint itt, uint ttt, int dataSegmentBytes)
    {
        byte flags = (byte)((final ? IscsiFlags.Final : 0) | (more ? IscsiFlags.Continue : 0));
        Span<byte> h = Start(bhs, IscsiOpcode.TextResponse, flags, dataSegmentBytes);
        BinaryPrimitives.WriteUInt64BigEndian(h.Slice(8), lunField);
        BinaryPrimitives.WriteUInt32BigEndian(h.Slice(16), itt);
        BinaryPrimitives.WriteUInt32BigEndian(h.Slice(20), ttt);
    }

    /// <param name="stageFlags">T, C, CSG and NSG bits of byte 1.</param>
    public static void LoginResponse(Span<byte> bhs, byte stageFlags, ReadOnlySpan<byte> isid, ushort tsih, uint itt, ushort status, int dataSegmentBytes)
    {
        Span<byte> h = Start(bhs, IscsiOpcode.LoginResponse, stageFlags, dataSegmentBytes);
        h[2] = 0x00;    // Version-max
        h[3] = 0x00;    // Version-active
        isid.Slice(0, 6).CopyTo(h.Slice(8));
        BinaryPrimitives.WriteUInt16BigEndian(h.Slice(14), tsih);
        BinaryPrimitives.WriteUInt32BigEndian(h.Slice(16), itt);
        h[36] = (byte)(status >> 8);
        h[37] = (byte)status;
    }

    public static void LogoutResponse(Span<byte> bhs, byte response, uint itt, ushort time2Wait, ushort time2Retain)
    {
        Span<byte> h = Start(bhs, IscsiOpcode.LogoutResponse, IscsiFlags.Final, 0);
        h[2] = response;
        BinaryPrimitives.WriteUInt32BigEndian(h.Slice(16), itt);
        BinaryPrimitives.WriteUInt16BigEndian(h.Slice(40), time2Wait);
        BinaryPrimitives.WriteUInt16BigEndian(h.Slice(42), time2Retain);
    }

    /// <param name="additionalResponseInformation">QUERY ASYNCHRONOUS EVENT only (RFC 7144, SAM-5): UADE DEPTH and SENSE KEY, ASC, ASCQ in bytes 8-10; 0 elsewhere.</param>
    public static void TaskManagementResponse(Span<byte> bhs, byte response, uint itt, uint additionalResponseInformation = 0)
    {
        Span<byte> h = Start(bhs, IscsiOpcode.TaskManagementResponse, IscsiFlags.Final, 0);
        h[2] = response;
        h[8] = (byte)(additionalResponseInformation >> 16);
        h[9] = (byte)(additionalResponseInformation >> 8);
        h[10] = (byte)additionalResponseInformation;
        BinaryPrimitives.WriteUInt32BigEndian(h.Slice(16), itt);
    }

    /// <summary>A Reject; its data segment is the rejected PDU's header (48 bytes).</summary>
    public static void Reject(Span<byte> bhs, byte reason, uint dataSnOrR2tSn)
    {
        Span<byte> h = Start(bhs, IscsiOpcode.Reject, IscsiFlags.Final, IscsiLimits.BhsBytes);
        h[2] = reason;
        BinaryPrimitives.WriteUInt32BigEndian(h.Slice(16), IscsiReservedTag.None);
        BinaryPrimitives.WriteUInt32BigEndian(h.Slice(36), dataSnOrR2tSn);
    }

    public static void AsyncMessage(Span<byte> bhs, ulong lunField, byte asyncEvent, byte asyncVcode, ushort parameter1, ushort parameter2, ushort parameter3, int dataSegmentBytes)
    {
        Span<byte> h = Start(bhs, IscsiOpcode.AsyncMessage, IscsiFlags.Final, dataSegmentBytes);
        BinaryPrimitives.WriteUInt64BigEndian(h.Slice(8), lunField);
        BinaryPrimitives.WriteUInt32BigEndian(h.Slice(16), IscsiReservedTag.None);
        h[36] = asyncEvent;
        h[37] = asyncVcode;
        BinaryPrimitives.WriteUInt16BigEndian(h.Slice(38), parameter1);
        BinaryPrimitives.WriteUInt16BigEndian(h.Slice(40), parameter2);
        BinaryPrimitives.WriteUInt16BigEndian(h.Slice(42), parameter3);
    }
}
