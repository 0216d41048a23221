// A logical unit: one volume served as an SBC-3 direct-access block device, shared by every
// I_T nexus (session) that reaches it. This file holds the unit's state, the command dispatch
// and the mapping of engine errors to sense data; the handlers live in the other partial files.
//
// Invariants:
// - Every command ends with a status: GOOD, CHECK CONDITION with sense, RESERVATION CONFLICT
//   or TASK ABORTED; an exception never escapes ExecuteAsync.
// - Unit attentions are reported before any command except INQUIRY, REPORT LUNS and REQUEST SENSE.
// - Range checks happen here before the volume is called; the volume checks again.
using System.Runtime.CompilerServices;
using Microsoft.Extensions.Logging;
using Target.Dedup;

namespace Target.Protocol.Scsi;

public sealed partial class ScsiLogicalUnit
{
    private readonly ILogger _logger;
    private readonly object _nexusLock = new();
    private ScsiItNexus[] _nexuses = [];

    // Mode page state (current values; none are saved).
    private volatile bool _descriptorSense;
    private volatile bool _softwareWriteProtect;

    /// <param name="stateDirectory">Where persistent reservations are kept (the pool directory); null keeps them in memory.</param>
    public ScsiLogicalUnit(IBlockVolume volume, string targetName, bool readOnly, ILogger logger, string? stateDirectory = null)
    {
        ArgumentNullException.ThrowIfNull(volume);
        ArgumentException.ThrowIfNullOrEmpty(targetName);
        Volume = volume;
        TargetName = targetName;
        ReadOnly = readOnly;
        _logger = logger;
        BlockBytes = volume.LogicalBlockSize;
        if (BlockBytes is not (512 or 4096))
            throw new ArgumentException($"volume {volume.Name}: logical block size {BlockBytes} is not 512 or 4096", nameof(volume));
        BlockShift = BlockBytes == 512 ? 9 : 12;
        if (stateDirectory is not null) _prPath = Path.Combine(stateDirectory, $"scsi-pr-{volume.Uuid:N}.json");
        LoadPersistentReservations();
    }

    public IBlockVolume Volume { get; }

    public string TargetName { get; }

    public bool ReadOnly { get; }

    public int BlockBytes { get; }

    public int BlockShift { get; }

    /// <summary>Number of logical blocks now (the volume may be resized while served).</summary>
    public long BlockCount => Volume.SizeBytes >> BlockShift;

    public bool DescriptorSense => _descriptorSense;

    private bool WriteProtected => ReadOnly || _softwareWriteProtect || (Volume.Capabilities & VolumeCapabilities.ReadOnly) != 0;

    private bool VolatileCache => (Volume.Capabilities & VolumeCapabilities.VolatileWriteCache) != 0;

    // ---- I_T nexus registry (unit attentions for others, reservations) ----

    public void Attach(ScsiItNexus nexus)
    {
        lock (_nexusLock)
        {
            if (Array.IndexOf(_nexuses, nexus) >= 0) return;
            _nexuses = [.. _nexuses, nexus];
        }
    }

    /// <summary>How many I_T nexuses are attached (sessions logged in to this unit).</summary>
    internal int AttachedNexusCount => Volatile.Read(ref _nexuses).Length;

    public void Detach(ScsiItNexus nexus)
    {
        lock (_nexusLock)
        {
            int index = Array.IndexOf(_nexuses, nexus);
            if (index < 0) return;
            var next = new List<ScsiItNexus>(_nexuses);
            next.RemoveAt(index);
            _nexuses = next.ToArray();
        }
        OnNexusLost(nexus);
    }

    /// <summary>Posts a unit attention to every attached nexus except <paramref name="except"/>.</summary>
    public void PostUnitAttentionToOthers(ScsiItNexus? except, ushort ascAscq)
    {
        foreach (ScsiItNexus nexus in Volatile.Read(ref _nexuses))
            if (!ReferenceEquals(nexus, except)) nexus.PostUnitAttention(ascAscq);
    }

    /// <summary>LOGICAL UNIT RESET (task management): clears reservations made with RESERVE, mode state and posts a reset UA.</summary>
    public void Reset(ScsiItNexus? requester)
    {
        _descriptorSense = false;
        _softwareWriteProtect = false;
        OnReset();
        foreach (ScsiItNexus nexus in Volatile.Read(ref _nexuses))
            nexus.PostUnitAttention(Asc.BusDeviceResetOccurred);
        _ = requester;
    }

    // ---- dispatch ----

    /// <summary>
    /// Runs one command to completion. Never throws, and never faults; the task carries status,
    /// sense and data-in. Allocates nothing for READ and WRITE: the volume's I/O is returned as is
    /// when it completed at once, else awaited through the task's own reusable completion
    /// (<see cref="ScsiTask.Execution"/>), which turns a failure into sense like any other.
    /// </summary>
    public ValueTask ExecuteAsync(ScsiTask task, CancellationToken ct)
    {
        task.SetGood();
        task.DataInLength = 0;
        ValueTask running;
        try
        {
            running = Dispatch(task, ct);
        }
        catch (Exception ex)
        {
            SetError(task, ex);
            return default;
        }
        if (!running.IsCompleted) return task.Execution.Await(running, this);
        try
        {
            running.GetAwaiter().GetResult();
        }
        catch (Exception ex)
        {
            SetError(task, ex);
        }
        return default;
    }

    /// <summary>Checks common to every command, then the command itself (may throw or fault; ExecuteAsync turns that into sense).</summary>
    private ValueTask Dispatch(ScsiTask task, CancellationToken ct)
    {
        if (task.CdbLength < 6)
        {
            IllegalRequest(task, Asc.InvalidFieldInCdb, 0);
            return default;
        }
        byte opcode = task.CdbBuffer[0];
        if (task.Lun != 0)
        {
            ExecuteForMissingLun(task, opcode);
            return default;
        }
        if (opcode != ScsiOpcode.Inquiry && opcode != ScsiOpcode.ReportLuns && opcode != ScsiOpcode.RequestSense
            && task.Nexus.TryTakeUnitAttention(out ushort unitAttention))
        {
            task.CheckCondition(new ScsiSenseInfo(SenseKey.UnitAttention, unitAttention), _descriptorSense);
            return default;
        }
        if (!CheckReservation(task, opcode)) return default;

        switch (opcode)
        {
            case ScsiOpcode.Read6:
            case ScsiOpcode.Read10:
            case ScsiOpcode.Read12:
            case ScsiOpcode.Read16:
                return ReadAsync(task, ct);
            case ScsiOpcode.Write6:
            case ScsiOpcode.Write10:
            case ScsiOpcode.Write12:
            case ScsiOpcode.Write16:
                return WriteAsync(task, ct);
            default:
                return ExecuteOtherAsync(task, opcode, ct);
        }
    }

    /// <summary>A command's I/O that did not complete at once ended: its failure becomes sense (ScsiExecution).</summary>
    internal void FailCommand(ScsiTask task, Exception exception) => SetError(task, exception);

    private async ValueTask ExecuteOtherAsync(ScsiTask task, byte opcode, CancellationToken ct)
    {
        switch (opcode)
        {
            case ScsiOpcode.TestUnitReady:
                if (CheckControlByte(task, 5)) task.SetGood();
                return;
            case ScsiOpcode.Inquiry:
                Inquiry(task);
                return;
            case ScsiOpcode.ReportLuns:
                ReportLuns(task);
                return;
            case ScsiOpcode.RequestSense:
                RequestSense(task);
                return;
            case ScsiOpcode.ReadCapacity10:
                ReadCapacity10(task);
                return;
            case ScsiOpcode.ServiceActionIn16:
                await ServiceActionIn16Async(task, ct).ConfigureAwait(false);
                return;
            case ScsiOpcode.ModeSense6:
            case ScsiOpcode.ModeSense10:
                ModeSense(task);
                return;
            case ScsiOpcode.ModeSelect6:
            case ScsiOpcode.ModeSelect10:
                ModeSelect(task);
                return;
            case ScsiOpcode.SynchronizeCache10:
            case ScsiOpcode.SynchronizeCache16:
                await SynchronizeCacheAsync(task, ct).ConfigureAwait(false);
                return;
            case ScsiOpcode.WriteSame10:
            case ScsiOpcode.WriteSame16:
                await WriteSameAsync(task, ct).ConfigureAwait(false);
                return;
            case ScsiOpcode.Unmap:
                await UnmapAsync(task, ct).ConfigureAwait(false);
                return;
            case ScsiOpcode.Verify10:
            case ScsiOpcode.Verify12:
            case ScsiOpcode.Verify16:
                await VerifyAsync(task, ct).ConfigureAwait(false);
                return;
            case ScsiOpcode.WriteAndVerify10:
            case ScsiOpcode.WriteAndVerify12:
            case ScsiOpcode.WriteAndVerify16:
                await WriteAndVerifyAsync(task, ct).ConfigureAwait(false);
                return;
            case ScsiOpcode.CompareAndWrite:
                await CompareAndWriteAsync(task, ct).ConfigureAwait(false);
                return;
            case ScsiOpcode.OrWrite16:
                await OrWriteAsync(task, ct).ConfigureAwait(false);
                return;
            case ScsiOpcode.PreFetch10:
            case ScsiOpcode.PreFetch16:
                PreFetch(task);
                return;
            case ScsiOpcode.StartStopUnit:
                StartStopUnit(task);
                return;
            case ScsiOpcode.PreventAllowMediumRemoval:
                PreventAllowMediumRemoval(task);
                return;
            default:
                if (!await ExecuteExtendedAsync(task, opcode, ct).ConfigureAwait(false))
                    IllegalRequest(task, Asc.InvalidCommandOperationCode, 0);
                return;
        }
    }

    /// <summary>Commands to a LUN that does not exist (SPC-4 / SAM-5 rules).</summary>
    private void ExecuteForMissingLun(ScsiTask task, byte opcode)
    {
        switch (opcode)
        {
            case ScsiOpcode.Inquiry:
                {
                    // Peripheral qualifier 011b: no logical unit here.
                    ReadOnlySpan<byte> cdb = task.Cdb;
                    if ((cdb[1] & 0x01) != 0)
                    {
                        IllegalRequest(task, Asc.LogicalUnitNotSupported, -1);
                        return;
                    }
                    Span<byte> data = task.AllocateDataIn(36).Span;
                    data[0] = 0x7F;
                    data[2] = 0x06;
                    data[3] = 0x12;
                    data[4] = 31;
                    task.TruncateDataIn(cdb[3] << 8 | cdb[4]);
                    return;
                }
            case ScsiOpcode.ReportLuns:
                ReportLuns(task);
                return;
            case ScsiOpcode.RequestSense:
                {
                    ReadOnlySpan<byte> cdb = task.Cdb;
                    bool descriptor = (cdb[1] & 0x01) != 0;
                    Span<byte> data = task.AllocateDataIn(ScsiSense.DescriptorBytesMax).Span;
                    int length = ScsiSense.Write(data, new ScsiSenseInfo(SenseKey.IllegalRequest, Asc.LogicalUnitNotSupported), descriptor);
                    task.DataInLength = length;
                    task.TruncateDataIn(cdb[4]);
                    return;
                }
            default:
                IllegalRequest(task, Asc.LogicalUnitNotSupported, -1);
                return;
        }
    }

    // ---- errors ----

    internal void IllegalRequest(ScsiTask task, ushort ascAscq, int fieldPointer, int bitPointer = -1)
        => task.CheckCondition(new ScsiSenseInfo(SenseKey.IllegalRequest, ascAscq) { FieldPointer = fieldPointer, BitPointer = bitPointer }, _descriptorSense);

    internal void IllegalParameter(ScsiTask task, ushort ascAscq, int fieldPointer, int bitPointer = -1)
        => task.CheckCondition(new ScsiSenseInfo(SenseKey.IllegalRequest, ascAscq) { FieldPointer = fieldPointer, FieldInCdb = false, BitPointer = bitPointer }, _descriptorSense);

    internal void CheckCondition(ScsiTask task, SenseKey key, ushort ascAscq)
        => task.CheckCondition(new ScsiSenseInfo(key, ascAscq), _descriptorSense);

    private void LbaOutOfRange(ScsiTask task) => IllegalRequest(task, Asc.LbaOutOfRange, -1);

    private void WriteProtectedError(ScsiTask task) => CheckCondition(task, SenseKey.DataProtect, Asc.WriteProtected);

    /// <summary>The CONTROL byte: NACA and LINK are not supported.</summary>
    private bool CheckControlByte(ScsiTask task, int index)
    {
        if ((task.CdbBuffer[index] & 0x05) != 0)
        {
            IllegalRequest(task, Asc.InvalidFieldInCdb, index);
            return false;
        }
        return true;
    }

    private void SetError(ScsiTask task, Exception exception)
    {
        StorageErrorKind kind = ProtocolErrors.Classify(exception);
        bool writing = task.WriteExpected;
        switch (kind)
        {
            case StorageErrorKind.NoSpace:
                CheckCondition(task, SenseKey.DataProtect, Asc.SpaceAllocationFailedWriteProtect);
                break;
            case StorageErrorKind.ReadOnly:
                CheckCondition(task, SenseKey.DataProtect, Asc.WriteProtected);
                break;
            case StorageErrorKind.OutOfRange:
                IllegalRequest(task, Asc.LbaOutOfRange, -1);
                break;
            case StorageErrorKind.NotOwner:
                CheckCondition(task, SenseKey.NotReady, Asc.LogicalUnitNotAccessibleTransition);
                break;
            case StorageErrorKind.Media:
                _logger.LogWarning("scsi {Nexus}: opcode 0x{Opcode:x2} on {Volume} failed: {Message}",
                    task.Nexus, task.CdbBuffer[0], Volume.Name, exception.Message);
                CheckCondition(task, SenseKey.MediumError, writing ? Asc.WriteError : Asc.UnrecoveredReadError);
                break;
            case StorageErrorKind.Cancelled:
                CheckCondition(task, SenseKey.AbortedCommand, Asc.NoAdditionalSense);
                break;
            case StorageErrorKind.FastZeroUnsupported:
            case StorageErrorKind.NotFound:
            case StorageErrorKind.AlreadyExists:
            case StorageErrorKind.Unexpected:
            default:
                _logger.LogError(exception, "scsi {Nexus}: opcode 0x{Opcode:x2} on {Volume} failed unexpectedly; answering HARDWARE ERROR",
                    task.Nexus, task.CdbBuffer[0], Volume.Name);
                CheckCondition(task, SenseKey.HardwareError, Asc.InternalTargetFailure);
                break;
        }
    }
}
