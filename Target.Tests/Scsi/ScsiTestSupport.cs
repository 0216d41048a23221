// Runs CDBs against a ScsiLogicalUnit over a MemoryVolume, with no transport: the tests build
// CDB bytes by hand and check the status, sense and data-in field by field.
using System.Buffers.Binary;
using Microsoft.Extensions.Logging.Abstractions;
using Target.Protocol.Scsi;
using Target.Tests.Support;

namespace Target.Tests.Scsi;

public sealed class TestScsiTask : ScsiTask
{
    public ReadOnlySpan<byte> Data => DataIn is null ? default : DataIn.AsSpan(0, DataInLength);

    public SenseKey SenseKey => ScsiSense.TryParse(Sense.AsSpan(0, SenseLength), out SenseKey key, out _) ? key : SenseKey.NoSense;

    public ushort AscAscq => ScsiSense.TryParse(Sense.AsSpan(0, SenseLength), out _, out ushort asc) ? asc : (ushort)0;
}

public sealed class ScsiFixture
{
    public const string TargetName = "iqn.2026-11.io.target:disk";

    public ScsiFixture(long sizeBytes = 16 << 20, int blockBytes = 512, bool readOnly = false, MemoryVolume? volume = null, ScsiLogicalUnit? unit = null)
    {
        Volume = volume ?? new MemoryVolume("disk", sizeBytes, logicalBlockSize: blockBytes);
        Unit = unit ?? new ScsiLogicalUnit(Volume, TargetName, readOnly, NullLogger.Instance);
        Nexus = NewNexus(1);
        Unit.Attach(Nexus);
    }

    public MemoryVolume Volume { get; }

    public ScsiLogicalUnit Unit { get; }

    public ScsiItNexus Nexus { get; }

    public static ScsiItNexus NewNexus(byte isidLast) =>
        new("iqn.2026-11.test:initiator", [0x80, 0, 0, 0, 0, isidLast], TargetName, 1);

    public TestScsiTask Run(byte[] cdb, byte[]? dataOut = null, int expected = 64 * 1024, ScsiItNexus? nexus = null, ulong lun = 0)
    {
        var task = new TestScsiTask();
        cdb.CopyTo(task.CdbBuffer, 0);
        task.CdbLength = Math.Max(cdb.Length, 16);
        task.Nexus = nexus ?? Nexus;
        task.Lun = lun;
        task.ExpectedDataTransferLength = dataOut?.Length ?? expected;
        task.ReadExpected = dataOut is null;
        task.WriteExpected = dataOut is not null;
        task.DataOut = dataOut;
        task.DataOutLength = dataOut?.Length ?? 0;
        ValueTask run = Unit.ExecuteAsync(task, CancellationToken.None);
        Assert.True(run.AsTask().Wait(TimeSpan.FromSeconds(30)), "the command did not end within 30 s");
        return task;
    }

    public static void AssertGood(TestScsiTask task)
        => Assert.True(task.Status == ScsiStatus.Good, $"status {task.Status}, sense key {task.SenseKey}, ASC/ASCQ 0x{task.AscAscq:x4}");

    public static void AssertCheck(TestScsiTask task, SenseKey key, ushort ascAscq)
    {
        Assert.Equal(ScsiStatus.CheckCondition, task.Status);
        Assert.Equal(key, task.SenseKey);
        Assert.Equal($"0x{ascAscq:x4}", $"0x{task.AscAscq:x4}");
        Assert.Equal(0, task.DataInLength);
    }
}

/// <summary>CDB builders (big-endian fields as SBC-3 / SPC-4 lay them out).</summary>
public static class Cdb
{
    public static byte[] Inquiry(bool evpd = false, byte page = 0, ushort allocation = 255)
    {
        byte[] cdb = new byte[6];
        cdb[0] = ScsiOpcode.Inquiry;
        cdb[1] = (byte)(evpd ? 1 : 0);
        cdb[2] = page;
        BinaryPrimitives.WriteUInt16BigEndian(cdb.AsSpan(3), allocation);
        return cdb;
    }

    public static byte[] TestUnitReady() => new byte[6];

    public static byte[] ReadCapacity10() => [ScsiOpcode.ReadCapacity10, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    public static byte[] ReadCapacity16(uint allocation = 32)
    {
        byte[] cdb = new byte[16];
        cdb[0] = ScsiOpcode.ServiceActionIn16;
        cdb[1] = ScsiServiceAction.ReadCapacity16;
        BinaryPrimitives.WriteUInt32BigEndian(cdb.AsSpan(10), allocation);
        return cdb;
    }

    public static byte[] GetLbaStatus(ulong lba, uint allocation = 1024)
    {
        byte[] cdb = new byte[16];
        cdb[0] = ScsiOpcode.ServiceActionIn16;
        cdb[1] = ScsiServiceAction.GetLbaStatus;
        BinaryPrimitives.WriteUInt64BigEndian(cdb.AsSpan(2), lba);
        BinaryPrimitives.WriteUInt32BigEndian(cdb.AsSpan(10), allocation);
        return cdb;
    }

    public static byte[] Read10(uint lba, ushort blocks, byte flags = 0) => Rw10(ScsiOpcode.Read10, lba, blocks, flags);

    public static byte[] Write10(uint lba, ushort blocks, byte flags = 0) => Rw10(ScsiOpcode.Write10, lba, blocks, flags);

    public static byte[] Rw10(byte opcode, uint lba, ushort blocks, byte flags = 0)
    {
        byte[] cdb = new byte[10];
        cdb[0] = opcode;
        cdb[1] = flags;
        BinaryPrimitives.WriteUInt32BigEndian(cdb.AsSpan(2), lba);
        BinaryPrimitives.WriteUInt16BigEndian(cdb.AsSpan(7), blocks);
        return cdb;
    }

    public static byte[] Rw16(byte opcode, ulong lba, uint blocks, byte flags = 0)
    {
        byte[] cdb = new byte[16];
        cdb[0] = opcode;
        cdb[1] = flags;
        BinaryPrimitives.WriteUInt64BigEndian(cdb.AsSpan(2), lba);
        BinaryPrimitives.WriteUInt32BigEndian(cdb.AsSpan(10), blocks);
        return cdb;
    }

    public static byte[] Rw6(byte opcode, uint lba, byte blocks) =>
        [opcode, (byte)((lba >> 16) & 0x1F), (byte)(lba >> 8), (byte)lba, blocks, 0];

    public static byte[] Rw12(byte opcode, uint lba, uint blocks)
    {
        byte[] cdb = new byte[12];
        cdb[0] = opcode;
        BinaryPrimitives.WriteUInt32BigEndian(cdb.AsSpan(2), lba);
        BinaryPrimitives.WriteUInt32BigEndian(cdb.AsSpan(6), blocks);
        return cdb;
    }

    public static byte[] ReportLuns(byte select = 0, uint allocation = 1024)
    {
        byte[] cdb = new byte[12];
        cdb[0] = ScsiOpcode.ReportLuns;
        cdb[2] = select;
        BinaryPrimitives.WriteUInt32BigEndian(cdb.AsSpan(6), allocation);
        return cdb;
    }

    public static byte[] ModeSense6(byte page, byte pageControl = 0, bool disableBlockDescriptors = false, byte allocation = 255) =>
        [ScsiOpcode.ModeSense6, (byte)(disableBlockDescriptors ? 0x08 : 0), (byte)(pageControl << 6 | page), 0, allocation, 0];

    public static byte[] ModeSense10(byte page, bool longLba = false, ushort allocation = 1024)
    {
        byte[] cdb = new byte[10];
        cdb[0] = ScsiOpcode.ModeSense10;
        cdb[1] = (byte)(longLba ? 0x10 : 0);
        cdb[2] = page;
        BinaryPrimitives.WriteUInt16BigEndian(cdb.AsSpan(7), allocation);
        return cdb;
    }

    public static byte[] Unmap(ushort parameterLength, bool anchor = false)
    {
        byte[] cdb = new byte[10];
        cdb[0] = ScsiOpcode.Unmap;
        cdb[1] = (byte)(anchor ? 1 : 0);
        BinaryPrimitives.WriteUInt16BigEndian(cdb.AsSpan(7), parameterLength);
        return cdb;
    }

    public static byte[] UnmapList(params (ulong Lba, uint Blocks)[] ranges)
    {
        byte[] list = new byte[8 + 16 * ranges.Length];
        BinaryPrimitives.WriteUInt16BigEndian(list, (ushort)(list.Length - 2));
        BinaryPrimitives.WriteUInt16BigEndian(list.AsSpan(2), (ushort)(16 * ranges.Length));
        for (int i = 0; i < ranges.Length; i++)
        {
            BinaryPrimitives.WriteUInt64BigEndian(list.AsSpan(8 + 16 * i), ranges[i].Lba);
            BinaryPrimitives.WriteUInt32BigEndian(list.AsSpan(16 + 16 * i), ranges[i].Blocks);
        }
        return list;
    }

    public static byte[] WriteSame16(ulong lba, uint blocks, bool unmap = false, bool anchor = false, bool noDataOut = false)
        => Rw16(ScsiOpcode.WriteSame16, lba, blocks, (byte)((unmap ? 0x08 : 0) | (anchor ? 0x10 : 0) | (noDataOut ? 0x01 : 0)));

    public static byte[] SynchronizeCache10() => new byte[] { ScsiOpcode.SynchronizeCache10, 0, 0, 0, 0, 0, 0, 0, 0, 0 };

    public static byte[] CompareAndWrite(ulong lba, byte blocks)
    {
        byte[] cdb = new byte[16];
        cdb[0] = ScsiOpcode.CompareAndWrite;
        BinaryPrimitives.WriteUInt64BigEndian(cdb.AsSpan(2), lba);
        cdb[13] = blocks;
        return cdb;
    }

    public static byte[] RequestSense(bool descriptor = false, byte allocation = 252) =>
        [ScsiOpcode.RequestSense, (byte)(descriptor ? 1 : 0), 0, 0, allocation, 0];
}
