// Pure CDB decoding helpers (SPC-4 4.2, SBC-3 5.x): lengths by opcode group and the LBA /
// transfer-length fields of the READ, WRITE and VERIFY families. Never touch a volume.
using System.Buffers.Binary;

namespace Target.Protocol.Scsi;

public static class ScsiCdb
{
    /// <summary>CDB length implied by the opcode's group code; 0 for reserved or vendor groups.</summary>
    public static int LengthOf(byte opcode) => (opcode >> 5) switch
    {
        0 => 6,
        1 or 2 => 10,
        4 => 16,
        5 => 12,
        _ => 0,
    };

    /// <summary>
    /// Decodes the LBA and transfer length (in blocks) of a 6/10/12/16-byte READ, WRITE, VERIFY,
    /// WRITE AND VERIFY, PRE-FETCH, SYNCHRONIZE CACHE, WRITE SAME or ORWRITE CDB. READ(6)/WRITE(6) with a
    /// length of 0 mean 256 blocks.
    /// </summary>
    public static bool TryDecodeLbaLength(ReadOnlySpan<byte> cdb, out ulong lba, out uint blocks)
    {
        lba = 0;
        blocks = 0;
        if (cdb.Length < 6) return false;
        byte opcode = cdb[0];
        switch (LengthOf(opcode))
        {
            case 6:
                lba = (ulong)((cdb[1] & 0x1F) << 16 | cdb[2] << 8 | cdb[3]);
                blocks = cdb[4];
                if (blocks == 0 && opcode is ScsiOpcode.Read6 or ScsiOpcode.Write6) blocks = 256;
                return true;
            case 10:
                if (cdb.Length < 10) return false;
                lba = BinaryPrimitives.ReadUInt32BigEndian(cdb.Slice(2));
                blocks = BinaryPrimitives.ReadUInt16BigEndian(cdb.Slice(7));
                return true;
            case 12:
                if (cdb.Length < 12) return false;
                lba = BinaryPrimitives.ReadUInt32BigEndian(cdb.Slice(2));
                blocks = BinaryPrimitives.ReadUInt32BigEndian(cdb.Slice(6));
                return true;
            case 16:
                if (cdb.Length < 16) return false;
                lba = BinaryPrimitives.ReadUInt64BigEndian(cdb.Slice(2));
                blocks = BinaryPrimitives.ReadUInt32BigEndian(cdb.Slice(10));
                return true;
            default:
                return false;
        }
    }

    /// <summary>Byte offset of the transfer-length field (for sense field pointers).</summary>
    public static int LengthFieldOffset(byte opcode) => LengthOf(opcode) switch
    {
        6 => 4,
        10 => 7,
        12 => 6,
        16 => 10,
        _ => 0,
    };

    /// <summary>True when [lba, lba + blocks) lies within a unit of <paramref name="capacityBlocks"/> blocks.</summary>
    public static bool InRange(ulong lba, ulong blocks, long capacityBlocks)
    {
        ulong capacity = (ulong)capacityBlocks;
        return lba <= capacity && blocks <= capacity - lba;
    }

    /// <summary>Decodes an 8-byte iSCSI/SAM LUN field (peripheral or flat addressing) into a LUN number.</summary>
    public static ulong DecodeLun(ReadOnlySpan<byte> lun)
    {
        // Only single-level LUNs: the second to fourth levels must be zero.
        if (BinaryPrimitives.ReadUInt16BigEndian(lun.Slice(2)) != 0 || BinaryPrimitives.ReadUInt32BigEndian(lun.Slice(4)) != 0)
            return ulong.MaxValue;
        return (lun[0] >> 6) switch
        {
            0 => lun[0] == 0 ? lun[1] : ulong.MaxValue,             // peripheral device addressing, bus 0 only
            1 => (ulong)((lun[0] & 0x3F) << 8 | lun[1]),            // flat space addressing
            _ => ulong.MaxValue,                                    // logical unit / extended addressing: not ours
        };
    }

    /// <summary>Encodes a LUN number below 16384 (peripheral addressing below 256, flat space above).</summary>
    public static void EncodeLun(Span<byte> destination, ulong lun)
    {
        destination.Slice(0, 8).Clear();
        if (lun < 256)
        {
            destination[1] = (byte)lun;
        }
        else
        {
            destination[0] = (byte)(0x40 | ((lun >> 8) & 0x3F));
            destination[1] = (byte)lun;
        }
    }
}
