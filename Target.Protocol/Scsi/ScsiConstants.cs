// SCSI codes used by the block device server (SPC-4, SBC-3, SAM-5). Values only; no logic.
namespace Target.Protocol.Scsi;

public static class ScsiOpcode
{
    public const byte TestUnitReady = 0x00;
    public const byte RequestSense = 0x03;
    public const byte Read6 = 0x08;
    public const byte Write6 = 0x0A;
    public const byte Inquiry = 0x12;
    public const byte ModeSelect6 = 0x15;
    public const byte Reserve6 = 0x16;
    public const byte Release6 = 0x17;
    public const byte ModeSense6 = 0x1A;
    public const byte StartStopUnit = 0x1B;
    public const byte SendDiagnostic = 0x1D;
    public const byte PreventAllowMediumRemoval = 0x1E;
    public const byte ReadCapacity10 = 0x25;
    public const byte Read10 = 0x28;
    public const byte Write10 = 0x2A;
    public const byte WriteAndVerify10 = 0x2E;
    public const byte Verify10 = 0x2F;
    public const byte PreFetch10 = 0x34;
    public const byte SynchronizeCache10 = 0x35;
    public const byte WriteBuffer = 0x3B;
    public const byte ReadBuffer = 0x3C;
    public const byte WriteSame10 = 0x41;
    public const byte Unmap = 0x42;
    public const byte ModeSelect10 = 0x55;
    public const byte Reserve10 = 0x56;
    public const byte Release10 = 0x57;
    public const byte ModeSense10 = 0x5A;
    public const byte PersistentReserveIn = 0x5E;
    public const byte PersistentReserveOut = 0x5F;
    public const byte ExtendedCopy = 0x83;
    public const byte ReceiveCopyResults = 0x84;
    public const byte Read16 = 0x88;
    public const byte CompareAndWrite = 0x89;
    public const byte Write16 = 0x8A;
    public const byte OrWrite16 = 0x8B;
    public const byte WriteAndVerify16 = 0x8E;
    public const byte Verify16 = 0x8F;
    public const byte PreFetch16 = 0x90;
    public const byte SynchronizeCache16 = 0x91;
    public const byte WriteSame16 = 0x93;
    public const byte ServiceActionIn16 = 0x9E;
    public const byte ReportLuns = 0xA0;
    public const byte MaintenanceIn = 0xA3;
    public const byte MaintenanceOut = 0xA4;
    public const byte Read12 = 0xA8;
    public const byte Write12 = 0xAA;
    public const byte WriteAndVerify12 = 0xAE;
    public const byte Verify12 = 0xAF;
}

public static class ScsiServiceAction
{
    // SERVICE ACTION IN(16)
    public const byte ReadCapacity16 = 0x10;
    public const byte GetLbaStatus = 0x12;

    // MAINTENANCE IN
    public const byte ReportTargetPortGroups = 0x0A;
    public const byte ReportSupportedOperationCodes = 0x0C;
    public const byte ReportSupportedTaskManagementFunctions = 0x0D;

    // RECEIVE COPY RESULTS
    public const byte CopyStatus = 0x00;
    public const byte ReceiveData = 0x01;
    public const byte OperatingParameters = 0x03;
    public const byte FailedSegmentDetails = 0x04;
}

public enum ScsiStatus : byte
{
    Good = 0x00,
    CheckCondition = 0x02,
    ConditionMet = 0x04,
    Busy = 0x08,
    ReservationConflict = 0x18,
    TaskSetFull = 0x28,
    AcaActive = 0x30,
    TaskAborted = 0x40,
}

public enum SenseKey : byte
{
    NoSense = 0x0,
    RecoveredError = 0x1,
    NotReady = 0x2,
    MediumError = 0x3,
    HardwareError = 0x4,
    IllegalRequest = 0x5,
    UnitAttention = 0x6,
    DataProtect = 0x7,
    BlankCheck = 0x8,
    CopyAborted = 0xA,
    AbortedCommand = 0xB,
    Miscompare = 0xE,
}

/// <summary>Additional sense code and qualifier, packed as ASC &lt;&lt; 8 | ASCQ.</summary>
public static class Asc
{
    public const ushort NoAdditionalSense = 0x0000;
    public const ushort LogicalUnitNotReadyManualIntervention = 0x0403;
    public const ushort LogicalUnitNotAccessibleTransition = 0x040A;
    public const ushort WriteError = 0x0C00;
    public const ushort UnrecoveredReadError = 0x1100;
    public const ushort MiscompareDuringVerify = 0x1D00;
    public const ushort ParameterListLengthError = 0x1A00;
    public const ushort InvalidCommandOperationCode = 0x2000;
    public const ushort LbaOutOfRange = 0x2100;
    public const ushort InvalidFieldInCdb = 0x2400;
    public const ushort LogicalUnitNotSupported = 0x2500;
    public const ushort InvalidFieldInParameterList = 0x2600;
    public const ushort InvalidReleaseOfPersistentReservation = 0x2604;
    public const ushort TooManySegmentDescriptors = 0x2608;
    public const ushort UnsupportedSegmentDescriptorType = 0x2609;
    public const ushort UnsupportedTargetDescriptorType = 0x2607;
    public const ushort TooManyTargetDescriptors = 0x2606;
    public const ushort WriteProtected = 0x2700;
    public const ushort SpaceAllocationFailedWriteProtect = 0x2707;
    public const ushort PowerOnResetOrBusDeviceReset = 0x2900;
    public const ushort PowerOnOccurred = 0x2901;
    public const ushort BusResetOccurred = 0x2902;
    public const ushort BusDeviceResetOccurred = 0x2903;
    public const ushort ItNexusLoss = 0x2907;
    public const ushort ParametersChanged = 0x2A00;
    public const ushort ModeParametersChanged = 0x2A01;
    public const ushort ReservationsPreempted = 0x2A03;
    public const ushort ReservationsReleased = 0x2A04;
    public const ushort RegistrationsPreempted = 0x2A05;
    public const ushort CapacityDataHasChanged = 0x2A09;
    public const ushort CommandsClearedByAnotherInitiator = 0x2F00;
    public const ushort SavingParametersNotSupported = 0x3900;
    public const ushort MediumNotPresent = 0x3A00;
    public const ushort MediumRemovalPrevented = 0x5302;
    public const ushort InsufficientRegistrationResources = 0x5504;
    public const ushort InvalidMessageError = 0x4900;
    public const ushort InternalTargetFailure = 0x4400;
    public const ushort CommandPhaseError = 0x4A00;
    public const ushort DataPhaseError = 0x4B00;
    public const ushort InitiatorDetectedErrorMessageReceived = 0x4800;
    public const ushort OverlappedCommandsAttempted = 0x4E00;
    public const ushort CopyTargetDeviceNotReachable = 0x0D02;
    public const ushort UnreachableCopyTarget = 0x0804;
    public const ushort InvalidOperationForCopySourceOrDestination = 0x260C;
    public const ushort MiscompareDuringVerifyOfUnmappedLba = 0x1D01;
    public const ushort IscsiDigestError = 0x4705;
    public const ushort UnexpectedUnsolicitedData = 0x0C0C;
    public const ushort NotEnoughUnsolicitedData = 0x0C0D;
}

public static class ScsiVersionDescriptor
{
    public const ushort Sam5 = 0x00A0;
    public const ushort Spc4 = 0x0460;
    public const ushort Sbc3 = 0x04C0;
    public const ushort Iscsi = 0x0960;
}

public enum ScsiTaskAttribute : byte
{
    Untagged = 0,
    Simple = 1,
    Ordered = 2,
    HeadOfQueue = 3,
    Aca = 4,
}
