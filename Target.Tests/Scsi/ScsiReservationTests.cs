// Persistent reservations, RESERVE/RELEASE, the MAINTENANCE IN reports, EXTENDED COPY and the
// write-family data-out rules of the logical unit, without a transport: CDB bytes in, status /
// sense / data-in checked field by field. Two nexuses stand for two initiator ports.
using System.Buffers.Binary;
using Microsoft.Extensions.Logging.Abstractions;
using Target.Protocol.Scsi;
using Target.Tests.Interop;

namespace Target.Tests.Scsi;

public sealed class ScsiReservationTests
{
    private static byte[] PrOut(byte action, byte type, ulong key, ulong serviceKey, bool aptpl, out byte[] parameters)
    {
        parameters = new byte[24];
        BinaryPrimitives.WriteUInt64BigEndian(parameters, key);
        BinaryPrimitives.WriteUInt64BigEndian(parameters.AsSpan(8), serviceKey);
        if (aptpl) parameters[20] = 0x01;
        byte[] cdb = new byte[10];
        cdb[0] = ScsiOpcode.PersistentReserveOut;
        cdb[1] = action;
        cdb[2] = type;
        BinaryPrimitives.WriteUInt32BigEndian(cdb.AsSpan(5), 24);
        return cdb;
    }

    private static TestScsiTask RunPrOut(ScsiFixture f, ScsiItNexus nexus, byte action, byte type = 0, ulong key = 0, ulong serviceKey = 0)
    {
        byte[] cdb = PrOut(action, type, key, serviceKey, aptpl: false, out byte[] parameters);
        return f.Run(cdb, parameters, nexus: nexus);
    }

    private static byte[] PrIn(byte action, ushort allocation = 1024) =>
        [ScsiOpcode.PersistentReserveIn, action, 0, 0, 0, 0, 0, (byte)(allocation >> 8), (byte)allocation, 0];

    private static ScsiItNexus Second(ScsiFixture f)
    {
        ScsiItNexus nexus = ScsiFixture.NewNexus(2);
        f.Unit.Attach(nexus);
        return nexus;
    }

    [Fact]
    public void Write_exclusive_lets_others_read_but_not_write()
    {
        var f = new ScsiFixture();
        ScsiItNexus other = Second(f);
        ScsiFixture.AssertGood(RunPrOut(f, f.Nexus, ScsiPrAction.Register, serviceKey: 0xAA));
        ScsiFixture.AssertGood(RunPrOut(f, f.Nexus, ScsiPrAction.Reserve, ScsiPrType.WriteExclusive, key: 0xAA));

        ScsiFixture.AssertGood(f.Run(Cdb.Read10(0, 1), nexus: other));
        Assert.Equal(ScsiStatus.ReservationConflict, f.Run(Cdb.Write10(0, 1), new byte[512], nexus: other).Status);
        ScsiFixture.AssertGood(f.Run(Cdb.Write10(0, 1), new byte[512]));
        ScsiFixture.AssertGood(f.Run(Cdb.Inquiry(), nexus: other));

        TestScsiTask reservation = f.Run(PrIn(ScsiPrAction.ReadReservation));
        ScsiFixture.AssertGood(reservation);
        Assert.Equal(16u, BinaryPrimitives.ReadUInt32BigEndian(reservation.Data.Slice(4)));
        Assert.Equal(0xAAul, BinaryPrimitives.ReadUInt64BigEndian(reservation.Data.Slice(8)));
        Assert.Equal(ScsiPrType.WriteExclusive, reservation.Data[21]);
    }

    [Fact]
    public void Exclusive_access_stops_reads_of_unregistered_initiators_and_registrants_only_lets_registrants_in()
    {
        var f = new ScsiFixture();
        ScsiItNexus other = Second(f);
        ScsiFixture.AssertGood(RunPrOut(f, f.Nexus, ScsiPrAction.Register, serviceKey: 1));
        ScsiFixture.AssertGood(RunPrOut(f, f.Nexus, ScsiPrAction.Reserve, ScsiPrType.ExclusiveAccessRegistrantsOnly, key: 1));
        Assert.Equal(ScsiStatus.ReservationConflict, f.Run(Cdb.Read10(0, 1), nexus: other).Status);
        ScsiFixture.AssertGood(f.Run(Cdb.TestUnitReady(), nexus: other));

        ScsiFixture.AssertGood(RunPrOut(f, other, ScsiPrAction.Register, serviceKey: 2));
        ScsiFixture.AssertGood(f.Run(Cdb.Read10(0, 1), nexus: other));
        ScsiFixture.AssertGood(f.Run(Cdb.Write10(0, 1), new byte[512], nexus: other));
    }

    [Fact]
    public void Keys_must_match_and_release_needs_the_reserved_type()
    {
        var f = new ScsiFixture();
        ScsiFixture.AssertGood(RunPrOut(f, f.Nexus, ScsiPrAction.Register, serviceKey: 7));
        Assert.Equal(ScsiStatus.ReservationConflict, RunPrOut(f, f.Nexus, ScsiPrAction.Register, key: 8, serviceKey: 9).Status);
        Assert.Equal(ScsiStatus.ReservationConflict, RunPrOut(f, f.Nexus, ScsiPrAction.Reserve, ScsiPrType.WriteExclusive, key: 8).Status);
        ScsiFixture.AssertGood(RunPrOut(f, f.Nexus, ScsiPrAction.Reserve, ScsiPrType.WriteExclusive, key: 7));
        ScsiFixture.AssertCheck(RunPrOut(f, f.Nexus, ScsiPrAction.Release, ScsiPrType.ExclusiveAccess, key: 7),
            SenseKey.IllegalRequest, Asc.InvalidReleaseOfPersistentReservation);
        ScsiFixture.AssertGood(RunPrOut(f, f.Nexus, ScsiPrAction.Release, ScsiPrType.WriteExclusive, key: 7));
        Assert.Equal(8u, BinaryPrimitives.ReadUInt32BigEndian(f.Run(PrIn(ScsiPrAction.ReadReservation)).Data.Slice(4)) + 8);
    }

    [Fact]
    public void Preempt_removes_the_holder_takes_the_reservation_and_tells_the_preempted()
    {
        var f = new ScsiFixture();
        ScsiItNexus other = Second(f);
        ScsiFixture.AssertGood(RunPrOut(f, f.Nexus, ScsiPrAction.Register, serviceKey: 0x11));
        ScsiFixture.AssertGood(RunPrOut(f, other, ScsiPrAction.Register, serviceKey: 0x22));
        ScsiFixture.AssertGood(RunPrOut(f, f.Nexus, ScsiPrAction.Reserve, ScsiPrType.ExclusiveAccess, key: 0x11));
        ScsiFixture.AssertGood(RunPrOut(f, other, ScsiPrAction.Preempt, ScsiPrType.WriteExclusive, key: 0x22, serviceKey: 0x11));

        TestScsiTask keys = f.Run(PrIn(ScsiPrAction.ReadKeys), nexus: other);
        ScsiFixture.AssertGood(keys);
        Assert.Equal(8u, BinaryPrimitives.ReadUInt32BigEndian(keys.Data.Slice(4)));
        Assert.Equal(0x22ul, BinaryPrimitives.ReadUInt64BigEndian(keys.Data.Slice(8)));
        ScsiFixture.AssertCheck(f.Run(Cdb.TestUnitReady()), SenseKey.UnitAttention, Asc.RegistrationsPreempted);
        Assert.Equal(ScsiStatus.ReservationConflict, f.Run(Cdb.Write10(0, 1), new byte[512]).Status);
    }

    [Fact]
    public void Clear_removes_everything_and_bumps_the_generation()
    {
        var f = new ScsiFixture();
        ScsiFixture.AssertGood(RunPrOut(f, f.Nexus, ScsiPrAction.Register, serviceKey: 5));
        uint before = BinaryPrimitives.ReadUInt32BigEndian(f.Run(PrIn(ScsiPrAction.ReadKeys)).Data);
        ScsiFixture.AssertGood(RunPrOut(f, f.Nexus, ScsiPrAction.Clear, key: 5));
        TestScsiTask keys = f.Run(PrIn(ScsiPrAction.ReadKeys));
        Assert.Equal(before + 1, BinaryPrimitives.ReadUInt32BigEndian(keys.Data));
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32BigEndian(keys.Data.Slice(4)));
    }

    [Fact]
    public void Registrations_and_the_reservation_survive_a_new_logical_unit_on_the_same_state_directory()
    {
        using var temp = new TempDirectory();
        var volume = new Target.Tests.Support.MemoryVolume("disk", 16 << 20);
        var unit = new ScsiLogicalUnit(volume, ScsiFixture.TargetName, false, NullLogger.Instance, temp.Path);
        var f = new ScsiFixture(volume: volume, unit: unit);
        ScsiFixture.AssertGood(RunPrOut(f, f.Nexus, ScsiPrAction.Register, serviceKey: 0xBEEF));
        ScsiFixture.AssertGood(RunPrOut(f, f.Nexus, ScsiPrAction.Reserve, ScsiPrType.WriteExclusive, key: 0xBEEF));
        Assert.Single(Directory.GetFiles(temp.Path, "scsi-pr-*.json"));

        var restarted = new ScsiFixture(volume: volume, unit: new ScsiLogicalUnit(volume, ScsiFixture.TargetName, false, NullLogger.Instance, temp.Path));
        TestScsiTask reservation = restarted.Run(PrIn(ScsiPrAction.ReadReservation));
        ScsiFixture.AssertGood(reservation);
        Assert.Equal(0xBEEFul, BinaryPrimitives.ReadUInt64BigEndian(reservation.Data.Slice(8)));
        ScsiItNexus stranger = ScsiFixture.NewNexus(9);
        restarted.Unit.Attach(stranger);
        Assert.Equal(ScsiStatus.ReservationConflict, restarted.Run(Cdb.Write10(0, 1), new byte[512], nexus: stranger).Status);
    }

    /// <summary>PRgeneration and the registered keys, sorted, in hex ("11,22").</summary>
    private static (uint Generation, string Keys) ReadKeys(ScsiFixture f, ScsiItNexus nexus)
    {
        TestScsiTask task = f.Run(PrIn(ScsiPrAction.ReadKeys), nexus: nexus);
        ScsiFixture.AssertGood(task);
        int count = (int)BinaryPrimitives.ReadUInt32BigEndian(task.Data.Slice(4)) / 8;
        var keys = new ulong[count];
        for (int i = 0; i < count; i++) keys[i] = BinaryPrimitives.ReadUInt64BigEndian(task.Data.Slice(8 + 8 * i));
        Array.Sort(keys);
        return (BinaryPrimitives.ReadUInt32BigEndian(task.Data), string.Join(",", keys.Select(k => k.ToString("x"))));
    }

    /// <summary>(key, type) of the reservation, or (0, 0) when there is none.</summary>
    private static (ulong Key, byte Type) ReadReservation(ScsiFixture f, ScsiItNexus nexus)
    {
        TestScsiTask task = f.Run(PrIn(ScsiPrAction.ReadReservation), nexus: nexus);
        ScsiFixture.AssertGood(task);
        if (BinaryPrimitives.ReadUInt32BigEndian(task.Data.Slice(4)) == 0) return (0, 0);
        return (BinaryPrimitives.ReadUInt64BigEndian(task.Data.Slice(8)), task.Data[21]);
    }

    [Fact]
    public void The_holder_preempting_its_own_key_changes_the_type_and_stays_registered()
    {
        // SPC-4 5.9.11.4.3: the registrations of the preempted key go, "except the I_T nexus that
        // is being used for the PERSISTENT RESERVE OUT command"; the holder preempting itself is
        // how a reservation changes type without a gap.
        var f = new ScsiFixture();
        ScsiItNexus other = Second(f);
        ScsiFixture.AssertGood(RunPrOut(f, f.Nexus, ScsiPrAction.Register, serviceKey: 0x11));
        ScsiFixture.AssertGood(RunPrOut(f, other, ScsiPrAction.Register, serviceKey: 0x22));
        ScsiFixture.AssertGood(RunPrOut(f, f.Nexus, ScsiPrAction.Reserve, ScsiPrType.WriteExclusive, key: 0x11));
        uint before = ReadKeys(f, f.Nexus).Generation;

        ScsiFixture.AssertGood(RunPrOut(f, f.Nexus, ScsiPrAction.Preempt, ScsiPrType.ExclusiveAccess, key: 0x11, serviceKey: 0x11));

        (uint generation, string keys) = ReadKeys(f, f.Nexus);
        Assert.Equal(before + 1, generation);
        Assert.Equal("11,22", keys);
        Assert.Equal((0x11ul, ScsiPrType.ExclusiveAccess), ReadReservation(f, f.Nexus));
        ScsiFixture.AssertGood(f.Run(Cdb.Write10(0, 1), new byte[512]));
        ScsiFixture.AssertGood(f.Run(Cdb.TestUnitReady()));   // the preempter gets no attention
        // The other registrant keeps its registration; the type changed under it (RESERVATIONS RELEASED).
        ScsiFixture.AssertCheck(f.Run(Cdb.TestUnitReady(), nexus: other), SenseKey.UnitAttention, Asc.ReservationsReleased);
        Assert.Equal(ScsiStatus.ReservationConflict, f.Run(Cdb.Read10(0, 1), nexus: other).Status);
        // Still registered: it may release with its key.
        ScsiFixture.AssertGood(RunPrOut(f, f.Nexus, ScsiPrAction.Release, ScsiPrType.ExclusiveAccess, key: 0x11));
        Assert.Equal((0ul, (byte)0), ReadReservation(f, f.Nexus));
    }

    [Fact]
    public void Preempting_a_key_it_shares_removes_the_others_with_it_but_not_the_preempter()
    {
        var f = new ScsiFixture();
        ScsiItNexus twin = Second(f);
        ScsiItNexus third = ScsiFixture.NewNexus(3);
        f.Unit.Attach(third);
        ScsiFixture.AssertGood(RunPrOut(f, f.Nexus, ScsiPrAction.Register, serviceKey: 0x33));
        ScsiFixture.AssertGood(RunPrOut(f, twin, ScsiPrAction.Register, serviceKey: 0x33));
        ScsiFixture.AssertGood(RunPrOut(f, third, ScsiPrAction.Register, serviceKey: 0x44));

        // No reservation: PREEMPT only removes registrations.
        ScsiFixture.AssertGood(RunPrOut(f, f.Nexus, ScsiPrAction.Preempt, ScsiPrType.WriteExclusive, key: 0x33, serviceKey: 0x33));
        Assert.Equal("33,44", ReadKeys(f, f.Nexus).Keys);
        ScsiFixture.AssertCheck(f.Run(Cdb.TestUnitReady(), nexus: twin), SenseKey.UnitAttention, Asc.RegistrationsPreempted);
        ScsiFixture.AssertGood(f.Run(Cdb.TestUnitReady(), nexus: third));
        ScsiFixture.AssertGood(f.Run(Cdb.TestUnitReady()));

        // Now nobody else holds 0x33: preempting it would remove nothing, which is a conflict (and changes nothing).
        uint generation = ReadKeys(f, f.Nexus).Generation;
        Assert.Equal(ScsiStatus.ReservationConflict,
            RunPrOut(f, f.Nexus, ScsiPrAction.Preempt, ScsiPrType.WriteExclusive, key: 0x33, serviceKey: 0x33).Status);
        Assert.Equal((generation, "33,44"), ReadKeys(f, f.Nexus));
    }

    [Fact]
    public void A_failed_save_fails_the_command_and_leaves_memory_as_on_disk()
    {
        using var temp = new TempDirectory();
        var volume = new Target.Tests.Support.MemoryVolume("disk", 16 << 20);
        var f = new ScsiFixture(volume: volume, unit: new ScsiLogicalUnit(volume, ScsiFixture.TargetName, false, NullLogger.Instance, temp.Path));
        ScsiItNexus other = Second(f);
        ScsiFixture.AssertGood(RunPrOut(f, f.Nexus, ScsiPrAction.Register, serviceKey: 0xA1));
        ScsiFixture.AssertGood(RunPrOut(f, other, ScsiPrAction.Register, serviceKey: 0xB2));
        ScsiFixture.AssertGood(RunPrOut(f, f.Nexus, ScsiPrAction.Reserve, ScsiPrType.WriteExclusiveRegistrantsOnly, key: 0xA1));
        string file = Assert.Single(Directory.GetFiles(temp.Path, "scsi-pr-*.json"));
        byte[] onDisk = File.ReadAllBytes(file);
        var saved = ReadKeys(f, f.Nexus);

        // A directory where the temp file goes: the save fails (even for root) before the rename.
        Directory.CreateDirectory(file + ".tmp");
        byte[][] failing =
        [
            PrOut(ScsiPrAction.Preempt, ScsiPrType.ExclusiveAccess, 0xB2, 0xA1, aptpl: false, out byte[] preempt),
            PrOut(ScsiPrAction.Clear, 0, 0xB2, 0, aptpl: false, out byte[] clear),
            PrOut(ScsiPrAction.Register, 0, 0xB2, 0, aptpl: false, out byte[] unregister),
            PrOut(ScsiPrAction.RegisterAndIgnoreExistingKey, 0, 0, 0xC3, aptpl: true, out byte[] reregister),
        ];
        byte[][] parameters = [preempt, clear, unregister, reregister];
        for (int i = 0; i < failing.Length; i++)
            ScsiFixture.AssertCheck(f.Run(failing[i], parameters[i], nexus: other), SenseKey.HardwareError, Asc.InternalTargetFailure);
        ScsiFixture.AssertCheck(RunPrOut(f, f.Nexus, ScsiPrAction.Release, ScsiPrType.WriteExclusiveRegistrantsOnly, key: 0xA1),
            SenseKey.HardwareError, Asc.InternalTargetFailure);

        // Memory is what the disk says: same generation, keys and holder; no attention was posted.
        Assert.Equal(onDisk, File.ReadAllBytes(file));
        Assert.Equal(saved, ReadKeys(f, f.Nexus));
        Assert.Equal((0xA1ul, ScsiPrType.WriteExclusiveRegistrantsOnly), ReadReservation(f, f.Nexus));
        ScsiFixture.AssertGood(f.Run(Cdb.TestUnitReady()));
        ScsiFixture.AssertGood(f.Run(Cdb.TestUnitReady(), nexus: other));
        ScsiFixture.AssertGood(f.Run(Cdb.Write10(0, 1), new byte[512]));
        var restarted = new ScsiFixture(volume: volume, unit: new ScsiLogicalUnit(volume, ScsiFixture.TargetName, false, NullLogger.Instance, temp.Path));
        Assert.Equal(saved, ReadKeys(restarted, restarted.Nexus));

        // Once the file can be written again the same command succeeds.
        Directory.Delete(file + ".tmp");
        ScsiFixture.AssertGood(f.Run(failing[0], parameters[0], nexus: other));
        Assert.Equal((0xB2ul, ScsiPrType.ExclusiveAccess), ReadReservation(f, other));
        Assert.Equal(saved.Generation + 1, ReadKeys(f, other).Generation);
        ScsiFixture.AssertCheck(f.Run(Cdb.TestUnitReady()), SenseKey.UnitAttention, Asc.RegistrationsPreempted);
    }

    [Fact]
    public void Reserve6_conflicts_for_others_and_goes_away_with_its_nexus()
    {
        var f = new ScsiFixture();
        ScsiItNexus other = Second(f);
        byte[] reserve = [ScsiOpcode.Reserve6, 0, 0, 0, 0, 0];
        byte[] release = [ScsiOpcode.Release6, 0, 0, 0, 0, 0];
        ScsiFixture.AssertGood(f.Run(reserve));
        ScsiFixture.AssertGood(f.Run(reserve));
        Assert.Equal(ScsiStatus.ReservationConflict, f.Run(reserve, nexus: other).Status);
        Assert.Equal(ScsiStatus.ReservationConflict, f.Run(Cdb.ModeSense6(0x3F), nexus: other).Status);
        ScsiFixture.AssertGood(f.Run(release, nexus: other));           // a no-op for a non-holder
        ScsiFixture.AssertGood(f.Run(Cdb.Inquiry(), nexus: other));
        f.Unit.Detach(f.Nexus);                                        // I_T nexus loss releases it
        ScsiFixture.AssertGood(f.Run(reserve, nexus: other));
        ScsiFixture.AssertGood(f.Run(release, nexus: other));

        ScsiFixture.AssertGood(RunPrOut(f, other, ScsiPrAction.Register, serviceKey: 3));
        Assert.Equal(ScsiStatus.ReservationConflict, f.Run(reserve, nexus: other).Status);   // CRH=0
    }

    [Fact]
    public void Report_supported_operation_codes_lists_every_command_and_answers_for_one()
    {
        var f = new ScsiFixture();
        byte[] all = [ScsiOpcode.MaintenanceIn, ScsiServiceAction.ReportSupportedOperationCodes, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0];
        TestScsiTask list = f.Run(all);
        ScsiFixture.AssertGood(list);
        int length = (int)BinaryPrimitives.ReadUInt32BigEndian(list.Data);
        Assert.Equal(0, length % 8);
        var opcodes = new HashSet<byte>();
        for (int at = 4; at < 4 + length; at += 8) opcodes.Add(list.Data[at]);
        foreach (byte opcode in new[] { ScsiOpcode.Read10, ScsiOpcode.Write16, ScsiOpcode.PersistentReserveOut, ScsiOpcode.ExtendedCopy, ScsiOpcode.Reserve6 })
            Assert.Contains(opcode, opcodes);

        byte[] one = [ScsiOpcode.MaintenanceIn, ScsiServiceAction.ReportSupportedOperationCodes, 0x01, ScsiOpcode.Write10, 0, 0, 0, 0, 0, 0xFF, 0, 0];
        TestScsiTask write10 = f.Run(one);
        ScsiFixture.AssertGood(write10);
        Assert.Equal(0x03, write10.Data[1] & 0x07);                    // supported
        Assert.Equal(10, BinaryPrimitives.ReadUInt16BigEndian(write10.Data.Slice(2)));
        Assert.Equal(ScsiOpcode.Write10, write10.Data[4]);

        byte[] withActions = [ScsiOpcode.MaintenanceIn, ScsiServiceAction.ReportSupportedOperationCodes, 0x01, ScsiOpcode.PersistentReserveIn, 0, 0, 0, 0, 0, 0xFF, 0, 0];
        ScsiFixture.AssertCheck(f.Run(withActions), SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);
    }

    [Fact]
    public void Task_management_functions_and_target_port_groups_are_reported()
    {
        var f = new ScsiFixture();
        TestScsiTask tmf = f.Run([ScsiOpcode.MaintenanceIn, ScsiServiceAction.ReportSupportedTaskManagementFunctions, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0]);
        ScsiFixture.AssertGood(tmf);
        Assert.Equal(0x80, tmf.Data[0] & 0x80);                       // ABORT TASK
        Assert.Equal(0x08, tmf.Data[0] & 0x08);                       // LOGICAL UNIT RESET
        Assert.Equal(0x04, tmf.Data[0] & 0x04);                       // QUERY TASK
        Assert.Equal(0x07, tmf.Data[1] & 0x07);                       // QUERY ASYNCHRONOUS EVENT, QUERY TASK SET, I_T NEXUS RESET

        TestScsiTask groups = f.Run([ScsiOpcode.MaintenanceIn, ScsiServiceAction.ReportTargetPortGroups, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        ScsiFixture.AssertGood(groups);
        Assert.Equal(12u, BinaryPrimitives.ReadUInt32BigEndian(groups.Data));
        Assert.Equal(0, groups.Data[4] & 0x0F);                       // active/optimized
        Assert.Equal(ScsiLogicalUnit.TargetPortGroupId, BinaryPrimitives.ReadUInt16BigEndian(groups.Data.Slice(6)));
    }

    [Fact]
    public void Extended_copy_copies_blocks_and_receive_copy_results_reports_it()
    {
        var f = new ScsiFixture();
        byte[] data = new byte[8 * 512];
        new Random(83).NextBytes(data);
        ScsiFixture.AssertGood(f.Run(Cdb.Write10(0, 8), data));

        byte[] list = new byte[16 + 32 + 28];
        list[0] = 7;                                                   // list identifier
        BinaryPrimitives.WriteUInt16BigEndian(list.AsSpan(2), 32);
        BinaryPrimitives.WriteUInt32BigEndian(list.AsSpan(8), 28);
        Span<byte> cscd = list.AsSpan(16, 32);
        cscd[0] = 0xE4;
        cscd[4] = 0x01;
        cscd[5] = 0x03;                                                // NAA
        cscd[7] = 16;
        f.Unit.WriteNaaDesignator(cscd.Slice(8, 16));
        cscd[30] = 0x02;                                               // block length 512
        Span<byte> segment = list.AsSpan(48, 28);
        segment[0] = 0x02;
        BinaryPrimitives.WriteUInt16BigEndian(segment.Slice(2), 24);
        BinaryPrimitives.WriteUInt16BigEndian(segment.Slice(10), 8);
        BinaryPrimitives.WriteUInt64BigEndian(segment.Slice(12), 0);
        BinaryPrimitives.WriteUInt64BigEndian(segment.Slice(20), 1000);
        byte[] xcopy = new byte[16];
        xcopy[0] = ScsiOpcode.ExtendedCopy;
        BinaryPrimitives.WriteUInt32BigEndian(xcopy.AsSpan(10), (uint)list.Length);
        ScsiFixture.AssertGood(f.Run(xcopy, list));

        TestScsiTask read = f.Run(Cdb.Read10(1000, 8));
        ScsiFixture.AssertGood(read);
        Assert.True(read.Data.SequenceEqual(data));

        byte[] status = new byte[16];
        status[0] = ScsiOpcode.ReceiveCopyResults;
        status[1] = ScsiServiceAction.CopyStatus;
        status[2] = 7;
        status[13] = 255;
        TestScsiTask result = f.Run(status);
        ScsiFixture.AssertGood(result);
        Assert.Equal(0x01, result.Data[4]);                            // completed
        Assert.Equal(1, BinaryPrimitives.ReadUInt16BigEndian(result.Data.Slice(5)));
        Assert.Equal(4096u, BinaryPrimitives.ReadUInt32BigEndian(result.Data.Slice(8)));

        segment[0] = 0x0A;                                             // an unsupported segment type
        ScsiFixture.AssertCheck(f.Run(xcopy, list), SenseKey.IllegalRequest, Asc.UnsupportedSegmentDescriptorType);
    }

    [Fact]
    public void A_write_with_less_data_out_than_its_cdb_writes_the_whole_blocks_received_and_reports_the_shortfall()
    {
        var f = new ScsiFixture();
        byte[] old = Enumerable.Repeat((byte)'a', 1024).ToArray();
        ScsiFixture.AssertGood(f.Run(Cdb.Write10(0, 2), old));
        TestScsiTask task = f.Run(Cdb.Write10(0, 2), Enumerable.Repeat((byte)'b', 512).ToArray());
        ScsiFixture.AssertGood(task);
        Assert.Equal(1024, task.CommandDataOutBytes);
        TestScsiTask read = f.Run(Cdb.Read10(0, 2));
        Assert.True(read.Data.Slice(0, 512).IndexOfAnyExcept((byte)'b') < 0);
        Assert.True(read.Data.Slice(512, 512).IndexOfAnyExcept((byte)'a') < 0);
    }

    [Fact]
    public void Compare_and_write_and_write_same_need_exactly_their_data_out()
    {
        var f = new ScsiFixture();
        ScsiFixture.AssertCheck(f.Run(Cdb.CompareAndWrite(0, 1), new byte[4 * 512]), SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);
        ScsiFixture.AssertCheck(f.Run(Cdb.CompareAndWrite(0, 0), new byte[2 * 512]), SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);
        ScsiFixture.AssertCheck(f.Run(Cdb.WriteSame16(0, 1), new byte[1024]), SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);
        ScsiFixture.AssertGood(f.Run(Cdb.WriteSame16(0, 1), new byte[512]));
    }
}
