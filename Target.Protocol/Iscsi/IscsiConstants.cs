// iSCSI wire values (RFC 7143 section 11). Values only; no logic.
namespace Target.Protocol.Iscsi;

public enum IscsiOpcode : byte
{
    // Initiator to target.
    NopOut = 0x00,
    ScsiCommand = 0x01,
    TaskManagementRequest = 0x02,
    LoginRequest = 0x03,
    TextRequest = 0x04,
    DataOut = 0x05,
    LogoutRequest = 0x06,
    SnackRequest = 0x10,

    // Target to initiator.
    NopIn = 0x20,
    ScsiResponse = 0x21,
    TaskManagementResponse = 0x22,
    LoginResponse = 0x23,
    TextResponse = 0x24,
    DataIn = 0x25,
    LogoutResponse = 0x26,
    ReadyToTransfer = 0x31,
    AsyncMessage = 0x32,
    Reject = 0x3F,
}

public static class IscsiFlags
{
    /// <summary>Byte 0: immediate delivery.</summary>
    public const byte Immediate = 0x40;

    /// <summary>Byte 1: final PDU (F) of a sequence / command.</summary>
    public const byte Final = 0x80;

    // SCSI Command, byte 1.
    public const byte Read = 0x40;
    public const byte Write = 0x20;
    public const byte AttributeMask = 0x07;

    // Login, byte 1.
    public const byte Transit = 0x80;
    public const byte Continue = 0x40;

    // SCSI Response / Data-In, byte 1.
    public const byte BidiOverflow = 0x10;
    public const byte BidiUnderflow = 0x08;
    public const byte Overflow = 0x04;
    public const byte Underflow = 0x02;
    public const byte Status = 0x01;          // Data-In S bit
    public const byte Acknowledge = 0x40;     // Data-In A bit
}

/// <summary>Login stages (CSG/NSG).</summary>
public enum IscsiStage : byte
{
    Security = 0,
    Operational = 1,
    FullFeature = 3,
}

/// <summary>Login response status class and detail (RFC 7143 11.13.5), packed as class &lt;&lt; 8 | detail.</summary>
public static class IscsiLoginStatus
{
    public const ushort Success = 0x0000;
    public const ushort TargetMovedTemporarily = 0x0101;
    public const ushort InitiatorError = 0x0200;
    public const ushort AuthenticationFailure = 0x0201;
    public const ushort AuthorizationFailure = 0x0202;
    public const ushort NotFound = 0x0203;
    public const ushort TargetRemoved = 0x0204;
    public const ushort UnsupportedVersion = 0x0205;
    public const ushort TooManyConnections = 0x0206;
    public const ushort MissingParameter = 0x0207;
    public const ushort CannotIncludeInSession = 0x0208;
    public const ushort SessionTypeNotSupported = 0x0209;
    public const ushort SessionDoesNotExist = 0x020A;
    public const ushort InvalidDuringLogin = 0x020B;
    public const ushort TargetError = 0x0300;
    public const ushort ServiceUnavailable = 0x0301;
    public const ushort OutOfResources = 0x0302;
}

public static class IscsiRejectReason
{
    public const byte DataDigestError = 0x02;
    public const byte SnackReject = 0x03;
    public const byte ProtocolError = 0x04;
    public const byte CommandNotSupported = 0x05;
    public const byte ImmediateCommandReject = 0x06;
    public const byte TaskInProgress = 0x07;
    public const byte InvalidDataAck = 0x08;
    public const byte InvalidPduField = 0x09;
    public const byte LongOperationReject = 0x0A;
    public const byte WaitingForLogout = 0x0C;
}

public static class IscsiTaskFunction
{
    public const byte AbortTask = 1;
    public const byte AbortTaskSet = 2;
    public const byte ClearAca = 3;
    public const byte ClearTaskSet = 4;
    public const byte LogicalUnitReset = 5;
    public const byte TargetWarmReset = 6;
    public const byte TargetColdReset = 7;
    public const byte TaskReassign = 8;
    public const byte QueryTask = 9;
    public const byte QueryTaskSet = 10;
    public const byte ItNexusReset = 11;
    public const byte QueryAsyncEvent = 12;
}

public static class IscsiTaskResponse
{
    public const byte FunctionComplete = 0;
    public const byte TaskDoesNotExist = 1;
    public const byte LunDoesNotExist = 2;
    public const byte TaskStillAllegiant = 3;
    public const byte ReassignmentNotSupported = 4;
    public const byte NotSupported = 5;
    public const byte AuthorizationFailed = 6;

    /// <summary>RFC 7144: the QUERY functions found what they looked for (SAM-5 FUNCTION SUCCEEDED).</summary>
    public const byte FunctionSucceeded = 7;
    public const byte FunctionRejected = 255;
}

public static class IscsiLogoutReason
{
    public const byte CloseSession = 0;
    public const byte CloseConnection = 1;
    public const byte RemoveConnectionForRecovery = 2;
}

public static class IscsiLogoutResponse
{
    public const byte Closed = 0;
    public const byte CidNotFound = 1;
    public const byte RecoveryNotSupported = 2;
    public const byte CleanupFailed = 3;
}

public static class IscsiAsyncEvent
{
    public const byte ScsiAsyncEvent = 0;
    public const byte RequestLogout = 1;
    public const byte DropConnection = 2;
    public const byte DropAllConnections = 3;
    public const byte RequestParameterNegotiation = 4;
}

public static class IscsiReservedTag
{
    /// <summary>The reserved tag value 0xffffffff (no task / no target transfer tag).</summary>
    public const uint None = 0xFFFFFFFF;
}
