// Full feature phase, send side: one sender loop turns queued items (task responses, R2Ts,
// control PDUs) into PDUs, assigning StatSN in send order and stamping the current ExpCmdSN /
// MaxCmdSN. Small PDUs are coalesced into one buffer and sent with one call per batch; large
// Data-In segments go straight from the task's buffer. Also: the task table and task pool.
using System.Buffers;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using Microsoft.Extensions.Logging;
using Target.Dedup.Hashing;
using Target.Protocol.Nbd;
using Target.Protocol.Scsi;

namespace Target.Protocol.Iscsi;

/// <summary>A prepared control PDU (NOP-In, Text/Logout/Task Management response, Reject).</summary>
internal sealed class IscsiControlPdu
{
    public readonly byte[] Bhs = new byte[IscsiLimits.BhsBytes];
    public byte[] Data = [];
    public int DataLength;

    /// <summary>Carries status: takes a StatSN (NOP-In replies, responses, Reject).</summary>
    public bool AdvancesStatSn = true;

    /// <summary>Answers a non-immediate request: the CmdSN window grows by one when it is sent.</summary>
    public bool ReleasesCmdSn;

    /// <summary>Close the connection once this PDU is on the wire (logout).</summary>
    public bool CloseAfterSend;
}

/// <summary>
/// An abort (task management, or PREEMPT AND ABORT) waiting for the tasks it aborted to end, on
/// this session or on others. <see cref="Ended"/> completes once: true when the last of them
/// ended, false when the bound given to <see cref="Arm"/> passed first.
/// </summary>
internal sealed class PendingAbort
{
    // One count for each task waited for, plus one held until Arm: tasks that end while the
    // abort is still being spread over the sessions cannot complete it early.
    private int _remaining = 1;
    private int _completed;
    private Timer? _timer;
    private readonly TaskCompletionSource<bool> _ended = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public Task<bool> Ended => _ended.Task;

    /// <summary>Tasks still running (for log lines).</summary>
    public int Running => Math.Max(0, Volatile.Read(ref _remaining) - 1);

    /// <summary>One more task to wait for (under the owning connection's task lock).</summary>
    public void Add() => Interlocked.Increment(ref _remaining);

    /// <summary>A task waited for was released by its connection.</summary>
    public void TaskEnded()
    {
        if (Interlocked.Decrement(ref _remaining) == 0) Complete(true);
    }

    /// <summary>Every task is registered: completes now when none is running, else when they end or <paramref name="bound"/> passes.</summary>
    public void Arm(TimeSpan bound)
    {
        if (Interlocked.Decrement(ref _remaining) == 0)
        {
            Complete(true);
            return;
        }
        var timer = new Timer(static state => ((PendingAbort)state!).Complete(false), this, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        Volatile.Write(ref _timer, timer);
        timer.Change(bound, Timeout.InfiniteTimeSpan);
        if (Volatile.Read(ref _completed) != 0) timer.Dispose();
    }

    private void Complete(bool ended)
    {
        if (Interlocked.Exchange(ref _completed, 1) != 0) return;
        Volatile.Read(ref _timer)?.Dispose();
        _ended.TrySetResult(ended);
    }
}

internal sealed partial class IscsiConnection
{
    private enum OutKind : byte
    {
        TaskResponse,
        ReadyToTransfer,
        Control,
    }

    private struct OutItem
    {
        public OutKind Kind;
        public IscsiTask? Task;
        public IscsiControlPdu? Control;
        public uint R2TSn;
        public int Offset;
        public int Length;
    }

    // ---- tasks ----
    private readonly object _taskLock = new();
    private readonly Dictionary<uint, IscsiTask> _tasks = new();
    private readonly Stack<IscsiTask> _freeTasks = new();
    private volatile bool _closing;
    private TaskCompletionSource? _drained;
    private long _drainDeadlineTicks;   // Environment.TickCount64 past which logout and close stop waiting for tasks

    // ---- send side ----
    private readonly object _sendLock = new();
    private List<OutItem> _ready = new(64);
    private List<OutItem> _sending = new(64);
    private readonly AsyncSignal _sendSignal = new(runContinuationsAsynchronously: false);
    private byte[] _tx = [];
    private int _txUsed;
    private volatile bool _sendFailed;
    private volatile bool _senderStop;
    private bool _senderDone;   // under _sendLock: the sender loop has ended; nothing queued is sent any more
    private static readonly byte[] s_zeros = new byte[4];

    // ---- pings ----
    private long _pingSentTicks;
    private uint _pingTtt;

    private IscsiTask RentTask()
    {
        lock (_taskLock)
        {
            if (_freeTasks.TryPop(out IscsiTask? task)) return task;
        }
        return new IscsiTask(this);
    }

    private void AddTask(IscsiTask task)
    {
        lock (_taskLock) _tasks[task.Itt] = task;
    }

    private IscsiTask? FindTask(uint itt)
    {
        lock (_taskLock) return _tasks.TryGetValue(itt, out IscsiTask? task) ? task : null;
    }

    /// <summary>Removes a finished task from the table and returns it to the pool (sender or close path only).</summary>
    private void ReleaseTask(IscsiTask task)
    {
        List<PendingAbort>? waiters;
        bool drained;
        lock (_taskLock)
        {
            if (_tasks.TryGetValue(task.Itt, out IscsiTask? registered) && ReferenceEquals(registered, task)) _tasks.Remove(task.Itt);
            waiters = task.AbortWaiters;
            task.Reset();
            if (_freeTasks.Count < IscsiLimits.QueueDepth) _freeTasks.Push(task);
            drained = _tasks.Count == 0;
        }
        if (waiters is not null)
            foreach (PendingAbort waiter in waiters) waiter.TaskEnded();
        if (drained && _closing) _drained?.TrySetResult();
    }

    private int TaskCount
    {
        get
        {
            lock (_taskLock) return _tasks.Count;
        }
    }

    /// <summary>Close path: tasks still waiting for data will never get it; they end without a response.</summary>
    private void AbandonCollectingTasks()
    {
        List<IscsiTask> abandoned = new();
        lock (_taskLock)
        {
            foreach (IscsiTask task in _tasks.Values)
                if (task.State == IscsiTaskState.Collecting) abandoned.Add(task);
        }
        if (abandoned.Count > 0)
            _logger.LogDebug("iscsi {Peer}: {Count} command(s) were waiting for data when the connection closed; dropped", Peer, abandoned.Count);
        foreach (IscsiTask task in abandoned)
        {
            task.Dropped = true;
            task.State = IscsiTaskState.Done;
            if (_tx.Length == 0) ReleaseTask(task);
            else Enqueue(new OutItem { Kind = OutKind.TaskResponse, Task = task }, onReceiveLoop: false);
        }
    }

    /// <summary>
    /// Logout and close: waits for every task to be released, at most until AbortWaitTimeout after
    /// the first call (logout then close share one bound). False when some are still running then:
    /// the caller goes on without them and each is released when it ends (<see cref="Enqueue"/>).
    /// </summary>
    private async Task<bool> WaitForTasksAsync()
    {
        Task drained;
        long deadline;
        lock (_taskLock)
        {
            if (_drained is null)
            {
                _drained = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                _drainDeadlineTicks = Environment.TickCount64 + (long)_options.AbortWaitTimeout.TotalMilliseconds;
                _closing = true;
            }
            if (_tasks.Count == 0) return true;
            drained = _drained.Task;
            deadline = _drainDeadlineTicks;
        }
        long leftMs = deadline - Environment.TickCount64;
        if (leftMs <= 0) return false;
        try
        {
            await drained.WaitAsync(TimeSpan.FromMilliseconds(leftMs)).ConfigureAwait(false);
            return true;
        }
        catch (TimeoutException)
        {
            return false;
        }
    }

    // ---- queueing ----

    private void Enqueue(OutItem item, bool onReceiveLoop)
    {
        bool queued;
        lock (_sendLock)
        {
            queued = !_senderDone;
            if (queued) _ready.Add(item);
        }
        if (!queued)
        {
            // The sender has ended (a close that stopped waiting for tasks): nothing more goes out,
            // and a task that ends now is released here.
            if (item.Kind == OutKind.TaskResponse) ReleaseTask(item.Task!);
            return;
        }
        if (onReceiveLoop) _queuedInPass = true;
        else _sendSignal.Set();
    }

    private void QueueR2T(IscsiTask task, uint r2tSn, int offset, int length)
        => Enqueue(new OutItem { Kind = OutKind.ReadyToTransfer, Task = task, R2TSn = r2tSn, Offset = offset, Length = length }, onReceiveLoop: true);

    private void QueueControl(IscsiControlPdu control, bool onReceiveLoop = true)
        => Enqueue(new OutItem { Kind = OutKind.Control, Control = control }, onReceiveLoop);

    /// <summary>Queues a Reject carrying the offending PDU's header.</summary>
    private void QueueReject(in IscsiPduHeader header, byte reason, bool releasesCmdSn = false)
    {
        var control = new IscsiControlPdu { ReleasesCmdSn = releasesCmdSn };
        IscsiPduWriter.Reject(control.Bhs, reason, 0);
        control.Data = header.Span.ToArray();
        control.DataLength = IscsiLimits.BhsBytes;
        QueueControl(control);
    }

    private void SendPing()
    {
        uint tag = NextPingTag();
        var control = new IscsiControlPdu { AdvancesStatSn = false };
        IscsiPduWriter.NopIn(control.Bhs, 0, IscsiReservedTag.None, tag, 0);
        Volatile.Write(ref _pingTtt, tag);
        Volatile.Write(ref _pingSentTicks, Environment.TickCount64);
        QueueControl(control, onReceiveLoop: false);
    }

    private uint _pingTagCounter = 0x80000000;

    private uint NextPingTag()
    {
        uint tag = Interlocked.Increment(ref _pingTagCounter);
        return tag == IscsiReservedTag.None ? Interlocked.Increment(ref _pingTagCounter) : tag;
    }

    // ---- sender ----

    private async Task SendLoopAsync()
    {
        while (true)
        {
            await _sendSignal.WaitAsync().ConfigureAwait(false);
            while (true)
            {
                List<OutItem> batch;
                lock (_sendLock)
                {
                    if (_ready.Count == 0) break;
                    batch = _ready;
                    _ready = _sending;
                    _sending = batch;
                }
                for (int i = 0; i < batch.Count; i++)
                {
                    OutItem item = batch[i];
                    try
                    {
                        await EmitAsync(item).ConfigureAwait(false);
                    }
                    catch (Exception ex)
                    {
                        _logger.LogError(ex, "iscsi {Peer}: failed to send a PDU; closing", Peer);
                        _sendFailed = true;
                        ShutdownSocket();
                        if (item.Kind == OutKind.TaskResponse && item.Task is not null) ReleaseTask(item.Task);
                    }
                }
                batch.Clear();
                await FlushAsync().ConfigureAwait(false);
            }
            if (_senderStop)
            {
                lock (_sendLock)
                {
                    if (_ready.Count != 0) continue;
                    _senderDone = true;
                }
                return;
            }
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask EmitAsync(OutItem item)
    {
        switch (item.Kind)
        {
            case OutKind.TaskResponse:
                await EmitTaskResponseAsync(item.Task!).ConfigureAwait(false);
                return;
            case OutKind.ReadyToTransfer:
                {
                    IscsiTask task = item.Task!;
                    if (_sendFailed || task.Dropped) return;   // an aborted task is solicited no more data
                    await EnsureSpaceAsync(IscsiLimits.BhsBytes + IscsiLimits.DigestBytes).ConfigureAwait(false);
                    Span<byte> h = _tx.AsSpan(_txUsed, IscsiLimits.BhsBytes);
                    IscsiPduWriter.ReadyToTransfer(h, task.LunField, task.Itt, task.TargetTransferTag, item.R2TSn, (uint)item.Offset, (uint)item.Length);
                    IscsiPduWriter.SetSequenceNumbers(h, _statSn, Volatile.Read(ref _expCmdSn), Volatile.Read(ref _maxCmdSn));
                    task.DataSequence++;
                    CommitHeader();
                    return;
                }
            case OutKind.Control:
                await EmitControlAsync(item.Control!).ConfigureAwait(false);
                return;
        }
    }

    private async ValueTask EmitControlAsync(IscsiControlPdu control)
    {
        if (control.ReleasesCmdSn) Volatile.Write(ref _maxCmdSn, _maxCmdSn + 1);
        if (_sendFailed) return;
        await EnsureSpaceAsync(IscsiLimits.BhsBytes + IscsiLimits.DigestBytes).ConfigureAwait(false);
        Span<byte> h = _tx.AsSpan(_txUsed, IscsiLimits.BhsBytes);
        control.Bhs.CopyTo(h);
        uint statSn = control.AdvancesStatSn ? _statSn++ : _statSn;
        IscsiPduWriter.SetSequenceNumbers(h, statSn, Volatile.Read(ref _expCmdSn), Volatile.Read(ref _maxCmdSn));
        CommitHeader();
        if (control.DataLength > 0) await WriteDataAsync(control.Data, 0, control.DataLength).ConfigureAwait(false);
        if (control.CloseAfterSend)
        {
            await FlushAsync().ConfigureAwait(false);
            _sendFailed = true;
            ShutdownSocket();
        }
    }

    private async ValueTask EmitTaskResponseAsync(IscsiTask task)
    {
        if (!task.ImmediateCommand) Volatile.Write(ref _maxCmdSn, _maxCmdSn + 1);
        if (!task.TryClaimForResponse() || task.Dropped || _sendFailed)
        {
            ReleaseTask(task);
            return;
        }

        int expected = task.ExpectedDataTransferLength;
        int produced = task.DataIn is null ? 0 : task.DataInLength;
        int send = task.ReadExpected ? Math.Min(produced, expected) : 0;
        byte residualFlags = 0;
        uint residual = 0;
        if (task.CommandDataOutBytes >= 0 && produced == 0)
        {
            // A write-family command: residual of the data-out the CDB transfers against the EDTL (RFC 7143 11.4.5).
            long needed = task.CommandDataOutBytes;
            if (needed > expected)
            {
                residualFlags = IscsiFlags.Overflow;
                residual = (uint)Math.Min(needed - expected, uint.MaxValue);
            }
            else if (needed < expected)
            {
                residualFlags = IscsiFlags.Underflow;
                residual = (uint)(expected - needed);
            }
        }
        else if (task.ReadExpected || produced > 0)
        {
            if (produced > expected)
            {
                residualFlags = IscsiFlags.Overflow;
                residual = (uint)(produced - expected);
            }
            else if (produced < expected)
            {
                residualFlags = IscsiFlags.Underflow;
                residual = (uint)(expected - produced);
            }
        }
        else if (!task.WriteExpected && expected > 0)
        {
            residualFlags = IscsiFlags.Underflow;
            residual = (uint)expected;
        }

        bool collapse = task.Status == ScsiStatus.Good && send > 0;
        int segmentMax = Math.Max(IscsiLimits.MaxRecvDataSegmentBytesMin, _parameters.InitiatorMaxRecvDataSegmentBytes);
        int burst = Math.Max(IscsiLimits.MaxRecvDataSegmentBytesMin, _parameters.MaxBurstBytes);
        int burstEnd = burst;
        for (int offset = 0; offset < send;)
        {
            int length = Math.Min(Math.Min(segmentMax, send - offset), burstEnd - offset);
            bool last = offset + length == send;
            byte flags = 0;
            if (last || offset + length == burstEnd) flags |= IscsiFlags.Final;
            bool status = last && collapse;
            if (status) flags |= (byte)(IscsiFlags.Status | residualFlags);
            await EnsureSpaceAsync(IscsiLimits.BhsBytes + IscsiLimits.DigestBytes).ConfigureAwait(false);
            Span<byte> h = _tx.AsSpan(_txUsed, IscsiLimits.BhsBytes);
            IscsiPduWriter.DataIn(h, flags, (byte)task.Status, task.Itt, task.DataSequence++, (uint)offset, residual, length);
            IscsiPduWriter.SetSequenceNumbers(h, status ? _statSn++ : 0, Volatile.Read(ref _expCmdSn), Volatile.Read(ref _maxCmdSn));
            CommitHeader();
            await WriteDataAsync(task.DataIn!, offset, length).ConfigureAwait(false);
            offset += length;
            if (offset == burstEnd) burstEnd += burst;
        }

        if (!collapse)
        {
            int senseBytes = task.Status == ScsiStatus.CheckCondition ? task.SenseLength : 0;
            int dataBytes = senseBytes > 0 ? senseBytes + 2 : 0;
            await EnsureSpaceAsync(IscsiLimits.BhsBytes + IscsiLimits.DigestBytes).ConfigureAwait(false);
            Span<byte> h = _tx.AsSpan(_txUsed, IscsiLimits.BhsBytes);
            IscsiPduWriter.ScsiResponse(h, task.Itt, residualFlags, 0x00, (byte)task.Status, residual, task.DataSequence, dataBytes);
            IscsiPduWriter.SetSequenceNumbers(h, _statSn++, Volatile.Read(ref _expCmdSn), Volatile.Read(ref _maxCmdSn));
            CommitHeader();
            if (dataBytes > 0)
            {
                // Data segment: SenseLength (2 bytes) then the sense data. Built in the task's scratch tail.
                byte[] scratch = task.Scratch;
                int at = scratch.Length - dataBytes;
                scratch[at] = (byte)(senseBytes >> 8);
                scratch[at + 1] = (byte)senseBytes;
                task.Sense.AsSpan(0, senseBytes).CopyTo(scratch.AsSpan(at + 2));
                await WriteDataAsync(scratch, at, dataBytes).ConfigureAwait(false);
            }
        }
        ReleaseTask(task);
    }

    /// <summary>Adds the header digest (if negotiated) after the BHS just written at _txUsed.</summary>
    private void CommitHeader()
    {
        if (_headerDigest)
        {
            uint crc = Crc32C.Compute(_tx.AsSpan(_txUsed, IscsiLimits.BhsBytes));
            IscsiPdu.WriteDigest(_tx.AsSpan(_txUsed + IscsiLimits.BhsBytes), crc);
            _txUsed += IscsiLimits.BhsBytes + IscsiLimits.DigestBytes;
        }
        else
        {
            _txUsed += IscsiLimits.BhsBytes;
        }
    }

    /// <summary>Appends a data segment with its padding and digest: copied when small, sent in place when large.</summary>
    private async ValueTask WriteDataAsync(byte[] source, int offset, int length)
    {
        int pad = IscsiPdu.Pad4(length) - length;
        uint crc = 0;
        if (_dataDigest) crc = Crc32C.Append(Crc32C.Compute(source.AsSpan(offset, length)), s_zeros.AsSpan(0, pad));
        if (length <= IscsiLimits.CoalesceDataBytesMax)
        {
            await EnsureSpaceAsync(length + pad + IscsiLimits.DigestBytes).ConfigureAwait(false);
            source.AsSpan(offset, length).CopyTo(_tx.AsSpan(_txUsed));
            _txUsed += length;
        }
        else
        {
            await FlushAsync().ConfigureAwait(false);
            await SendAllAsync(source.AsMemory(offset, length)).ConfigureAwait(false);
        }
        _tx.AsSpan(_txUsed, pad).Clear();
        _txUsed += pad;
        if (_dataDigest)
        {
            IscsiPdu.WriteDigest(_tx.AsSpan(_txUsed), crc);
            _txUsed += IscsiLimits.DigestBytes;
        }
    }

    private ValueTask EnsureSpaceAsync(int bytes)
        => _txUsed + bytes <= _tx.Length ? ValueTask.CompletedTask : FlushAsync();

    private ValueTask FlushAsync()
    {
        if (_txUsed == 0) return ValueTask.CompletedTask;
        int used = _txUsed;
        _txUsed = 0;
        return SendAllAsync(_tx.AsMemory(0, used));
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask SendAllAsync(ReadOnlyMemory<byte> bytes)
    {
        if (_sendFailed) return;
        if (!await ServerSockets.TrySendAllAsync(_socket, bytes, "iscsi", Peer, _logger, _serverToken).ConfigureAwait(false)) _sendFailed = true;
    }
}
