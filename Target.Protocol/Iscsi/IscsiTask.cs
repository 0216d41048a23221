// One SCSI command on an iSCSI connection, pooled per connection: the object, its CDB, sense
// and scratch buffers and its continuation delegate are made once and reused; the data-out
// buffer is rented from ArrayPool for the command's Expected Data Transfer Length.
// Invariants: a task is in the connection's task table from its SCSI Command PDU until its
// final response is handed to the sender (or it is dropped by an abort); the data-out buffer
// is returned exactly once (Reset).
using System.Buffers;
using System.Runtime.CompilerServices;
using Target.Protocol.Scsi;

namespace Target.Protocol.Iscsi;

internal enum IscsiTaskState
{
    /// <summary>Waiting for data-out (immediate, unsolicited or solicited by R2T).</summary>
    Collecting,
    /// <summary>Running on the logical unit.</summary>
    Executing,
    /// <summary>Finished; its response is queued for the sender.</summary>
    Done,
}

internal sealed class IscsiTask : ScsiTask
{
    private readonly IscsiConnection _connection;
    private readonly Action _onExecuted;
    private ConfiguredValueTaskAwaitable.ConfiguredValueTaskAwaiter _awaiter;
    private bool _dataOutRented;

    public IscsiTask(IscsiConnection connection)
    {
        _connection = connection;
        _onExecuted = OnExecuted;
    }

    public uint Itt;
    public uint CmdSn;
    public ulong LunField;
    public bool ImmediateCommand;
    public IscsiTaskState State;

    // ---- data-out collection ----

    /// <summary>Data-out bytes received so far (immediate + unsolicited + solicited).</summary>
    public int ReceivedBytes;

    /// <summary>True once no more unsolicited data will come (F bit on the command or on the last unsolicited Data-Out).</summary>
    public bool UnsolicitedDone;

    /// <summary>Offset up to which R2Ts have been sent.</summary>
    public int SolicitedUpTo;

    public int OutstandingR2T;
    public uint NextR2TSn;

    /// <summary>DataSN the next Data-Out must carry: 0 at the start of each sequence (unsolicited, or one per R2T).</summary>
    public uint NextDataSn;
    public uint TargetTransferTag;

    /// <summary>Data-out is read and dropped; the status was decided before the data arrived.</summary>
    public bool Absorbing;

    /// <summary>A data digest failed on this task's data: it ends with CHECK CONDITION once all data arrived.</summary>
    public bool DigestFailed;

    /// <summary>Set by task management: no SCSI response is sent for the task.</summary>
    public volatile bool Dropped;

    // 0: open; 1: claimed by an abort; 2: claimed by the sender for its response. Whichever claims
    // first wins, so a task is never both answered and reported aborted.
    private int _claim;

    public bool TryClaimForAbort() => Interlocked.CompareExchange(ref _claim, 1, 0) == 0;

    /// <summary>An abort claimed the task (now or earlier): no response will be sent for it.</summary>
    public bool AbortClaimed => Volatile.Read(ref _claim) == 1;

    /// <summary>Aborts waiting for this task to end (read and written under the connection's task lock).</summary>
    public List<PendingAbort>? AbortWaiters;

    /// <summary>True unless an abort claimed the task first.</summary>
    public bool TryClaimForResponse() => Interlocked.CompareExchange(ref _claim, 2, 0) != 1;

    // ---- data-in / response bookkeeping (sender) ----

    /// <summary>Data-In and R2T PDUs sent for this task (ExpDataSN of the SCSI Response).</summary>
    public uint DataSequence;

    public void RentDataOut(int bytes)
    {
        DataOut = ArrayPool<byte>.Shared.Rent(Math.Max(bytes, 1));
        _dataOutRented = true;
        DataOutLength = bytes;
    }

    public void Reset()
    {
        if (_dataOutRented && DataOut is not null) ArrayPool<byte>.Shared.Return(DataOut);
        _dataOutRented = false;
        ResetScsi();
        Itt = 0;
        CmdSn = 0;
        LunField = 0;
        ImmediateCommand = false;
        State = IscsiTaskState.Collecting;
        ReceivedBytes = 0;
        UnsolicitedDone = false;
        SolicitedUpTo = 0;
        OutstandingR2T = 0;
        NextR2TSn = 0;
        NextDataSn = 0;
        TargetTransferTag = 0;
        Absorbing = false;
        DigestFailed = false;
        Dropped = false;
        _claim = 0;
        AbortWaiters = null;
        DataSequence = 0;
    }

    /// <summary>Continues on the connection when <paramref name="execution"/> completes, without allocating.</summary>
    public void AwaitExecution(ValueTask execution)
    {
        _awaiter = execution.ConfigureAwait(false).GetAwaiter();
        _awaiter.UnsafeOnCompleted(_onExecuted);
    }

    private void OnExecuted()
    {
        try
        {
            _awaiter.GetResult();
        }
        catch (Exception)
        {
            // ExecuteAsync never throws; a fault here is a bug the unit already logged.
        }
        _awaiter = default;
        _connection.OnTaskExecuted(this, onReceiveLoop: false);
    }
}
