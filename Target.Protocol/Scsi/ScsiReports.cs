// MAINTENANCE IN reports (SPC-4 6.35-6.37): REPORT SUPPORTED OPERATION CODES (from one table of
// the commands this unit executes), REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS and REPORT TARGET
// PORT GROUPS (one group, one port, active/optimized; the HA pair will add the partner's group).
using System.Buffers.Binary;

namespace Target.Protocol.Scsi;

public sealed partial class ScsiLogicalUnit
{
    /// <summary>One command the unit executes: opcode, service action (when the opcode has them) and CDB length.</summary>
    private readonly record struct SupportedCommand(byte Opcode, ushort ServiceAction, bool HasServiceAction, byte CdbBytes);

    private static readonly SupportedCommand[] s_commands = BuildCommandTable();

    /// <summary>Nominal and recommended command timeouts reported with RCTD (seconds).</summary>
    private const uint NominalTimeoutSeconds = 1;
    private const uint RecommendedTimeoutSeconds = 30;

    private static SupportedCommand[] BuildCommandTable()
    {
        var table = new List<SupportedCommand>();
        void Plain(byte opcode) => table.Add(new SupportedCommand(opcode, 0, false, (byte)ScsiCdb.LengthOf(opcode)));
        void Actions(byte opcode, params byte[] actions)
        {
            foreach (byte action in actions) table.Add(new SupportedCommand(opcode, action, true, (byte)ScsiCdb.LengthOf(opcode)));
        }
        Plain(ScsiOpcode.TestUnitReady);
        Plain(ScsiOpcode.RequestSense);
        Plain(ScsiOpcode.Read6);
        Plain(ScsiOpcode.Write6);
        Plain(ScsiOpcode.Inquiry);
        Plain(ScsiOpcode.ModeSelect6);
        Plain(ScsiOpcode.Reserve6);
        Plain(ScsiOpcode.Release6);
        Plain(ScsiOpcode.ModeSense6);
        Plain(ScsiOpcode.StartStopUnit);
        Plain(ScsiOpcode.PreventAllowMediumRemoval);
        Plain(ScsiOpcode.ReadCapacity10);
        Plain(ScsiOpcode.Read10);
        Plain(ScsiOpcode.Write10);
        Plain(ScsiOpcode.WriteAndVerify10);
        Plain(ScsiOpcode.Verify10);
        Plain(ScsiOpcode.PreFetch10);
        Plain(ScsiOpcode.SynchronizeCache10);
        Plain(ScsiOpcode.WriteSame10);
        Plain(ScsiOpcode.Unmap);
        Plain(ScsiOpcode.ModeSelect10);
        Plain(ScsiOpcode.Reserve10);
        Plain(ScsiOpcode.Release10);
        Plain(ScsiOpcode.ModeSense10);
        Actions(ScsiOpcode.PersistentReserveIn, ScsiPrAction.ReadKeys, ScsiPrAction.ReadReservation, ScsiPrAction.ReportCapabilities, ScsiPrAction.ReadFullStatus);
        Actions(ScsiOpcode.PersistentReserveOut, ScsiPrAction.Register, ScsiPrAction.Reserve, ScsiPrAction.Release, ScsiPrAction.Clear,
            ScsiPrAction.Preempt, ScsiPrAction.PreemptAndAbort, ScsiPrAction.RegisterAndIgnoreExistingKey, ScsiPrAction.RegisterAndMove);
        Actions(ScsiOpcode.ExtendedCopy, ExtendedCopyLid1);
        Actions(ScsiOpcode.ReceiveCopyResults, ScsiServiceAction.CopyStatus, ScsiServiceAction.OperatingParameters, ScsiServiceAction.FailedSegmentDetails);
        Plain(ScsiOpcode.Read16);
        Plain(ScsiOpcode.CompareAndWrite);
        Plain(ScsiOpcode.Write16);
        Plain(ScsiOpcode.OrWrite16);
        Plain(ScsiOpcode.WriteAndVerify16);
        Plain(ScsiOpcode.Verify16);
        Plain(ScsiOpcode.PreFetch16);
        Plain(ScsiOpcode.SynchronizeCache16);
        Plain(ScsiOpcode.WriteSame16);
        Actions(ScsiOpcode.ServiceActionIn16, ScsiServiceAction.ReadCapacity16, ScsiServiceAction.GetLbaStatus);
        Plain(ScsiOpcode.ReportLuns);
        Actions(ScsiOpcode.MaintenanceIn, ScsiServiceAction.ReportTargetPortGroups, ScsiServiceAction.ReportSupportedOperationCodes,
            ScsiServiceAction.ReportSupportedTaskManagementFunctions);
        Plain(ScsiOpcode.Read12);
        Plain(ScsiOpcode.Write12);
        Plain(ScsiOpcode.WriteAndVerify12);
        Plain(ScsiOpcode.Verify12);
        return table.ToArray();
    }

    /// <summary>True when some entry of the table has <paramref name="opcode"/> with service actions.</summary>
    private static bool OpcodeHasServiceActions(byte opcode)
    {
        foreach (SupportedCommand command in s_commands)
            if (command.Opcode == opcode && command.HasServiceAction) return true;
        return false;
    }

    private void MaintenanceIn(ScsiTask task)
    {
        ReadOnlySpan<byte> cdb = task.Cdb;
        if (cdb.Length < 12)
        {
            IllegalRequest(task, Asc.InvalidFieldInCdb, 0);
            return;
        }
        switch (cdb[1] & 0x1F)
        {
            case ScsiServiceAction.ReportTargetPortGroups:
                ReportTargetPortGroups(task);
                return;
            case ScsiServiceAction.ReportSupportedOperationCodes:
                ReportSupportedOperationCodes(task);
                return;
            case ScsiServiceAction.ReportSupportedTaskManagementFunctions:
                ReportSupportedTaskManagementFunctions(task);
                return;
            default:
                IllegalRequest(task, Asc.InvalidFieldInCdb, 1, 4);
                return;
        }
    }

    private static void WriteTimeouts(Span<byte> destination)
    {
        destination.Slice(0, 12).Clear();
        BinaryPrimitives.WriteUInt16BigEndian(destination, 0x0A);
        BinaryPrimitives.WriteUInt32BigEndian(destination.Slice(4), NominalTimeoutSeconds);
        BinaryPrimitives.WriteUInt32BigEndian(destination.Slice(8), RecommendedTimeoutSeconds);
    }

    /// <summary>CDB usage data: the opcode, then every bit the device server looks at (CONTROL: NACA and LINK are not).</summary>
    private static void WriteUsageData(Span<byte> destination, in SupportedCommand command)
    {
        destination.Slice(0, command.CdbBytes).Fill(0xFF);
        destination[0] = command.Opcode;
        if (command.HasServiceAction) destination[1] = (byte)(0xE0 | command.ServiceAction);
        destination[command.CdbBytes - 1] = 0x00;
    }

    private void ReportSupportedOperationCodes(ScsiTask task)
    {
        ReadOnlySpan<byte> cdb = task.Cdb;
        bool timeouts = (cdb[2] & 0x80) != 0;
        int options = cdb[2] & 0x07;
        byte requestedOpcode = cdb[3];
        ushort requestedAction = BinaryPrimitives.ReadUInt16BigEndian(cdb.Slice(4));
        uint allocation = BinaryPrimitives.ReadUInt32BigEndian(cdb.Slice(6));

        if (options == 0)
        {
            int each = timeouts ? 20 : 8;
            Span<byte> data = task.AllocateDataIn(4 + each * s_commands.Length).Span;
            BinaryPrimitives.WriteUInt32BigEndian(data, (uint)(each * s_commands.Length));
            for (int i = 0; i < s_commands.Length; i++)
            {
                SupportedCommand command = s_commands[i];
                Span<byte> d = data.Slice(4 + i * each, each);
                d[0] = command.Opcode;
                BinaryPrimitives.WriteUInt16BigEndian(d.Slice(2), command.ServiceAction);
                d[5] = (byte)((timeouts ? 0x02 : 0) | (command.HasServiceAction ? 0x01 : 0));   // CTDP, SERVACTV
                BinaryPrimitives.WriteUInt16BigEndian(d.Slice(6), command.CdbBytes);
                if (timeouts) WriteTimeouts(d.Slice(8));
            }
            task.TruncateDataIn((int)Math.Min(allocation, int.MaxValue));
            return;
        }
        if (options > 3)
        {
            IllegalRequest(task, Asc.InvalidFieldInCdb, 2, 2);
            return;
        }
        bool hasActions = OpcodeHasServiceActions(requestedOpcode);
        // 001b: an opcode without service actions; 010b: an opcode with them; 011b: either.
        if ((options == 1 && hasActions) || (options == 2 && !hasActions && IsSupportedOpcode(requestedOpcode)))
        {
            IllegalRequest(task, Asc.InvalidFieldInCdb, 2, 2);
            return;
        }
        SupportedCommand? found = null;
        foreach (SupportedCommand command in s_commands)
        {
            if (command.Opcode != requestedOpcode) continue;
            if (command.HasServiceAction && (options == 1 || command.ServiceAction != requestedAction)) continue;
            found = command;
            break;
        }
        int cdbBytes = found?.CdbBytes ?? 0;
        Span<byte> one = task.AllocateDataIn(4 + cdbBytes + (timeouts ? 12 : 0)).Span;
        one[1] = (byte)((timeouts ? 0x80 : 0) | (found is null ? 0x01 : 0x03));   // CTDP, SUPPORT: 001b not supported, 011b supported
        BinaryPrimitives.WriteUInt16BigEndian(one.Slice(2), (ushort)cdbBytes);
        if (found is SupportedCommand supported)
        {
            WriteUsageData(one.Slice(4), supported);
            if (timeouts) WriteTimeouts(one.Slice(4 + cdbBytes));
        }
        else
        {
            task.DataInLength = 4;
        }
        task.TruncateDataIn((int)Math.Min(allocation, int.MaxValue));
    }

    private static bool IsSupportedOpcode(byte opcode)
    {
        foreach (SupportedCommand command in s_commands)
            if (command.Opcode == opcode) return true;
        return false;
    }

    private void ReportSupportedTaskManagementFunctions(ScsiTask task)
    {
        ReadOnlySpan<byte> cdb = task.Cdb;
        bool extended = (cdb[2] & 0x80) != 0;   // REPD
        uint allocation = BinaryPrimitives.ReadUInt32BigEndian(cdb.Slice(6));
        if (allocation < 4)
        {
            IllegalRequest(task, Asc.InvalidFieldInCdb, 6);
            return;
        }
        Span<byte> data = task.AllocateDataIn(extended ? 16 : 4).Span;
        // ABORT TASK, ABORT TASK SET, CLEAR ACA, CLEAR TASK SET, LOGICAL UNIT RESET, QUERY TASK, TARGET RESET;
        // QUERY ASYNCHRONOUS EVENT, QUERY TASK SET, I_T NEXUS RESET.
        data[0] = 0x80 | 0x40 | 0x20 | 0x10 | 0x08 | 0x04 | 0x02;
        data[1] = 0x04 | 0x02 | 0x01;
        if (extended) data[3] = 0x0C;
        task.TruncateDataIn((int)Math.Min(allocation, int.MaxValue));
    }

    private void ReportTargetPortGroups(ScsiTask task)
    {
        ReadOnlySpan<byte> cdb = task.Cdb;
        int format = cdb[1] >> 5;
        uint allocation = BinaryPrimitives.ReadUInt32BigEndian(cdb.Slice(6));
        if (format is not (0 or 1))
        {
            IllegalRequest(task, Asc.InvalidFieldInCdb, 1, 7);
            return;
        }
        int header = format == 1 ? 8 : 4;
        Span<byte> data = task.AllocateDataIn(header + 12).Span;
        BinaryPrimitives.WriteUInt32BigEndian(data, 12 + (uint)(header - 4));
        if (format == 1)
        {
            data[4] = 0x10;     // extended header
            data[5] = 0;        // implicit transition time: none
        }
        Span<byte> group = data.Slice(header);
        group[0] = 0x80;                                         // PREF; asymmetric access state 0: active/optimized
        group[1] = 0x01;                                         // AO_SUP (the only state one controller has)
        BinaryPrimitives.WriteUInt16BigEndian(group.Slice(2), TargetPortGroupId);
        group[5] = 0x00;                                         // status: no state change
        group[7] = 1;                                            // one target port
        BinaryPrimitives.WriteUInt16BigEndian(group.Slice(10), task.Nexus.RelativeTargetPortId);
        task.TruncateDataIn((int)Math.Min(allocation, int.MaxValue));
    }
}
