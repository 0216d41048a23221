// INQUIRY (standard data and the VPD pages 00h, 80h, 83h, B0h, B1h, B2h), REPORT LUNS and
// REQUEST SENSE (SPC-4 6.6, 6.33, 6.39; SBC-3 6.6).
using System.Buffers.Binary;
using System.Text;
using Target.Dedup;

namespace Target.Protocol.Scsi;

public sealed partial class ScsiLogicalUnit
{
    public const string VendorId = "TARGET";
    public const string ProductId = "DEDUP VOLUME";
    public const string ProductRevision = "0001";

    /// <summary>IEEE company id used in the NAA 6 designator: a locally administered CID (U/L bit set).</summary>
    private const uint CompanyId = 0x5A5447;

    private static readonly byte[] s_supportedVpdPages = [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2];

    private void Inquiry(ScsiTask task)
    {
        ReadOnlySpan<byte> cdb = task.Cdb;
        bool evpd = (cdb[1] & 0x01) != 0;
        byte page = cdb[2];
        int allocation = BinaryPrimitives.ReadUInt16BigEndian(cdb.Slice(3));
        if ((cdb[1] & 0xFE) != 0)
        {
            IllegalRequest(task, Asc.InvalidFieldInCdb, 1);   // CMDDT (obsolete) and reserved bits
            return;
        }
        if (!evpd)
        {
            if (page != 0)
            {
                IllegalRequest(task, Asc.InvalidFieldInCdb, 2);
                return;
            }
            StandardInquiry(task);
        }
        else
        {
            switch (page)
            {
                case 0x00: SupportedVpdPages(task); break;
                case 0x80: UnitSerialNumber(task); break;
                case 0x83: DeviceIdentification(task); break;
                case 0xB0: BlockLimits(task); break;
                case 0xB1: BlockDeviceCharacteristics(task); break;
                case 0xB2: LogicalBlockProvisioning(task); break;
                default:
                    IllegalRequest(task, Asc.InvalidFieldInCdb, 2);
                    return;
            }
        }
        task.TruncateDataIn(allocation);
    }

    private void StandardInquiry(ScsiTask task)
    {
        const int Length = 96;
        Span<byte> data = task.AllocateDataIn(Length).Span;
        data[0] = 0x00;                 // peripheral qualifier 0, direct-access block device
        data[1] = 0x00;                 // not removable
        data[2] = 0x06;                 // SPC-4
        data[3] = 0x12;                 // HISUP, response data format 2
        data[4] = Length - 5;
        data[5] = 0x10;                 // TPGS = 01b: implicit ALUA (one target port group)
        if (ThirdPartyCopy) data[5] |= 0x08;
        data[6] = 0x00;
        data[7] = 0x02;                 // CMDQUE
        WritePadded(data.Slice(8, 8), VendorId);
        WritePadded(data.Slice(16, 16), ProductId);
        WritePadded(data.Slice(32, 4), ProductRevision);
        BinaryPrimitives.WriteUInt16BigEndian(data.Slice(58), ScsiVersionDescriptor.Sam5);
        BinaryPrimitives.WriteUInt16BigEndian(data.Slice(60), ScsiVersionDescriptor.Iscsi);
        BinaryPrimitives.WriteUInt16BigEndian(data.Slice(62), ScsiVersionDescriptor.Spc4);
        BinaryPrimitives.WriteUInt16BigEndian(data.Slice(64), ScsiVersionDescriptor.Sbc3);
    }

    private static void WritePadded(Span<byte> destination, string text)
    {
        destination.Fill((byte)' ');
        Encoding.ASCII.GetBytes(text.AsSpan(0, Math.Min(text.Length, destination.Length)), destination);
    }

    private void SupportedVpdPages(ScsiTask task)
    {
        Span<byte> data = task.AllocateDataIn(4 + s_supportedVpdPages.Length).Span;
        data[1] = 0x00;
        BinaryPrimitives.WriteUInt16BigEndian(data.Slice(2), (ushort)s_supportedVpdPages.Length);
        s_supportedVpdPages.CopyTo(data.Slice(4));
    }

    /// <summary>Unit serial number: the volume UUID as 32 hex digits.</summary>
    public string SerialNumber => Volume.Uuid.ToString("N");

    private void UnitSerialNumber(ScsiTask task)
    {
        string serial = SerialNumber;
        Span<byte> data = task.AllocateDataIn(4 + serial.Length).Span;
        data[1] = 0x80;
        BinaryPrimitives.WriteUInt16BigEndian(data.Slice(2), (ushort)serial.Length);
        Encoding.ASCII.GetBytes(serial, data.Slice(4));
    }

    /// <summary>The 16-byte NAA IEEE Registered Extended designator derived from the volume UUID.</summary>
    public void WriteNaaDesignator(Span<byte> destination)
    {
        Span<byte> uuid = stackalloc byte[16];
        Volume.Uuid.TryWriteBytes(uuid, bigEndian: true, out _);
        // NAA 6 | 24-bit company id | 36 + 64 bits of vendor-specific identifier (from the UUID).
        destination[0] = (byte)(0x60 | (CompanyId >> 20));
        destination[1] = (byte)((CompanyId >> 12) & 0xFF);
        destination[2] = (byte)((CompanyId >> 4) & 0xFF);
        destination[3] = (byte)(((CompanyId & 0x0F) << 4) | (uint)(uuid[0] & 0x0F));
        uuid.Slice(1, 12).CopyTo(destination.Slice(4));
    }

    private void DeviceIdentification(ScsiTask task)
    {
        ScsiItNexus nexus = task.Nexus;
        Span<byte> data = task.AllocateDataIn(ScsiTask.ScratchBytes).Span;
        data[1] = 0x83;
        int used = 4;

        // Logical unit: NAA 6.
        data[used] = 0x01;              // binary
        data[used + 1] = 0x03;          // association LU, type NAA
        data[used + 3] = 16;
        WriteNaaDesignator(data.Slice(used + 4, 16));
        used += 20;

        // Logical unit: T10 vendor id + serial.
        string t10 = VendorId.PadRight(8) + SerialNumber;
        data[used] = 0x02;              // ASCII
        data[used + 1] = 0x01;          // association LU, type T10 vendor id
        data[used + 3] = (byte)t10.Length;
        Encoding.ASCII.GetBytes(t10, data.Slice(used + 4));
        used += 4 + t10.Length;

        // Target port: relative target port identifier.
        data[used] = 0x51;              // protocol iSCSI, binary
        data[used + 1] = 0x94;          // PIV, association target port, type relative target port
        data[used + 3] = 4;
        BinaryPrimitives.WriteUInt16BigEndian(data.Slice(used + 6), nexus.RelativeTargetPortId);
        used += 8;

        // Target port: target port group.
        data[used] = 0x51;
        data[used + 1] = 0x95;          // PIV, association target port, type target port group
        data[used + 3] = 4;
        BinaryPrimitives.WriteUInt16BigEndian(data.Slice(used + 6), TargetPortGroupId);
        used += 8;

        // Target port: SCSI name string "iqn...,t,0xTPGT".
        used += WriteNameDesignator(data.Slice(used), 0x98, nexus.TargetPortName);

        // Target device: SCSI name string "iqn...".
        used += WriteNameDesignator(data.Slice(used), 0xA8, nexus.TargetName);

        BinaryPrimitives.WriteUInt16BigEndian(data.Slice(2), (ushort)(used - 4));
        task.DataInLength = used;
    }

    /// <summary>A SCSI name string designator (UTF-8, NUL-terminated, padded to a multiple of 4).</summary>
    private static int WriteNameDesignator(Span<byte> destination, byte associationAndType, string name)
    {
        int nameBytes = Encoding.UTF8.GetByteCount(name);
        int padded = (nameBytes + 1 + 3) & ~3;
        destination.Slice(0, 4 + padded).Clear();
        destination[0] = 0x53;          // protocol iSCSI, UTF-8
        destination[1] = associationAndType;
        destination[3] = (byte)padded;
        Encoding.UTF8.GetBytes(name, destination.Slice(4));
        return 4 + padded;
    }

    private void BlockLimits(ScsiTask task)
    {
        Span<byte> data = task.AllocateDataIn(64).Span;
        data[1] = 0xB0;
        BinaryPrimitives.WriteUInt16BigEndian(data.Slice(2), 0x3C);
        data[4] = 0x01;                                                                     // WSNZ
        data[5] = ScsiLimits.MaxCompareAndWriteBlocks;
        BinaryPrimitives.WriteUInt16BigEndian(data.Slice(6), (ushort)(ScsiLimits.PhysicalBlockBytes >> BlockShift));
        BinaryPrimitives.WriteUInt32BigEndian(data.Slice(8), (uint)(ScsiLimits.MaxTransferBytes >> BlockShift));
        BinaryPrimitives.WriteUInt32BigEndian(data.Slice(12), (uint)(ScsiLimits.OptimalTransferBytes >> BlockShift));
        BinaryPrimitives.WriteUInt32BigEndian(data.Slice(16), (uint)(ScsiLimits.MaxTransferBytes >> BlockShift));  // MAXIMUM PREFETCH LENGTH
        BinaryPrimitives.WriteUInt32BigEndian(data.Slice(20), (uint)Math.Min(uint.MaxValue - 1, ScsiLimits.MaxUnmapBytes >> BlockShift));
        BinaryPrimitives.WriteUInt32BigEndian(data.Slice(24), ScsiLimits.MaxUnmapDescriptors);
        BinaryPrimitives.WriteUInt32BigEndian(data.Slice(28), (uint)(ScsiLimits.PhysicalBlockBytes >> BlockShift));
        BinaryPrimitives.WriteUInt32BigEndian(data.Slice(32), 0x80000000);                 // UGAVALID, alignment 0
        BinaryPrimitives.WriteUInt64BigEndian(data.Slice(36), (ulong)(ScsiLimits.MaxWriteSameBytes >> BlockShift));
    }

    private void BlockDeviceCharacteristics(ScsiTask task)
    {
        Span<byte> data = task.AllocateDataIn(64).Span;
        data[1] = 0xB1;
        BinaryPrimitives.WriteUInt16BigEndian(data.Slice(2), 0x3C);
        BinaryPrimitives.WriteUInt16BigEndian(data.Slice(4), 1);   // non-rotating medium
    }

    private void LogicalBlockProvisioning(ScsiTask task)
    {
        Span<byte> data = task.AllocateDataIn(8).Span;
        data[1] = 0xB2;
        BinaryPrimitives.WriteUInt16BigEndian(data.Slice(2), 4);
        data[4] = 0;                                // threshold exponent: no thresholds
        data[5] = 0x80 | 0x40 | 0x20 | 0x04 | 0x02; // LBPU, LBPWS, LBPWS10, LBPRZ, ANC_SUP
        data[6] = 0x02;                             // provisioning type: thin
    }

    // ---- REPORT LUNS / REQUEST SENSE ----

    private void ReportLuns(ScsiTask task)
    {
        ReadOnlySpan<byte> cdb = task.Cdb;
        byte select = cdb[2];
        uint allocation = BinaryPrimitives.ReadUInt32BigEndian(cdb.Slice(6));
        if (select is not (0x00 or 0x01 or 0x02 or 0x10 or 0x11 or 0x12))
        {
            IllegalRequest(task, Asc.InvalidFieldInCdb, 2);
            return;
        }
        if (allocation < 16)
        {
            IllegalRequest(task, Asc.InvalidFieldInCdb, 6);
            return;
        }
        // One logical unit, LUN 0; no well-known logical units.
        bool listLun0 = select is 0x00 or 0x02 or 0x11;
        Span<byte> data = task.AllocateDataIn(16).Span;
        BinaryPrimitives.WriteUInt32BigEndian(data, listLun0 ? 8u : 0u);
        task.DataInLength = listLun0 ? 16 : 8;
        task.TruncateDataIn((int)Math.Min(allocation, int.MaxValue));
    }

    private void RequestSense(ScsiTask task)
    {
        ReadOnlySpan<byte> cdb = task.Cdb;
        bool descriptor = (cdb[1] & 0x01) != 0;
        int allocation = cdb[4];
        Span<byte> data = task.AllocateDataIn(ScsiSense.DescriptorBytesMax).Span;
        ScsiSenseInfo sense = task.Nexus.TryTakeUnitAttention(out ushort unitAttention)
            ? new ScsiSenseInfo(SenseKey.UnitAttention, unitAttention)
            : new ScsiSenseInfo(SenseKey.NoSense, Asc.NoAdditionalSense);
        task.DataInLength = ScsiSense.Write(data, sense, descriptor);
        task.TruncateDataIn(allocation);
    }

    /// <summary>3PC: EXTENDED COPY (LID1) works on every volume (by reference when the volume can, else through a buffer).</summary>
    private bool ThirdPartyCopy => ExtendedCopySupported;
}
