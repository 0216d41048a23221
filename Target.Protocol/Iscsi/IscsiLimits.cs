// Target's iSCSI limits and the values it negotiates. Relations between them are asserted in
// IscsiLimitsTests (e.g. a whole non-data PDU always fits the receive buffer).
namespace Target.Protocol.Iscsi;

public static class IscsiLimits
{
    /// <summary>Basic header segment.</summary>
    public const int BhsBytes = 48;

    /// <summary>A CRC32C header or data digest.</summary>
    public const int DigestBytes = 4;

    /// <summary>TotalAHSLength is one byte of 4-byte words.</summary>
    public const int AhsBytesMax = 255 * 4;

    /// <summary>Largest header (BHS + AHS + digest).</summary>
    public const int HeaderBytesMax = BhsBytes + AhsBytesMax + DigestBytes;

    /// <summary>MaxRecvDataSegmentLength we declare: the largest data segment an initiator may send us.</summary>
    public const int TargetMaxRecvDataSegmentBytes = 256 * 1024;

    /// <summary>RFC 7143 bounds of MaxRecvDataSegmentLength (and our send-side clamp of the initiator's value).</summary>
    public const int MaxRecvDataSegmentBytesMin = 512;
    public const int MaxRecvDataSegmentBytesMax = 16777215;

    /// <summary>Our MaxBurstLength offer (the result is the minimum of both sides).</summary>
    public const int MaxBurstBytes = 4 * 1024 * 1024;

    /// <summary>Our FirstBurstLength offer (the result is the minimum of both sides, and at most MaxBurstLength).</summary>
    public const int FirstBurstBytes = 256 * 1024;

    /// <summary>Our MaxOutstandingR2T offer.</summary>
    public const int MaxOutstandingR2T = 16;

    /// <summary>Default values of RFC 7143 section 13 when a key is not negotiated.</summary>
    public const int DefaultMaxRecvDataSegmentBytes = 8192;
    public const int DefaultMaxBurstBytes = 262144;
    public const int DefaultFirstBurstBytes = 65536;
    public const int DefaultTime2Wait = 2;
    public const int DefaultTime2Retain = 20;

    /// <summary>Commands a session may have in flight (the CmdSN window: MaxCmdSN - ExpCmdSN + 1).</summary>
    public const int QueueDepth = 128;

    /// <summary>
    /// Largest SCSI data transfer per command (Expected Data Transfer Length). Larger commands are
    /// answered with CHECK CONDITION without soliciting their data.
    /// </summary>
    public const int MaxTransferBytes = 32 * 1024 * 1024;

    /// <summary>Receive buffer per connection: any PDU whose data is not received in place fits in it.</summary>
    public const int ReceiveBufferBytes = 2 * TargetMaxRecvDataSegmentBytes + HeaderBytesMax + 2 * DigestBytes;

    /// <summary>A data segment at least this long is received straight into its task's buffer.</summary>
    public const int DirectReceiveMinBytes = 32 * 1024;

    /// <summary>Data segments up to this size are copied into the coalescing send buffer; larger ones are sent from their own buffer.</summary>
    public const int CoalesceDataBytesMax = 64 * 1024;

    /// <summary>Capacity of each connection's coalescing send buffer.</summary>
    public const int SendBufferBytes = 256 * 1024;

    /// <summary>Login: longest text accepted across continued (C bit) PDUs, and the most PDUs one login may take.</summary>
    public const int LoginTextBytesMax = 64 * 1024;
    public const int LoginPdusMax = 64;

    /// <summary>Text request: longest text accepted across continued PDUs.</summary>
    public const int TextBytesMax = 64 * 1024;

    /// <summary>Text keys are at most 63 bytes; values at most 255 (or 8192 for a few) bytes (RFC 7143 6.1).</summary>
    public const int KeyBytesMax = 63;
    public const int ValueBytesMax = 8192;

    /// <summary>Our target portal group tag (one portal group).</summary>
    public const ushort TargetPortalGroupTag = 1;
}
