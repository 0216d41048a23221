// MODE SENSE / MODE SELECT 6 and 10 (SPC-4 6.11-6.14) with the pages a block device needs:
// read-write error recovery (01h), caching (08h; WCE follows the volume's volatile cache),
// control (0Ah; D_SENSE and SWP changeable) and informational exceptions control (1Ch).
// Nothing is savable: PC=3 and SP=1 are refused.
using System.Buffers.Binary;

namespace Target.Protocol.Scsi;

public sealed partial class ScsiLogicalUnit
{
    private const int PageControlCurrent = 0;
    private const int PageControlChangeable = 1;
    private const int PageControlDefault = 2;
    private const int PageControlSaved = 3;

    private static readonly byte[] s_modePages = [0x01, 0x08, 0x0A, 0x1C];

    private static int ModePageLength(byte page) => page switch
    {
        0x01 => 12,
        0x08 => 20,
        0x0A => 12,
        0x1C => 12,
        _ => 0,
    };

    /// <summary>Writes one mode page for the page control value; returns its length (0 for an unknown page).</summary>
    private int WriteModePage(Span<byte> destination, byte page, int pageControl)
    {
        int length = ModePageLength(page);
        if (length == 0) return 0;
        Span<byte> p = destination.Slice(0, length);
        p.Clear();
        p[0] = page;
        p[1] = (byte)(length - 2);
        bool changeable = pageControl == PageControlChangeable;
        bool current = pageControl == PageControlCurrent;
        switch (page)
        {
            case 0x01:
                if (!changeable) p[2] = 0xC0;                          // AWRE, ARRE
                break;
            case 0x08:
                if (!changeable && VolatileCache) p[2] = 0x04;        // WCE follows the write mode; not changeable
                break;
            case 0x0A:
                if (changeable)
                {
                    p[2] = 0x04;                                      // D_SENSE
                    p[4] = 0x08;                                      // SWP
                }
                else
                {
                    p[2] = (byte)(current && _descriptorSense ? 0x04 : 0x00);
                    p[3] = 0x10;                                      // queue algorithm modifier 1: unrestricted reordering
                    p[4] = (byte)(current && _softwareWriteProtect ? 0x08 : 0x00);
                    BinaryPrimitives.WriteUInt16BigEndian(p.Slice(8), 0xFFFF);   // busy timeout: unlimited
                }
                break;
            case 0x1C:
                if (!changeable) p[2] = 0x08;                          // DEXCPT: no informational exceptions
                break;
        }
        return length;
    }

    private void ModeSense(ScsiTask task)
    {
        ReadOnlySpan<byte> cdb = task.Cdb;
        bool ten = cdb[0] == ScsiOpcode.ModeSense10;
        bool disableBlockDescriptors = (cdb[1] & 0x08) != 0;
        bool longLba = ten && (cdb[1] & 0x10) != 0;
        int pageControl = cdb[2] >> 6;
        byte page = (byte)(cdb[2] & 0x3F);
        byte subpage = cdb[3];
        int allocation = ten ? BinaryPrimitives.ReadUInt16BigEndian(cdb.Slice(7)) : cdb[4];

        if (pageControl == PageControlSaved)
        {
            IllegalRequest(task, Asc.SavingParametersNotSupported, 2, 7);
            return;
        }
        bool all = page == 0x3F;
        if ((!all && (ModePageLength(page) == 0 || subpage != 0)) || (all && subpage is not (0x00 or 0xFF)))
        {
            IllegalRequest(task, Asc.InvalidFieldInCdb, ModePageLength(page) == 0 && !all ? 2 : 3);
            return;
        }

        Span<byte> data = task.AllocateDataIn(512).Span;
        int headerBytes = ten ? 8 : 4;
        int descriptorBytes = disableBlockDescriptors ? 0 : longLba ? 16 : 8;
        int used = headerBytes;
        if (descriptorBytes == 8)
        {
            long blocks = BlockCount;
            BinaryPrimitives.WriteUInt32BigEndian(data.Slice(used), blocks > uint.MaxValue ? uint.MaxValue : (uint)blocks);
            BinaryPrimitives.WriteUInt32BigEndian(data.Slice(used + 4), (uint)BlockBytes);   // byte 4 is density/reserved (0)
            data[used + 4] = 0;
        }
        else if (descriptorBytes == 16)
        {
            BinaryPrimitives.WriteUInt64BigEndian(data.Slice(used), (ulong)BlockCount);
            BinaryPrimitives.WriteUInt32BigEndian(data.Slice(used + 12), (uint)BlockBytes);
        }
        used += descriptorBytes;
        if (all)
        {
            foreach (byte each in s_modePages) used += WriteModePage(data.Slice(used), each, pageControl);
        }
        else
        {
            used += WriteModePage(data.Slice(used), page, pageControl);
        }

        byte deviceSpecific = (byte)((WriteProtected ? 0x80 : 0x00) | 0x10);   // WP, DPOFUA
        if (ten)
        {
            BinaryPrimitives.WriteUInt16BigEndian(data, (ushort)(used - 2));
            data[3] = deviceSpecific;
            data[4] = (byte)(longLba && descriptorBytes == 16 ? 0x01 : 0x00);
            BinaryPrimitives.WriteUInt16BigEndian(data.Slice(6), (ushort)descriptorBytes);
        }
        else
        {
            data[0] = (byte)(used - 1);
            data[2] = deviceSpecific;
            data[3] = (byte)descriptorBytes;
        }
        task.DataInLength = used;
        task.TruncateDataIn(allocation);
    }

    private void ModeSelect(ScsiTask task)
    {
        ReadOnlySpan<byte> cdb = task.Cdb;
        bool ten = cdb[0] == ScsiOpcode.ModeSelect10;
        bool savePages = (cdb[1] & 0x01) != 0;
        int parameterLength = ten ? BinaryPrimitives.ReadUInt16BigEndian(cdb.Slice(7)) : cdb[4];
        if (savePages)
        {
            IllegalRequest(task, Asc.InvalidFieldInCdb, 1, 0);
            return;
        }
        if (parameterLength == 0) return;
        int headerBytes = ten ? 8 : 4;
        if (parameterLength < headerBytes || task.DataOutLength < parameterLength)
        {
            IllegalRequest(task, Asc.ParameterListLengthError, ten ? 7 : 4);
            return;
        }
        ReadOnlySpan<byte> list = task.DataOutSpan.Slice(0, parameterLength);
        int descriptorBytes = ten ? BinaryPrimitives.ReadUInt16BigEndian(list.Slice(6)) : list[3];
        int position = headerBytes + descriptorBytes;
        if (position > list.Length)
        {
            IllegalParameter(task, Asc.ParameterListLengthError, ten ? 6 : 3);
            return;
        }

        bool newDescriptorSense = _descriptorSense;
        bool newWriteProtect = _softwareWriteProtect;
        Span<byte> current = stackalloc byte[32];
        Span<byte> changeable = stackalloc byte[32];
        while (position < list.Length)
        {
            if (list.Length - position < 2)
            {
                IllegalParameter(task, Asc.ParameterListLengthError, position);
                return;
            }
            byte page = (byte)(list[position] & 0x3F);
            bool subpageFormat = (list[position] & 0x40) != 0;
            int length = ModePageLength(page);
            if (subpageFormat || length == 0)
            {
                IllegalParameter(task, Asc.InvalidFieldInParameterList, position);
                return;
            }
            if (list[position + 1] != length - 2 || list.Length - position < length)
            {
                IllegalParameter(task, Asc.InvalidFieldInParameterList, position + 1);
                return;
            }
            ReadOnlySpan<byte> given = list.Slice(position, length);
            WriteModePage(current, page, PageControlCurrent);
            WriteModePage(changeable, page, PageControlChangeable);
            for (int i = 2; i < length; i++)
            {
                if (((given[i] ^ current[i]) & ~changeable[i]) != 0)
                {
                    IllegalParameter(task, Asc.InvalidFieldInParameterList, position + i);
                    return;
                }
            }
            if (page == 0x0A)
            {
                newDescriptorSense = (given[2] & 0x04) != 0;
                newWriteProtect = (given[4] & 0x08) != 0;
            }
            position += length;
        }

        bool changed = newDescriptorSense != _descriptorSense || newWriteProtect != _softwareWriteProtect;
        _descriptorSense = newDescriptorSense;
        _softwareWriteProtect = newWriteProtect;
        if (changed) PostUnitAttentionToOthers(task.Nexus, Asc.ModeParametersChanged);
    }
}
