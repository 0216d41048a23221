// Pure CDB / LUN / sense encoding tests, and the relations between the SCSI limits.
using Target.Protocol.Iscsi;
using Target.Protocol.Scsi;

namespace Target.Tests.Scsi;

public sealed class ScsiParserTests
{
    [Theory]
    [InlineData(new byte[] { 0x08, 0x1F, 0xFF, 0xFE, 0x00, 0x00 }, 0x1FFFFEul, 256u)]                          // READ(6): 0 blocks means 256
    [InlineData(new byte[] { 0x0A, 0x00, 0x00, 0x10, 0x08, 0x00 }, 0x10ul, 8u)]
    [InlineData(new byte[] { 0x28, 0, 0x12, 0x34, 0x56, 0x78, 0, 0x01, 0x02, 0 }, 0x12345678ul, 0x0102u)]
    [InlineData(new byte[] { 0xA8, 0, 0, 0, 0, 0x09, 0x00, 0x01, 0x00, 0x00, 0, 0 }, 9ul, 0x10000u)]
    [InlineData(new byte[] { 0x88, 0, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0, 0, 0x10, 0, 0, 0 }, 0x0102030405060708ul, 0x1000u)]
    public void Lba_and_length_decode_for_every_cdb_size(byte[] cdb, ulong lba, uint blocks)
    {
        Assert.True(ScsiCdb.TryDecodeLbaLength(cdb, out ulong decodedLba, out uint decodedBlocks));
        Assert.Equal(lba, decodedLba);
        Assert.Equal(blocks, decodedBlocks);
    }

    [Fact]
    public void Cdb_lengths_follow_the_group_code()
    {
        Assert.Equal(6, ScsiCdb.LengthOf(ScsiOpcode.Inquiry));
        Assert.Equal(10, ScsiCdb.LengthOf(ScsiOpcode.Read10));
        Assert.Equal(10, ScsiCdb.LengthOf(ScsiOpcode.PersistentReserveOut));
        Assert.Equal(16, ScsiCdb.LengthOf(ScsiOpcode.Write16));
        Assert.Equal(12, ScsiCdb.LengthOf(ScsiOpcode.ReportLuns));
        Assert.Equal(0, ScsiCdb.LengthOf(0x7F));
        Assert.False(ScsiCdb.TryDecodeLbaLength(new byte[] { 0x28, 0, 0 }, out _, out _));
    }

    [Fact]
    public void Range_check_never_overflows()
    {
        Assert.True(ScsiCdb.InRange(0, 100, 100));
        Assert.True(ScsiCdb.InRange(100, 0, 100));
        Assert.False(ScsiCdb.InRange(101, 0, 100));
        Assert.False(ScsiCdb.InRange(99, 2, 100));
        Assert.False(ScsiCdb.InRange(ulong.MaxValue, 2, 100));
        Assert.False(ScsiCdb.InRange(2, ulong.MaxValue, 100));
    }

    [Theory]
    [InlineData(new byte[] { 0, 0, 0, 0, 0, 0, 0, 0 }, 0ul)]
    [InlineData(new byte[] { 0, 5, 0, 0, 0, 0, 0, 0 }, 5ul)]
    [InlineData(new byte[] { 0x41, 0x02, 0, 0, 0, 0, 0, 0 }, 0x102ul)]
    [InlineData(new byte[] { 0, 0, 0, 1, 0, 0, 0, 0 }, ulong.MaxValue)]        // second level: not ours
    [InlineData(new byte[] { 0x01, 0, 0, 0, 0, 0, 0, 0 }, ulong.MaxValue)]     // bus 1
    [InlineData(new byte[] { 0xC1, 0, 0, 0, 0, 0, 0, 0 }, ulong.MaxValue)]     // extended addressing
    public void Lun_fields_decode(byte[] field, ulong lun)
    {
        Assert.Equal(lun, ScsiCdb.DecodeLun(field));
        if (lun != ulong.MaxValue)
        {
            byte[] encoded = new byte[8];
            ScsiCdb.EncodeLun(encoded, lun);
            Assert.Equal(field, encoded);
        }
    }

    [Fact]
    public void Fixed_sense_carries_key_asc_information_and_field_pointer()
    {
        byte[] sense = new byte[32];
        int length = ScsiSense.WriteFixed(sense, new ScsiSenseInfo(SenseKey.IllegalRequest, Asc.InvalidFieldInCdb) { FieldPointer = 7, BitPointer = 3 });
        Assert.Equal(18, length);
        Assert.Equal(0x70, sense[0]);
        Assert.Equal(0x05, sense[2]);
        Assert.Equal(10, sense[7]);
        Assert.Equal(0x24, sense[12]);
        Assert.Equal(0x00, sense[13]);
        Assert.Equal(0x80 | 0x40 | 0x08 | 3, sense[15]);
        Assert.Equal(7, sense[17]);

        length = ScsiSense.WriteFixed(sense, new ScsiSenseInfo(SenseKey.Miscompare, Asc.MiscompareDuringVerify) { Information = 0x1234, HasInformation = true });
        Assert.Equal(0xF0, sense[0]);
        Assert.Equal(new byte[] { 0, 0, 0x12, 0x34 }, sense[3..7]);
        Assert.True(ScsiSense.TryParse(sense.AsSpan(0, length), out SenseKey key, out ushort asc));
        Assert.Equal(SenseKey.Miscompare, key);
        Assert.Equal(Asc.MiscompareDuringVerify, asc);
    }

    [Fact]
    public void Descriptor_sense_carries_the_information_descriptor()
    {
        byte[] sense = new byte[64];
        int length = ScsiSense.WriteDescriptor(sense, new ScsiSenseInfo(SenseKey.DataProtect, Asc.SpaceAllocationFailedWriteProtect) { Information = 9, HasInformation = true });
        Assert.Equal(20, length);
        Assert.Equal(0x72, sense[0]);
        Assert.Equal(0x07, sense[1]);
        Assert.Equal(0x27, sense[2]);
        Assert.Equal(0x07, sense[3]);
        Assert.Equal(12, sense[7]);
        Assert.Equal(0x00, sense[8]);
        Assert.Equal(0x0A, sense[9]);
        Assert.Equal(0x80, sense[10]);
        Assert.Equal(9, sense[19]);
    }

    [Fact]
    public void Limits_are_consistent()
    {
        Assert.True(ScsiLimits.MaxTransferBytes % ScsiLimits.PhysicalBlockBytes == 0);
        Assert.True(ScsiLimits.OptimalTransferBytes <= ScsiLimits.MaxTransferBytes);
        Assert.True(ScsiLimits.MaxCompareAndWriteBlocks <= 255);
        Assert.True(ScsiLimits.MaxTransferBytes <= IscsiLimits.MaxTransferBytes);
        Assert.True(2L * ScsiLimits.MaxCompareAndWriteBlocks * 4096 <= IscsiLimits.MaxTransferBytes);
        Assert.True(ScsiLimits.WriteSamePieceBytes % 4096 == 0);
        Assert.True(ScsiLimits.MaxParameterListBytes <= IscsiLimits.MaxTransferBytes);
    }
}
