// PERSISTENT RESERVE OUT PREEMPT AND ABORT on the logical unit alone: the transport's task sets are
// stood in for by RecordingTaskSet, which records what the unit asked to abort and lets the test
// decide when the aborted tasks end.
//
// Invariants checked (SPC-4 5.9.11.5, SAM-5 5.6):
// - the task set of every preempted I_T nexus is aborted, the PREEMPT AND ABORT command itself
//   excepted; nexuses that were not preempted keep their tasks; PREEMPT alone aborts nothing;
// - the command answers only after the aborted tasks have ended, and not GOOD when the transport
//   says they were still running at its bound;
// - a preempted initiator learns REGISTRATIONS PREEMPTED, then COMMANDS CLEARED BY ANOTHER
//   INITIATOR when it lost tasks.
using System.Buffers.Binary;
using Target.Protocol.Scsi;

namespace Target.Tests.Scsi;

public sealed class ScsiPreemptAndAbortTests
{
    private sealed class RecordingTaskSet(int abortedTasks) : IScsiTaskSet
    {
        public readonly List<ScsiTask?> Calls = new();
        public readonly TaskCompletionSource<bool> Ended = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public ScsiTaskSetAbort AbortTaskSet(ScsiTask? except)
        {
            lock (Calls) Calls.Add(except);
            return new ScsiTaskSetAbort(abortedTasks, Ended.Task);
        }
    }

    private static byte[] PrOut(byte action, byte type, ulong key, ulong serviceKey, out byte[] parameters)
    {
        parameters = new byte[24];
        BinaryPrimitives.WriteUInt64BigEndian(parameters, key);
        BinaryPrimitives.WriteUInt64BigEndian(parameters.AsSpan(8), serviceKey);
        byte[] cdb = new byte[10];
        cdb[0] = ScsiOpcode.PersistentReserveOut;
        cdb[1] = action;
        cdb[2] = type;
        BinaryPrimitives.WriteUInt32BigEndian(cdb.AsSpan(5), 24);
        return cdb;
    }

    private static TestScsiTask NewTask(ScsiFixture f, byte[] cdb, byte[] dataOut, ScsiItNexus nexus)
    {
        var task = new TestScsiTask();
        cdb.CopyTo(task.CdbBuffer, 0);
        task.CdbLength = 16;
        task.Nexus = nexus;
        task.ExpectedDataTransferLength = dataOut.Length;
        task.WriteExpected = true;
        task.DataOut = dataOut;
        task.DataOutLength = dataOut.Length;
        _ = f;
        return task;
    }

    private static void Register(ScsiFixture f, ScsiItNexus nexus, ulong key)
    {
        byte[] cdb = PrOut(ScsiPrAction.Register, 0, 0, key, out byte[] parameters);
        ScsiFixture.AssertGood(f.Run(cdb, parameters, nexus: nexus));
    }

    private static (ScsiFixture F, ScsiItNexus Holder, ScsiItNexus Victim, ScsiItNexus Bystander, RecordingTaskSet HolderSet, RecordingTaskSet VictimSet, RecordingTaskSet BystanderSet)
        Setup(int victimTasks)
    {
        var f = new ScsiFixture();
        var holderSet = new RecordingTaskSet(0);
        var victimSet = new RecordingTaskSet(victimTasks);
        var bystanderSet = new RecordingTaskSet(0);
        f.Nexus.TaskSet = holderSet;
        ScsiItNexus victim = ScsiFixture.NewNexus(2);
        victim.TaskSet = victimSet;
        ScsiItNexus bystander = ScsiFixture.NewNexus(3);
        bystander.TaskSet = bystanderSet;
        f.Unit.Attach(victim);
        f.Unit.Attach(bystander);
        Register(f, f.Nexus, 0xAA);
        Register(f, victim, 0xBB);
        Register(f, bystander, 0xCC);
        byte[] reserve = PrOut(ScsiPrAction.Reserve, ScsiPrType.WriteExclusiveRegistrantsOnly, 0xBB, 0, out byte[] parameters);
        ScsiFixture.AssertGood(f.Run(reserve, parameters, nexus: victim));
        return (f, f.Nexus, victim, bystander, holderSet, victimSet, bystanderSet);
    }

    [Fact]
    public async Task Preempt_and_abort_aborts_the_preempted_nexus_and_answers_only_after_its_tasks_ended()
    {
        var (f, holder, victim, _, holderSet, victimSet, bystanderSet) = Setup(victimTasks: 2);
        byte[] cdb = PrOut(ScsiPrAction.PreemptAndAbort, ScsiPrType.WriteExclusive, 0xAA, 0xBB, out byte[] parameters);
        TestScsiTask preempt = NewTask(f, cdb, parameters, holder);

        Task run = f.Unit.ExecuteAsync(preempt, CancellationToken.None).AsTask();
        await Task.WhenAny(run, Task.Delay(200));
        Assert.False(run.IsCompleted, "PREEMPT AND ABORT answered while the preempted tasks were still running");

        ScsiTask? except = Assert.Single(victimSet.Calls);
        Assert.Same(preempt, except);
        Assert.Empty(holderSet.Calls);
        Assert.Empty(bystanderSet.Calls);

        victimSet.Ended.SetResult(true);
        await run.WaitAsync(TimeSpan.FromSeconds(10));
        ScsiFixture.AssertGood(preempt);

        // The victim: REGISTRATIONS PREEMPTED, then COMMANDS CLEARED BY ANOTHER INITIATOR, then nothing.
        ScsiFixture.AssertCheck(f.Run(Cdb.TestUnitReady(), nexus: victim), SenseKey.UnitAttention, Asc.RegistrationsPreempted);
        ScsiFixture.AssertCheck(f.Run(Cdb.TestUnitReady(), nexus: victim), SenseKey.UnitAttention, Asc.CommandsClearedByAnotherInitiator);
        ScsiFixture.AssertGood(f.Run(Cdb.TestUnitReady(), nexus: victim));
        // The preempter holds the reservation now; the victim may no longer write.
        Assert.Equal(ScsiStatus.ReservationConflict, f.Run(Cdb.Write10(0, 1), new byte[512], nexus: victim).Status);
        ScsiFixture.AssertGood(f.Run(Cdb.Write10(0, 1), new byte[512], nexus: holder));
    }

    [Fact]
    public void Preempt_without_abort_leaves_the_tasks_alone()
    {
        var (f, holder, victim, _, _, victimSet, _) = Setup(victimTasks: 2);
        byte[] cdb = PrOut(ScsiPrAction.Preempt, ScsiPrType.WriteExclusive, 0xAA, 0xBB, out byte[] parameters);
        ScsiFixture.AssertGood(f.Run(cdb, parameters, nexus: holder));
        Assert.Empty(victimSet.Calls);
        ScsiFixture.AssertCheck(f.Run(Cdb.TestUnitReady(), nexus: victim), SenseKey.UnitAttention, Asc.RegistrationsPreempted);
        ScsiFixture.AssertGood(f.Run(Cdb.TestUnitReady(), nexus: victim));
    }

    [Fact]
    public void A_preempted_nexus_without_tasks_gets_only_registrations_preempted()
    {
        var (f, holder, victim, _, _, victimSet, _) = Setup(victimTasks: 0);
        victimSet.Ended.SetResult(true);
        byte[] cdb = PrOut(ScsiPrAction.PreemptAndAbort, ScsiPrType.WriteExclusive, 0xAA, 0xBB, out byte[] parameters);
        ScsiFixture.AssertGood(f.Run(cdb, parameters, nexus: holder));
        Assert.Single(victimSet.Calls);
        ScsiFixture.AssertCheck(f.Run(Cdb.TestUnitReady(), nexus: victim), SenseKey.UnitAttention, Asc.RegistrationsPreempted);
        ScsiFixture.AssertGood(f.Run(Cdb.TestUnitReady(), nexus: victim));
    }

    [Fact]
    public void Tasks_still_running_at_the_transport_bound_fail_the_command_but_the_preemption_stands()
    {
        var (f, holder, victim, _, _, victimSet, _) = Setup(victimTasks: 1);
        victimSet.Ended.SetResult(false);
        byte[] cdb = PrOut(ScsiPrAction.PreemptAndAbort, ScsiPrType.WriteExclusive, 0xAA, 0xBB, out byte[] parameters);
        ScsiFixture.AssertCheck(f.Run(cdb, parameters, nexus: holder), SenseKey.HardwareError, Asc.InternalTargetFailure);
        ScsiFixture.AssertCheck(f.Run(Cdb.TestUnitReady(), nexus: victim), SenseKey.UnitAttention, Asc.RegistrationsPreempted);
        ScsiFixture.AssertCheck(f.Run(Cdb.TestUnitReady(), nexus: victim), SenseKey.UnitAttention, Asc.CommandsClearedByAnotherInitiator);
        Assert.Equal(ScsiStatus.ReservationConflict, f.Run(Cdb.Write10(0, 1), new byte[512], nexus: victim).Status);
    }

    [Fact]
    public void Preempting_its_own_key_aborts_the_preempters_other_tasks_but_not_the_command_and_posts_it_no_attention()
    {
        var f = new ScsiFixture();
        var ownSet = new RecordingTaskSet(3);
        ownSet.Ended.SetResult(true);
        f.Nexus.TaskSet = ownSet;
        Register(f, f.Nexus, 0xAA);
        byte[] reserve = PrOut(ScsiPrAction.Reserve, ScsiPrType.WriteExclusive, 0xAA, 0, out byte[] reserveParameters);
        ScsiFixture.AssertGood(f.Run(reserve, reserveParameters));

        byte[] cdb = PrOut(ScsiPrAction.PreemptAndAbort, ScsiPrType.ExclusiveAccess, 0xAA, 0xAA, out byte[] parameters);
        TestScsiTask preempt = f.Run(cdb, parameters);
        ScsiFixture.AssertGood(preempt);
        Assert.Same(preempt, Assert.Single(ownSet.Calls));
        ScsiFixture.AssertGood(f.Run(Cdb.TestUnitReady()));

        // It stays registered and holds the reservation with the new type (SPC-4 5.9.11.4.3).
        byte[] readReservation = [ScsiOpcode.PersistentReserveIn, ScsiPrAction.ReadReservation, 0, 0, 0, 0, 0, 0, 64, 0];
        TestScsiTask reservation = f.Run(readReservation);
        ScsiFixture.AssertGood(reservation);
        Assert.Equal(16u, BinaryPrimitives.ReadUInt32BigEndian(reservation.Data.Slice(4)));
        Assert.Equal(0xAAul, BinaryPrimitives.ReadUInt64BigEndian(reservation.Data.Slice(8)));
        Assert.Equal(ScsiPrType.ExclusiveAccess, reservation.Data[21]);
        ScsiFixture.AssertGood(f.Run(Cdb.Write10(0, 1), new byte[512]));
    }
}
