// Sense data (SPC-4 4.5): fixed format (response code 70h) by default, descriptor format (72h)
// when the control mode page's D_SENSE bit is set. Pure writers into a caller's span.
using System.Buffers.Binary;

namespace Target.Protocol.Scsi;

/// <summary>One sense condition: key, ASC/ASCQ and the optional information and sense-key-specific fields.</summary>
public readonly record struct ScsiSenseInfo(SenseKey Key, ushort AscAscq)
{
    /// <summary>INFORMATION field (e.g. the offset of the first miscompare); valid when <see cref="HasInformation"/>.</summary>
    public ulong Information { get; init; }

    public bool HasInformation { get; init; }

    /// <summary>Field pointer for ILLEGAL REQUEST (byte of the CDB or parameter list in error); -1 when absent.</summary>
    public int FieldPointer { get; init; } = -1;

    /// <summary>True when the field pointer refers to the CDB, false for the parameter list.</summary>
    public bool FieldInCdb { get; init; } = true;

    /// <summary>Bit pointer within the byte named by the field pointer; -1 when absent.</summary>
    public int BitPointer { get; init; } = -1;

    public byte Asc => (byte)(AscAscq >> 8);

    public byte Ascq => (byte)AscAscq;
}

public static class ScsiSense
{
    public const int FixedBytes = 18;
    public const int DescriptorBytesMax = 8 + 12 + 8;

    /// <summary>Writes sense data; returns its length. <paramref name="destination"/> must hold at least 32 bytes.</summary>
    public static int Write(Span<byte> destination, in ScsiSenseInfo sense, bool descriptorFormat)
        => descriptorFormat ? WriteDescriptor(destination, sense) : WriteFixed(destination, sense);

    public static int WriteFixed(Span<byte> destination, in ScsiSenseInfo sense)
    {
        Span<byte> s = destination.Slice(0, FixedBytes);
        s.Clear();
        s[0] = 0x70;
        if (sense.HasInformation && sense.Information <= uint.MaxValue)
        {
            s[0] |= 0x80;
            BinaryPrimitives.WriteUInt32BigEndian(s.Slice(3), (uint)sense.Information);
        }
        s[2] = (byte)sense.Key;
        s[7] = FixedBytes - 8;
        s[12] = sense.Asc;
        s[13] = sense.Ascq;
        if (sense.FieldPointer >= 0)
        {
            s[15] = 0x80;
            if (sense.FieldInCdb) s[15] |= 0x40;
            if (sense.BitPointer >= 0) s[15] |= (byte)(0x08 | (sense.BitPointer & 7));
            BinaryPrimitives.WriteUInt16BigEndian(s.Slice(16), (ushort)sense.FieldPointer);
        }
        return FixedBytes;
    }

    public static int WriteDescriptor(Span<byte> destination, in ScsiSenseInfo sense)
    {
        destination.Slice(0, 8).Clear();
        destination[0] = 0x72;
        destination[1] = (byte)sense.Key;
        destination[2] = sense.Asc;
        destination[3] = sense.Ascq;
        int used = 8;
        if (sense.HasInformation)
        {
            Span<byte> d = destination.Slice(used, 12);
            d.Clear();
            d[0] = 0x00;       // information descriptor
            d[1] = 0x0A;
            d[2] = 0x80;       // VALID
            BinaryPrimitives.WriteUInt64BigEndian(d.Slice(4), sense.Information);
            used += 12;
        }
        if (sense.FieldPointer >= 0)
        {
            Span<byte> d = destination.Slice(used, 8);
            d.Clear();
            d[0] = 0x02;       // sense key specific descriptor
            d[1] = 0x06;
            d[4] = 0x80;
            if (sense.FieldInCdb) d[4] |= 0x40;
            if (sense.BitPointer >= 0) d[4] |= (byte)(0x08 | (sense.BitPointer & 7));
            BinaryPrimitives.WriteUInt16BigEndian(d.Slice(5), (ushort)sense.FieldPointer);
            used += 8;
        }
        destination[7] = (byte)(used - 8);
        return used;
    }

    /// <summary>Reads key and ASC/ASCQ back from fixed or descriptor sense (tests, REQUEST SENSE conversions).</summary>
    public static bool TryParse(ReadOnlySpan<byte> sense, out SenseKey key, out ushort ascAscq)
    {
        key = SenseKey.NoSense;
        ascAscq = 0;
        if (sense.Length < 4) return false;
        int code = sense[0] & 0x7F;
        if (code is 0x70 or 0x71)
        {
            if (sense.Length < 14) return false;
            key = (SenseKey)(sense[2] & 0x0F);
            ascAscq = (ushort)(sense[12] << 8 | sense[13]);
            return true;
        }
        if (code is 0x72 or 0x73)
        {
            key = (SenseKey)(sense[1] & 0x0F);
            ascAscq = (ushort)(sense[2] << 8 | sense[3]);
            return true;
        }
        return false;
    }
}
