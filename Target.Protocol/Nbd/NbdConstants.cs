// Wire constants of the NBD protocol (NetworkBlockDevice/nbd doc/proto.md). All integers on
// the wire are big-endian. Nothing here carries behaviour; NbdLimits.cs holds Target's own limits.
namespace Target.Protocol.Nbd;

/// <summary>Magic numbers of the handshake and transmission phases.</summary>
public static class NbdMagic
{
    /// <summary>ASCII "NBDMAGIC", first 8 bytes the server sends.</summary>
    public const ulong InitPassword = 0x4e42444d41474943;

    /// <summary>ASCII "IHAVEOPT": sent by the server after NBDMAGIC, and by the client before every option.</summary>
    public const ulong IHaveOpt = 0x49484156454F5054;

    /// <summary>Magic of every fixed-newstyle option reply.</summary>
    public const ulong OptionReply = 0x3e889045565a9;

    public const uint Request = 0x25609513;
    public const uint SimpleReply = 0x67446698;
    public const uint StructuredReply = 0x668e33ef;
}

/// <summary>Handshake flags (16 bits, server) and client flags (32 bits).</summary>
public static class NbdHandshakeFlags
{
    public const ushort FixedNewstyle = 1 << 0;
    public const ushort NoZeroes = 1 << 1;

    public const uint ClientFixedNewstyle = 1 << 0;
    public const uint ClientNoZeroes = 1 << 1;
}

/// <summary>Transmission flags (16 bits) sent with the export size.</summary>
[Flags]
public enum NbdTransmissionFlags : ushort
{
    None = 0,
    HasFlags = 1 << 0,
    ReadOnly = 1 << 1,
    SendFlush = 1 << 2,
    SendFua = 1 << 3,
    Rotational = 1 << 4,
    SendTrim = 1 << 5,
    SendWriteZeroes = 1 << 6,
    SendDf = 1 << 7,
    CanMultiConn = 1 << 8,
    SendResize = 1 << 9,
    SendCache = 1 << 10,
    SendFastZero = 1 << 11,
}

/// <summary>Option codes (NBD_OPT_*).</summary>
public static class NbdOption
{
    public const uint ExportName = 1;
    public const uint Abort = 2;
    public const uint List = 3;
    public const uint PeekExport = 4;
    public const uint StartTls = 5;
    public const uint Info = 6;
    public const uint Go = 7;
    public const uint StructuredReply = 8;
    public const uint ListMetaContext = 9;
    public const uint SetMetaContext = 10;
    public const uint ExtendedHeaders = 11;
}

/// <summary>Option reply types (NBD_REP_*); errors have bit 31 set.</summary>
public static class NbdOptionReply
{
    public const uint Ack = 1;
    public const uint Server = 2;
    public const uint Info = 3;
    public const uint MetaContext = 4;

    public const uint ErrorBit = 1u << 31;
    public const uint ErrUnsupported = ErrorBit + 1;
    public const uint ErrPolicy = ErrorBit + 2;
    public const uint ErrInvalid = ErrorBit + 3;
    public const uint ErrPlatform = ErrorBit + 4;
    public const uint ErrTlsRequired = ErrorBit + 5;
    public const uint ErrUnknown = ErrorBit + 6;
    public const uint ErrShutdown = ErrorBit + 7;
    public const uint ErrBlockSizeRequired = ErrorBit + 8;
    public const uint ErrTooBig = ErrorBit + 9;
}

/// <summary>Information types of NBD_REP_INFO (NBD_INFO_*).</summary>
public static class NbdInfo
{
    public const ushort Export = 0;
    public const ushort Name = 1;
    public const ushort Description = 2;
    public const ushort BlockSize = 3;
}

/// <summary>Request types (NBD_CMD_*).</summary>
public enum NbdCommand : ushort
{
    Read = 0,
    Write = 1,
    Disconnect = 2,
    Flush = 3,
    Trim = 4,
    Cache = 5,
    WriteZeroes = 6,
    BlockStatus = 7,
}

/// <summary>Command flags (NBD_CMD_FLAG_*).</summary>
[Flags]
public enum NbdCommandFlags : ushort
{
    None = 0,
    Fua = 1 << 0,
    NoHole = 1 << 1,
    DontFragment = 1 << 2,
    ReqOne = 1 << 3,
    FastZero = 1 << 4,
    PayloadLength = 1 << 5,
}

/// <summary>Structured reply chunk types (NBD_REPLY_TYPE_*) and flags.</summary>
public static class NbdReplyType
{
    public const ushort FlagDone = 1;

    public const ushort None = 0;
    public const ushort OffsetData = 1;
    public const ushort OffsetHole = 2;
    public const ushort BlockStatus = 5;
    public const ushort Error = (1 << 15) + 1;
    public const ushort ErrorOffset = (1 << 15) + 2;
}

/// <summary>Error values of the reply error field (NBD_E*).</summary>
public static class NbdError
{
    public const uint None = 0;
    public const uint Perm = 1;
    public const uint IO = 5;
    public const uint NoMemory = 12;
    public const uint Invalid = 22;
    public const uint NoSpace = 28;
    public const uint Overflow = 75;
    public const uint NotSupported = 95;
    public const uint Shutdown = 108;
}

/// <summary>Flags of the base:allocation metadata context.</summary>
public static class NbdAllocationState
{
    public const uint Hole = 1 << 0;
    public const uint Zero = 1 << 1;
}

/// <summary>Metadata context names.</summary>
public static class NbdMetaContext
{
    public const string BaseAllocation = "base:allocation";
    public const string BaseNamespace = "base:";

    /// <summary>The id Target hands out for base:allocation (any nonzero value would do).</summary>
    public const uint BaseAllocationId = 1;
}
