// SBC-3 / SPC-4 command handling of the logical unit, without a transport: CDB bytes in,
// status / sense / data-in checked field by field.
using System.Buffers.Binary;
using System.Text;
using Target.Dedup;
using Target.Protocol.Scsi;
using Target.Tests.Support;

namespace Target.Tests.Scsi;

public sealed class ScsiCommandTests
{
    private static byte[] Pattern(int length, int seed)
    {
        byte[] data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    [Fact]
    public void Standard_inquiry_reports_a_direct_access_spc4_device_with_alua()
    {
        var f = new ScsiFixture();
        TestScsiTask task = f.Run(Cdb.Inquiry());
        ScsiFixture.AssertGood(task);
        ReadOnlySpan<byte> d = task.Data;
        Assert.Equal(96, d.Length);
        Assert.Equal(0x00, d[0]);                 // qualifier 0, type 0
        Assert.Equal(0x00, d[1]);                 // not removable
        Assert.Equal(0x06, d[2]);                 // SPC-4
        Assert.Equal(0x12, d[3]);                 // HISUP, format 2
        Assert.Equal(91, d[4]);
        Assert.Equal(0x10, d[5] & 0x30);          // TPGS implicit
        Assert.Equal(0x02, d[7] & 0x02);          // CMDQUE
        Assert.Equal("TARGET  ", Encoding.ASCII.GetString(d.Slice(8, 8)));
        Assert.Equal("DEDUP VOLUME    ", Encoding.ASCII.GetString(d.Slice(16, 16)));
        Assert.Equal(ScsiVersionDescriptor.Sbc3, BinaryPrimitives.ReadUInt16BigEndian(d.Slice(64)));
    }

    [Fact]
    public void Inquiry_honours_the_allocation_length()
    {
        var f = new ScsiFixture();
        TestScsiTask task = f.Run(Cdb.Inquiry(allocation: 36));
        ScsiFixture.AssertGood(task);
        Assert.Equal(36, task.DataInLength);
        Assert.Equal(91, task.Data[4]);           // the additional length still describes the whole data
    }

    [Fact]
    public void Inquiry_with_a_page_code_but_no_evpd_is_an_invalid_field()
    {
        var f = new ScsiFixture();
        ScsiFixture.AssertCheck(f.Run(Cdb.Inquiry(page: 0x80)), SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);
        ScsiFixture.AssertCheck(f.Run(Cdb.Inquiry(evpd: true, page: 0x42)), SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);
    }

    [Fact]
    public void Vpd_pages_list_serial_identification_and_block_limits()
    {
        var f = new ScsiFixture();
        TestScsiTask supported = f.Run(Cdb.Inquiry(evpd: true, page: 0x00));
        ScsiFixture.AssertGood(supported);
        Assert.Equal(new byte[] { 0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2 }, supported.Data.Slice(4).ToArray());

        TestScsiTask serial = f.Run(Cdb.Inquiry(evpd: true, page: 0x80));
        Assert.Equal(f.Volume.Uuid.ToString("N"), Encoding.ASCII.GetString(serial.Data.Slice(4)));

        TestScsiTask ids = f.Run(Cdb.Inquiry(evpd: true, page: 0x83));
        ScsiFixture.AssertGood(ids);
        ReadOnlySpan<byte> d = ids.Data;
        Assert.Equal(0x83, d[1]);
        Assert.Equal(d.Length - 4, BinaryPrimitives.ReadUInt16BigEndian(d.Slice(2)));
        // First designator: NAA, 16 bytes, NAA type 6.
        Assert.Equal(0x01, d[4]);
        Assert.Equal(0x03, d[5]);
        Assert.Equal(16, d[7]);
        Assert.Equal(0x6, d[8] >> 4);
        // Walk the designators: relative target port 1, target port group 1, and the port's name.
        bool relativePort = false, portGroup = false, portName = false;
        for (int at = 4; at < d.Length; at += 4 + d[at + 3])
        {
            int type = d[at + 1] & 0x0F;
            int association = (d[at + 1] >> 4) & 3;
            ReadOnlySpan<byte> value = d.Slice(at + 4, d[at + 3]);
            if (type == 4 && association == 1) relativePort = BinaryPrimitives.ReadUInt16BigEndian(value.Slice(2)) == 1;
            if (type == 5 && association == 1) portGroup = BinaryPrimitives.ReadUInt16BigEndian(value.Slice(2)) == 1;
            if (type == 8 && association == 1) portName = Encoding.UTF8.GetString(value).TrimEnd('\0') == ScsiFixture.TargetName + ",t,0x0001";
        }
        Assert.True(relativePort && portGroup && portName);

        TestScsiTask limits = f.Run(Cdb.Inquiry(evpd: true, page: 0xB0));
        ScsiFixture.AssertGood(limits);
        Assert.Equal(0x3C, BinaryPrimitives.ReadUInt16BigEndian(limits.Data.Slice(2)));
        Assert.Equal(1, limits.Data[4] & 1);     // WSNZ
        Assert.Equal((uint)(ScsiLimits.MaxTransferBytes / 512), BinaryPrimitives.ReadUInt32BigEndian(limits.Data.Slice(8)));
        Assert.Equal(8u, BinaryPrimitives.ReadUInt32BigEndian(limits.Data.Slice(28)));   // optimal unmap granularity: one 4 KiB chunk

        TestScsiTask provisioning = f.Run(Cdb.Inquiry(evpd: true, page: 0xB2));
        Assert.Equal(0xE4, provisioning.Data[5] & 0xE4);   // LBPU, LBPWS, LBPWS10, LBPRZ
        Assert.Equal(2, provisioning.Data[6] & 7);         // thin
    }

    [Theory]
    [InlineData(512, 3)]
    [InlineData(4096, 0)]
    public void Read_capacity_reports_size_block_length_and_thin_provisioning(int blockBytes, int exponent)
    {
        var f = new ScsiFixture(sizeBytes: 64 << 20, blockBytes: blockBytes);
        long blocks = (64L << 20) / blockBytes;
        TestScsiTask sixteen = f.Run(Cdb.ReadCapacity16());
        ScsiFixture.AssertGood(sixteen);
        Assert.Equal((ulong)(blocks - 1), BinaryPrimitives.ReadUInt64BigEndian(sixteen.Data));
        Assert.Equal((uint)blockBytes, BinaryPrimitives.ReadUInt32BigEndian(sixteen.Data.Slice(8)));
        Assert.Equal(exponent, sixteen.Data[13] & 0x0F);
        Assert.Equal(0xC0, sixteen.Data[14] & 0xC0);       // LBPME, LBPRZ

        TestScsiTask ten = f.Run(Cdb.ReadCapacity10());
        Assert.Equal((uint)(blocks - 1), BinaryPrimitives.ReadUInt32BigEndian(ten.Data));
        Assert.Equal((uint)blockBytes, BinaryPrimitives.ReadUInt32BigEndian(ten.Data.Slice(4)));
    }

    [Theory]
    [InlineData(ScsiOpcode.Write6, ScsiOpcode.Read6)]
    [InlineData(ScsiOpcode.Write10, ScsiOpcode.Read10)]
    [InlineData(ScsiOpcode.Write12, ScsiOpcode.Read12)]
    [InlineData(ScsiOpcode.Write16, ScsiOpcode.Read16)]
    public void Written_blocks_read_back_through_every_cdb_size(byte write, byte read)
    {
        var f = new ScsiFixture();
        byte[] data = Pattern(8 * 512, write);
        byte[] Cdb6Or(byte opcode) => opcode switch
        {
            ScsiOpcode.Write6 or ScsiOpcode.Read6 => Cdb.Rw6(opcode, 100, 8),
            ScsiOpcode.Write12 or ScsiOpcode.Read12 => Cdb.Rw12(opcode, 100, 8),
            ScsiOpcode.Write16 or ScsiOpcode.Read16 => Cdb.Rw16(opcode, 100, 8),
            _ => Cdb.Rw10(opcode, 100, 8),
        };
        ScsiFixture.AssertGood(f.Run(Cdb6Or(write), data));
        TestScsiTask back = f.Run(Cdb6Or(read));
        ScsiFixture.AssertGood(back);
        Assert.Equal(data, back.Data.ToArray());
        Assert.Equal(data, f.Volume.Snapshot(100 * 512, data.Length));
    }

    [Fact]
    public void Fua_write_reaches_the_volume_as_fua()
    {
        var f = new ScsiFixture();
        ScsiFixture.AssertGood(f.Run(Cdb.Write10(0, 1, flags: 0x08), new byte[512]));
        Assert.Equal(1, f.Volume.FuaWriteCount);
    }

    [Fact]
    public void Out_of_range_and_protection_fields_are_refused()
    {
        var f = new ScsiFixture(sizeBytes: 1 << 20);
        uint blocks = (1u << 20) / 512;
        ScsiFixture.AssertCheck(f.Run(Cdb.Read10(blocks - 1, 2)), SenseKey.IllegalRequest, Asc.LbaOutOfRange);
        ScsiFixture.AssertCheck(f.Run(Cdb.Read10(blocks + 1, 0)), SenseKey.IllegalRequest, Asc.LbaOutOfRange);
        ScsiFixture.AssertGood(f.Run(Cdb.Read10(0, 0)));
        ScsiFixture.AssertCheck(f.Run(Cdb.Rw16(ScsiOpcode.Read16, ulong.MaxValue, 1)), SenseKey.IllegalRequest, Asc.LbaOutOfRange);
        ScsiFixture.AssertCheck(f.Run(Cdb.Read10(0, 1, flags: 0x20)), SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);   // RDPROTECT
        ScsiFixture.AssertCheck(f.Run(Cdb.Write10(blocks, 1), new byte[512]), SenseKey.IllegalRequest, Asc.LbaOutOfRange);
    }

    [Fact]
    public void Writes_to_a_read_only_unit_are_write_protected()
    {
        var f = new ScsiFixture(readOnly: true);
        ScsiFixture.AssertCheck(f.Run(Cdb.Write10(0, 1), new byte[512]), SenseKey.DataProtect, Asc.WriteProtected);
        ScsiFixture.AssertGood(f.Run(Cdb.Read10(0, 1)));
        TestScsiTask modeSense = f.Run(Cdb.ModeSense6(0x08));
        Assert.Equal(0x80, modeSense.Data[2] & 0x80);   // WP
    }

    [Fact]
    public void A_full_pool_fails_writes_with_space_allocation_failed_and_keeps_reads()
    {
        var f = new ScsiFixture();
        f.Volume.FailWritesWithNoSpace = true;
        ScsiFixture.AssertCheck(f.Run(Cdb.Write10(0, 1), new byte[512]), SenseKey.DataProtect, Asc.SpaceAllocationFailedWriteProtect);
        ScsiFixture.AssertGood(f.Run(Cdb.Read10(0, 1)));
    }

    [Fact]
    public void Media_errors_become_medium_error_sense()
    {
        var f = new ScsiFixture();
        f.Volume.FaultInjector = (operation, _) => operation == "read" ? new MediaErrorException("crc mismatch") : null;
        ScsiFixture.AssertCheck(f.Run(Cdb.Read10(0, 1)), SenseKey.MediumError, Asc.UnrecoveredReadError);
    }

    [Fact]
    public void An_io_that_completes_later_ends_the_command_with_its_data_or_its_error_as_sense()
    {
        // READ and WRITE await a late I/O through the task's reusable completion (ScsiExecution),
        // not an async method: its failure must still become sense, never a faulted execution.
        var f = new ScsiFixture();
        f.Volume.Latency = (_, _) => TimeSpan.FromMilliseconds(5);
        byte[] block = Enumerable.Range(0, 512).Select(i => (byte)i).ToArray();
        ScsiFixture.AssertGood(f.Run(Cdb.Write10(3, 1), block));
        TestScsiTask read = f.Run(Cdb.Read10(3, 1));
        ScsiFixture.AssertGood(read);
        Assert.Equal(block, read.Data.ToArray());

        f.Volume.FaultInjector = (operation, _) => operation == "read" ? new MediaErrorException("crc mismatch") : null;
        ScsiFixture.AssertCheck(f.Run(Cdb.Read10(3, 1)), SenseKey.MediumError, Asc.UnrecoveredReadError);
        f.Volume.FailWritesWithNoSpace = true;
        ScsiFixture.AssertCheck(f.Run(Cdb.Write10(3, 1), block), SenseKey.DataProtect, Asc.SpaceAllocationFailedWriteProtect);
    }

    [Fact]
    public void Unknown_opcode_is_an_invalid_command_operation_code()
    {
        var f = new ScsiFixture();
        ScsiFixture.AssertCheck(f.Run([0xC7, 0, 0, 0, 0, 0]), SenseKey.IllegalRequest, Asc.InvalidCommandOperationCode);
    }

    [Fact]
    public void Report_luns_lists_lun_zero_and_other_luns_do_not_exist()
    {
        var f = new ScsiFixture();
        TestScsiTask luns = f.Run(Cdb.ReportLuns());
        ScsiFixture.AssertGood(luns);
        Assert.Equal(16, luns.DataInLength);
        Assert.Equal(8u, BinaryPrimitives.ReadUInt32BigEndian(luns.Data));
        Assert.Equal(0ul, BinaryPrimitives.ReadUInt64BigEndian(luns.Data.Slice(8)));

        TestScsiTask inquiry = f.Run(Cdb.Inquiry(), lun: 1);
        ScsiFixture.AssertGood(inquiry);
        Assert.Equal(0x7F, inquiry.Data[0]);
        ScsiFixture.AssertCheck(f.Run(Cdb.TestUnitReady(), lun: 1), SenseKey.IllegalRequest, Asc.LogicalUnitNotSupported);
    }

    [Fact]
    public void Caching_page_wce_follows_the_volumes_volatile_cache()
    {
        var cached = new ScsiFixture();
        TestScsiTask page = cached.Run(Cdb.ModeSense6(0x08, disableBlockDescriptors: true));
        ScsiFixture.AssertGood(page);
        Assert.Equal(0, page.Data[3]);                   // no block descriptor
        Assert.Equal(0x08, page.Data[4]);
        Assert.Equal(0x12, page.Data[5]);
        Assert.Equal(0x04, page.Data[6] & 0x04);         // WCE
        Assert.Equal(page.DataInLength - 1, page.Data[0]);

        var writeThrough = new ScsiFixture(volume: new MemoryVolume("wt", 1 << 20, VolumeCapabilities.Trim | VolumeCapabilities.WriteZeroes));
        TestScsiTask wtPage = writeThrough.Run(Cdb.ModeSense6(0x08, disableBlockDescriptors: true));
        Assert.Equal(0, wtPage.Data[6] & 0x04);
    }

    [Fact]
    public void Mode_sense_all_pages_with_long_lba_block_descriptor()
    {
        var f = new ScsiFixture();
        TestScsiTask all = f.Run(Cdb.ModeSense10(0x3F, longLba: true));
        ScsiFixture.AssertGood(all);
        ReadOnlySpan<byte> d = all.Data;
        Assert.Equal(d.Length - 2, BinaryPrimitives.ReadUInt16BigEndian(d));
        Assert.Equal(0x10, d[3] & 0x10);                                       // DPOFUA
        Assert.Equal(1, d[4] & 1);                                             // LONGLBA
        Assert.Equal(16, BinaryPrimitives.ReadUInt16BigEndian(d.Slice(6)));
        Assert.Equal((ulong)f.Unit.BlockCount, BinaryPrimitives.ReadUInt64BigEndian(d.Slice(8)));
        var pages = new List<int>();
        for (int at = 24; at < d.Length; at += 2 + d[at + 1]) pages.Add(d[at] & 0x3F);
        Assert.Equal(new[] { 0x01, 0x08, 0x0A, 0x1C }, pages);
        ScsiFixture.AssertCheck(f.Run(Cdb.ModeSense6(0x08, pageControl: 3)), SenseKey.IllegalRequest, Asc.SavingParametersNotSupported);
    }

    [Fact]
    public void Unmap_deallocates_and_get_lba_status_reports_it()
    {
        var f = new ScsiFixture();
        ScsiFixture.AssertGood(f.Run(Cdb.Write10(0, 64), Pattern(64 * 512, 1)));
        byte[] list = Cdb.UnmapList((8, 16));
        ScsiFixture.AssertGood(f.Run(Cdb.Unmap((ushort)list.Length), list));
        Assert.Equal(1, f.Volume.TrimCount);

        TestScsiTask status = f.Run(Cdb.GetLbaStatus(0));
        ScsiFixture.AssertGood(status);
        ReadOnlySpan<byte> d = status.Data;
        Assert.Equal(d.Length - 4, (int)BinaryPrimitives.ReadUInt32BigEndian(d));
        Assert.Equal(0ul, BinaryPrimitives.ReadUInt64BigEndian(d.Slice(8)));
        Assert.Equal(8u, BinaryPrimitives.ReadUInt32BigEndian(d.Slice(16)));
        Assert.Equal(0, d[20]);                                            // mapped
        Assert.Equal(8ul, BinaryPrimitives.ReadUInt64BigEndian(d.Slice(24)));
        Assert.Equal(16u, BinaryPrimitives.ReadUInt32BigEndian(d.Slice(32)));
        Assert.Equal(1, d[36]);                                            // deallocated

        Assert.Equal(new byte[16 * 512], f.Run(Cdb.Read10(8, 16)).Data.ToArray());
        ScsiFixture.AssertCheck(f.Run(Cdb.GetLbaStatus((ulong)f.Unit.BlockCount)), SenseKey.IllegalRequest, Asc.LbaOutOfRange);
        byte[] beyond = Cdb.UnmapList(((ulong)f.Unit.BlockCount - 1, 2));
        ScsiFixture.AssertCheck(f.Run(Cdb.Unmap((ushort)beyond.Length), beyond), SenseKey.IllegalRequest, Asc.LbaOutOfRange);
    }

    [Fact]
    public void Write_same_zeroes_unmaps_or_writes_the_pattern()
    {
        var f = new ScsiFixture();
        byte[] pattern = Pattern(512, 7);
        ScsiFixture.AssertGood(f.Run(Cdb.WriteSame16(16, 24), pattern));
        byte[] back = f.Run(Cdb.Read10(16, 24)).Data.ToArray();
        for (int i = 0; i < 24; i++) Assert.Equal(pattern, back.AsSpan(i * 512, 512).ToArray());

        ScsiFixture.AssertGood(f.Run(Cdb.WriteSame16(16, 24, unmap: true), new byte[512]));
        Assert.Equal(1, f.Volume.TrimCount);
        Assert.Equal(new byte[24 * 512], f.Run(Cdb.Read10(16, 24)).Data.ToArray());

        ScsiFixture.AssertCheck(f.Run(Cdb.WriteSame16(0, 0), new byte[512]), SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);   // WSNZ
        ScsiFixture.AssertCheck(f.Run(Cdb.WriteSame16(0, 8, anchor: true), new byte[512]), SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);
    }

    [Fact]
    public void Synchronize_cache_flushes_the_volume()
    {
        var f = new ScsiFixture();
        ScsiFixture.AssertGood(f.Run(Cdb.SynchronizeCache10()));
        Assert.Equal(1, f.Volume.FlushCount);
    }

    [Fact]
    public void Compare_and_write_writes_on_match_and_reports_the_miscompare_offset()
    {
        var f = new ScsiFixture();
        byte[] original = Pattern(1024, 3);
        ScsiFixture.AssertGood(f.Run(Cdb.Write10(10, 2), original));
        byte[] replacement = Pattern(1024, 4);
        ScsiFixture.AssertGood(f.Run(Cdb.CompareAndWrite(10, 2), [.. original, .. replacement]));
        Assert.Equal(replacement, f.Volume.Snapshot(10 * 512, 1024));

        byte[] wrong = (byte[])replacement.Clone();
        wrong[700] ^= 0xFF;
        TestScsiTask miscompare = f.Run(Cdb.CompareAndWrite(10, 2), [.. wrong, .. original]);
        ScsiFixture.AssertCheck(miscompare, SenseKey.Miscompare, Asc.MiscompareDuringVerify);
        Assert.Equal(0x80, miscompare.Sense[0] & 0x80);                                   // VALID
        Assert.Equal(700u, BinaryPrimitives.ReadUInt32BigEndian(miscompare.Sense.AsSpan(3)));
        Assert.Equal(replacement, f.Volume.Snapshot(10 * 512, 1024));                     // unchanged
    }

    [Fact]
    public void Request_sense_returns_a_pending_unit_attention_once()
    {
        var f = new ScsiFixture();
        f.Nexus.PostUnitAttention(Asc.PowerOnResetOrBusDeviceReset);
        TestScsiTask sense = f.Run(Cdb.RequestSense());
        ScsiFixture.AssertGood(sense);
        Assert.Equal(0x70, sense.Data[0]);
        Assert.Equal((byte)SenseKey.UnitAttention, sense.Data[2]);
        Assert.Equal(0x29, sense.Data[12]);
        TestScsiTask again = f.Run(Cdb.RequestSense(descriptor: true));
        Assert.Equal(0x72, again.Data[0]);
        Assert.Equal((byte)SenseKey.NoSense, again.Data[1]);
    }

    [Fact]
    public void Unit_attention_is_reported_before_other_commands_but_not_inquiry()
    {
        var f = new ScsiFixture();
        f.Nexus.PostUnitAttention(Asc.ModeParametersChanged);
        ScsiFixture.AssertGood(f.Run(Cdb.Inquiry()));
        ScsiFixture.AssertCheck(f.Run(Cdb.TestUnitReady()), SenseKey.UnitAttention, Asc.ModeParametersChanged);
        ScsiFixture.AssertGood(f.Run(Cdb.TestUnitReady()));
    }
}
