// Full feature phase, receive side: frames PDUs out of the receive buffer, checks sequence
// numbers and digests, collects write data (immediate, unsolicited and R2T-solicited) into each
// task's buffer and starts commands on the logical unit.
// Every complete PDU already buffered is handled in one pass; responses completed during the
// pass go out together (one send). Large data segments are received straight into task buffers.
// Only this loop ends a task that is still collecting data (the receive path may be writing into
// its buffer): an abort from another thread marks it dropped and wakes the loop (WakeReceiveLoop).
using System.Buffers.Binary;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Target.Protocol.Scsi;

namespace Target.Protocol.Iscsi;

internal sealed partial class IscsiConnection
{
    private enum PayloadKind : byte
    {
        None,
        ImmediateData,
        DataOut,
        Discard,
    }

    // ---- the data segment being received (receive loop only) ----
    private PayloadKind _payloadKind;
    private IscsiTask? _payloadTask;
    private byte[]? _payloadTarget;
    private int _payloadOffset;
    private int _payloadRemaining;
    private int _padRemaining;
    private int _digestRemaining;
    private readonly byte[] _digestBytes = new byte[IscsiLimits.DigestBytes];
    private uint _payloadCrc;
    private int _payloadLength;
    private bool _payloadFinal;
    private bool _payloadSolicited;
    private IscsiBhs _payloadHeader;

    private bool _stopReading;
    private bool _queuedInPass;

    // ---- waking the receive loop from other threads ----
    // Cancelled by WakeReceiveLoop to interrupt a pending receive (no data is lost: a cancelled
    // receive read nothing); replaced by the loop after each wake. Not linked to the server token:
    // a stopping server aborts the socket, which ends the receive. A fired one is left to the GC
    // rather than disposed while another thread may still be cancelling it.
    private CancellationTokenSource? _receiveWake;
    private int _droppedWhileCollecting;   // 1: an abort from elsewhere dropped a task still collecting data

    /// <summary>Any thread: the receive loop should end the tasks dropped while collecting data.</summary>
    private void WakeReceiveLoop()
    {
        Interlocked.Exchange(ref _droppedWhileCollecting, 1);
        Volatile.Read(ref _receiveWake)?.Cancel();
    }

    private async Task ReceiveLoopAsync()
    {
        CancellationTokenSource wake = new();
        Volatile.Write(ref _receiveWake, wake);
        while (true)
        {
            if (wake.IsCancellationRequested)
            {
                // Replaced before the flag is read: a wake after that read cancels the new one.
                wake = new CancellationTokenSource();
                Volatile.Write(ref _receiveWake, wake);
            }
            if (Interlocked.Exchange(ref _droppedWhileCollecting, 0) != 0) EndDroppedCollectingTasks();
            bool stop = ProcessBuffered();
            if (_queuedInPass)
            {
                _queuedInPass = false;
                _sendSignal.Set();
            }
            if (stop) return;

            if (_payloadKind != PayloadKind.None && _payloadTarget is not null && _rxStart == _rxEnd && _payloadRemaining >= IscsiLimits.DirectReceiveMinBytes)
            {
                // Large data segment: receive straight into the task's buffer.
                int direct;
                try
                {
                    direct = await _socket.ReceiveAsync(_payloadTarget.AsMemory(_payloadOffset, _payloadRemaining), SocketFlags.None, wake.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (wake.IsCancellationRequested)
                {
                    continue;   // woken
                }
                if (direct == 0)
                {
                    LogPeerClosed();
                    return;
                }
                Volatile.Write(ref _lastReceiveTicks, Environment.TickCount64);
                if (_dataDigest) _payloadCrc = Target.Dedup.Hashing.Crc32C.Append(_payloadCrc, _payloadTarget.AsSpan(_payloadOffset, direct));
                _payloadOffset += direct;
                _payloadRemaining -= direct;
                continue;
            }

            if (_rxStart == _rxEnd)
            {
                _rxStart = 0;
                _rxEnd = 0;
            }
            else if (_rx.Length - _rxEnd < IscsiLimits.HeaderBytesMax || _rxStart > _rx.Length / 2)
            {
                CompactReceiveBuffer();
            }
            int received;
            try
            {
                received = await _socket.ReceiveAsync(_rx.AsMemory(_rxEnd), SocketFlags.None, wake.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (wake.IsCancellationRequested)
            {
                continue;   // woken
            }
            if (received == 0)
            {
                LogPeerClosed();
                return;
            }
            Volatile.Write(ref _lastReceiveTicks, Environment.TickCount64);
            _rxEnd += received;
        }
    }

    private void LogPeerClosed()
    {
        if (_stopReading)
            _logger.LogDebug("iscsi {Peer}: initiator closed the connection after logout", Peer);
        else if (_payloadKind != PayloadKind.None || _rxEnd != _rxStart)
            _logger.LogWarning("iscsi {Peer}: initiator closed the connection in the middle of a PDU; the partial PDU is dropped", Peer);
        else
            _logger.LogDebug("iscsi {Peer}: initiator closed the connection", Peer);
    }

    private int Buffered => _rxEnd - _rxStart;

    /// <summary>Handles every complete PDU buffered. True when the connection must stop reading.</summary>
    private bool ProcessBuffered()
    {
        while (true)
        {
            if (_payloadKind != PayloadKind.None)
            {
                if (!ConsumePayload()) return false;
                FinishPayload();
                continue;
            }
            if (_stopReading) return _rxStart == _rxEnd ? false : DropAfterLogout();

            IscsiParseStatus status = IscsiPdu.TryParseHeader(_rx.AsSpan(_rxStart, Buffered), _headerDigest, out IscsiPduHeader header);
            if (status == IscsiParseStatus.Incomplete)
            {
                if (_rxStart + IscsiLimits.HeaderBytesMax > _rx.Length) CompactReceiveBuffer();
                return false;
            }
            if (status == IscsiParseStatus.HeaderDigestError)
            {
                _logger.LogWarning("iscsi {Peer}: header digest error; the PDU boundaries can no longer be trusted, closing session {Tsih}", Peer, Tsih);
                return true;
            }

            int dataBytes = header.DataSegmentBytes;
            int wireData = header.WireDataBytes(_dataDigest);
            IscsiOpcode opcode = header.Opcode;

            if (dataBytes > _parameters.TargetMaxRecvDataSegmentBytes)
            {
                _logger.LogWarning("iscsi {Peer}: {Opcode} with a {Bytes}-byte data segment exceeds MaxRecvDataSegmentLength {Max}; rejected",
                    Peer, opcode, dataBytes, _parameters.TargetMaxRecvDataSegmentBytes);
                _rxStart += header.HeaderBytes;
                QueueReject(in header, IscsiRejectReason.ProtocolError);
                BeginDiscard(dataBytes);
                continue;
            }

            if (opcode is IscsiOpcode.ScsiCommand or IscsiOpcode.DataOut)
            {
                ReadOnlySpan<byte> ahs = _rx.AsSpan(_rxStart + IscsiLimits.BhsBytes, header.AhsBytes);
                if (opcode == IscsiOpcode.ScsiCommand)
                {
                    int consumed = header.HeaderBytes;
                    HandleScsiCommand(in header, ahs, consumed);
                }
                else
                {
                    _rxStart += header.HeaderBytes;
                    HandleDataOut(in header);
                }
                continue;
            }

            // Other PDUs are handled once they are wholly buffered (their data fits the buffer).
            if (Buffered < header.HeaderBytes + wireData)
            {
                if (_rxStart + header.HeaderBytes + wireData > _rx.Length) CompactReceiveBuffer();
                return false;
            }
            ReadOnlySpan<byte> data = _rx.AsSpan(_rxStart + header.HeaderBytes, dataBytes);
            if (_dataDigest && dataBytes > 0)
            {
                int padded = IscsiPdu.Pad4(dataBytes);
                uint expected = IscsiPdu.DataDigest(data, _rx.AsSpan(_rxStart + header.HeaderBytes + dataBytes, padded - dataBytes));
                uint actual = IscsiPdu.ReadDigest(_rx.AsSpan(_rxStart + header.HeaderBytes + padded));
                if (expected != actual)
                {
                    _logger.LogWarning("iscsi {Peer}: data digest error on {Opcode}; rejected", Peer, opcode);
                    _rxStart += header.HeaderBytes + wireData;
                    QueueReject(in header, IscsiRejectReason.DataDigestError);
                    continue;
                }
            }
            bool stop = HandleControlPdu(in header, data);
            _rxStart += header.HeaderBytes + wireData;
            if (stop) return true;
        }
    }

    /// <summary>After a logout only the logout's own response goes out; anything else received is dropped.</summary>
    private bool DropAfterLogout()
    {
        _rxStart = _rxEnd;
        return false;
    }

    // ---- data segments ----

    private void BeginPayload(PayloadKind kind, IscsiTask? task, byte[]? target, int offset, int length, in IscsiPduHeader header)
    {
        _payloadKind = kind;
        _payloadTask = task;
        _payloadTarget = target;
        _payloadOffset = offset;
        _payloadRemaining = length;
        _payloadLength = length;
        _padRemaining = IscsiPdu.Pad4(length) - length;
        _digestRemaining = _dataDigest && length > 0 ? IscsiLimits.DigestBytes : 0;
        _payloadCrc = 0;
        _payloadHeader = header.Bhs;
    }

    private void BeginDiscard(int length)
    {
        if (length == 0) return;
        _payloadKind = PayloadKind.Discard;
        _payloadTask = null;
        _payloadTarget = null;
        _payloadOffset = 0;
        _payloadRemaining = length;
        _payloadLength = length;
        _padRemaining = IscsiPdu.Pad4(length) - length;
        _digestRemaining = _dataDigest && length > 0 ? IscsiLimits.DigestBytes : 0;
        _payloadCrc = 0;
    }

    /// <summary>Moves buffered bytes of the current data segment to its target. True when the segment (padding, digest) is complete.</summary>
    private bool ConsumePayload()
    {
        if (_payloadRemaining > 0)
        {
            int n = Math.Min(_payloadRemaining, Buffered);
            if (n > 0)
            {
                ReadOnlySpan<byte> source = _rx.AsSpan(_rxStart, n);
                if (_payloadTarget is not null) source.CopyTo(_payloadTarget.AsSpan(_payloadOffset));
                if (_digestRemaining > 0) _payloadCrc = Target.Dedup.Hashing.Crc32C.Append(_payloadCrc, source);
                _rxStart += n;
                _payloadOffset += n;
                _payloadRemaining -= n;
            }
            if (_payloadRemaining > 0) return false;
        }
        if (_padRemaining > 0)
        {
            int n = Math.Min(_padRemaining, Buffered);
            if (_digestRemaining > 0) _payloadCrc = Target.Dedup.Hashing.Crc32C.Append(_payloadCrc, _rx.AsSpan(_rxStart, n));
            _rxStart += n;
            _padRemaining -= n;
            if (_padRemaining > 0) return false;
        }
        if (_digestRemaining > 0)
        {
            int n = Math.Min(_digestRemaining, Buffered);
            _rx.AsSpan(_rxStart, n).CopyTo(_digestBytes.AsSpan(IscsiLimits.DigestBytes - _digestRemaining));
            _rxStart += n;
            _digestRemaining -= n;
            if (_digestRemaining > 0) return false;
            // Marks that a digest was present and must be compared.
            _digestRemaining = -1;
        }
        return true;
    }

    private void FinishPayload()
    {
        bool digestOk = _digestRemaining != -1 || _payloadCrc == IscsiPdu.ReadDigest(_digestBytes);
        PayloadKind kind = _payloadKind;
        IscsiTask? task = _payloadTask;
        _payloadKind = PayloadKind.None;
        _payloadTask = null;
        _payloadTarget = null;
        _digestRemaining = 0;
        if (kind == PayloadKind.Discard || task is null) return;

        if (!digestOk)
        {
            _logger.LogWarning("iscsi {Peer}: data digest error on {Kind} of task 0x{Itt:x8}; rejected, the command will fail",
                Peer, kind == PayloadKind.ImmediateData ? "immediate data" : "Data-Out", task.Itt);
            IscsiPduHeader rejected = default;
            rejected.Bhs = _payloadHeader;
            QueueReject(in rejected, IscsiRejectReason.DataDigestError);
            task.DigestFailed = true;
        }
        task.ReceivedBytes += _payloadLength;
        if (kind == PayloadKind.DataOut && _payloadFinal)
        {
            if (_payloadSolicited) task.OutstandingR2T--;
            else task.UnsolicitedDone = true;
        }
        AdvanceWrite(task);
    }

    // ---- sequence numbers ----

    private static bool SerialLess(uint a, uint b) => (int)(a - b) < 0;

    /// <summary>
    /// CmdSN check for a non-immediate command (RFC 7143 4.2.2.1): the expected CmdSN is taken and
    /// ExpCmdSN advances; anything else (stale, duplicate or outside the window) is silently ignored.
    /// </summary>
    private bool AcceptCmdSn(in IscsiPduHeader header)
    {
        if (header.Immediate) return true;
        uint cmdSn = header.CmdSn;
        uint expected = _expCmdSn;
        if (cmdSn == expected)
        {
            Volatile.Write(ref _expCmdSn, expected + 1);
            return true;
        }
        uint maxCmdSn = Volatile.Read(ref _maxCmdSn);
        if (SerialLess(cmdSn, expected))
            _logger.LogDebug("iscsi {Peer}: {Opcode} with stale CmdSN {CmdSn} (expected {Expected}) ignored", Peer, header.Opcode, cmdSn, expected);
        else if (SerialLess(maxCmdSn, cmdSn))
            _logger.LogWarning("iscsi {Peer}: {Opcode} with CmdSN {CmdSn} beyond MaxCmdSN {MaxCmdSn} ignored", Peer, header.Opcode, cmdSn, maxCmdSn);
        else
            _logger.LogWarning("iscsi {Peer}: {Opcode} with CmdSN {CmdSn} leaves a gap (expected {Expected}); ignored", Peer, header.Opcode, cmdSn, expected);
        return false;
    }

    // ---- SCSI Command ----

    private void HandleScsiCommand(in IscsiPduHeader header, ReadOnlySpan<byte> ahs, int headerBytes)
    {
        int dataBytes = header.DataSegmentBytes;
        if (_discovery)
        {
            _rxStart += headerBytes;
            _logger.LogWarning("iscsi {Peer}: SCSI command in a discovery session; rejected", Peer);
            bool release = !header.Immediate && AcceptCmdSn(in header);
            QueueReject(in header, IscsiRejectReason.ProtocolError, release);
            BeginDiscard(dataBytes);
            return;
        }
        if (!AcceptCmdSn(in header))
        {
            _rxStart += headerBytes;
            BeginDiscard(dataBytes);
            return;
        }

        ReadOnlySpan<byte> bhs = header.Span;
        byte flags = header.Flags;
        bool read = (flags & IscsiFlags.Read) != 0;
        bool write = (flags & IscsiFlags.Write) != 0;
        uint itt = header.InitiatorTaskTag;
        uint expectedLength = header.Word20;

        // Extended CDB (AHS type 1): bytes 16.. of a CDB longer than 16 bytes.
        int extraCdbBytes = 0;
        bool badAhs = false;
        for (int position = 0; position + 4 <= ahs.Length;)
        {
            int ahsLength = BinaryPrimitives.ReadUInt16BigEndian(ahs.Slice(position));
            byte ahsType = ahs[position + 2];
            int padded = IscsiPdu.Pad4(ahsLength + 3);
            if (position + padded > ahs.Length || ahsLength == 0)
            {
                badAhs = true;
                break;
            }
            if (ahsType == 1)
            {
                extraCdbBytes = ahsLength - 1;
                if (extraCdbBytes > ScsiTask.CdbBytesMax - 16)
                {
                    badAhs = true;
                    break;
                }
            }
            position += padded;
        }

        string? protocolError = null;
        if (badAhs) protocolError = "malformed AHS";
        else if (itt == IscsiReservedTag.None) protocolError = "reserved ITT 0xffffffff";
        else if (dataBytes > 0 && !write) protocolError = "immediate data on a command without the W bit";
        else if (dataBytes > 0 && !_parameters.ImmediateData) protocolError = "immediate data while ImmediateData=No";
        else if (dataBytes > expectedLength) protocolError = "more immediate data than the expected data transfer length";
        else if (!header.Final && _parameters.InitialR2T) protocolError = "unsolicited data announced while InitialR2T=Yes";
        else if (FindTask(itt) is not null) protocolError = $"ITT 0x{itt:x8} is already in use";

        if (protocolError is not null)
        {
            _rxStart += headerBytes;
            _logger.LogWarning("iscsi {Peer}: SCSI command rejected: {Reason}", Peer, protocolError);
            QueueReject(in header, protocolError.StartsWith("ITT", StringComparison.Ordinal) ? IscsiRejectReason.TaskInProgress : IscsiRejectReason.ProtocolError,
                releasesCmdSn: !header.Immediate);
            BeginDiscard(dataBytes);
            return;
        }

        IscsiTask task = RentTask();
        task.Itt = itt;
        task.CmdSn = header.CmdSn;
        task.ImmediateCommand = header.Immediate;
        task.LunField = header.LunField;
        task.Lun = ScsiCdb.DecodeLun(bhs.Slice(8, 8));
        task.Attribute = (ScsiTaskAttribute)(flags & IscsiFlags.AttributeMask);
        task.Nexus = _nexus!;
        task.ReadExpected = read;
        task.WriteExpected = write;
        task.ExpectedDataTransferLength = (int)Math.Min(expectedLength, int.MaxValue);
        bhs.Slice(32, 16).CopyTo(task.CdbBuffer);
        task.CdbLength = 16;
        if (extraCdbBytes > 0)
        {
            // Only one extended-CDB AHS is meaningful; take the first.
            for (int position = 0; position + 4 <= ahs.Length;)
            {
                int ahsLength = BinaryPrimitives.ReadUInt16BigEndian(ahs.Slice(position));
                if (ahs[position + 2] == 1)
                {
                    ahs.Slice(position + 4, extraCdbBytes).CopyTo(task.CdbBuffer.AsSpan(16));
                    task.CdbLength = 16 + extraCdbBytes;
                    break;
                }
                position += IscsiPdu.Pad4(ahsLength + 3);
            }
        }
        _rxStart += headerBytes;
        AddTask(task);

        if (read && write)
        {
            PresetCheckCondition(task, SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);   // bidirectional commands are not supported
        }
        else if (write && expectedLength > IscsiLimits.MaxTransferBytes)
        {
            PresetCheckCondition(task, SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);
        }
        else if (write && expectedLength > 0)
        {
            task.RentDataOut((int)expectedLength);
        }
        task.UnsolicitedDone = header.Final;

        if (dataBytes > 0)
        {
            BeginPayload(PayloadKind.ImmediateData, task, task.Absorbing ? null : task.DataOut, 0, dataBytes, in header);
            return;
        }
        AdvanceWrite(task);
    }

    /// <summary>Decides the status now; data-out still arriving for the task is read and dropped.</summary>
    private void PresetCheckCondition(IscsiTask task, SenseKey key, ushort ascAscq)
    {
        task.Absorbing = true;
        task.CheckCondition(new ScsiSenseInfo(key, ascAscq), Unit?.DescriptorSense ?? false);
    }

    /// <summary>After data arrived for a task: run it when all data is in, or solicit more with R2Ts.</summary>
    private void AdvanceWrite(IscsiTask task)
    {
        if (task.State != IscsiTaskState.Collecting) return;
        if (task.Dropped)
        {
            EndCollecting(task);   // aborted while collecting: no more R2Ts, its data is no longer wanted
            return;
        }
        // Unsolicited data (immediate + unsolicited Data-Out) ends with an F bit; nothing is solicited before.
        if (!task.UnsolicitedDone) return;
        int expected = task.WriteExpected ? task.ExpectedDataTransferLength : 0;
        if (task.OutstandingR2T == 0 && (task.ReceivedBytes >= expected || task.Absorbing))
        {
            Execute(task);
            return;
        }
        if (task.Absorbing) return;   // status already decided: never solicit data that would be dropped
        if (task.SolicitedUpTo < task.ReceivedBytes) task.SolicitedUpTo = task.ReceivedBytes;
        if (task.TargetTransferTag == 0) task.TargetTransferTag = NextTargetTransferTag();
        int burst = Math.Max(512, _parameters.MaxBurstBytes);
        while (task.OutstandingR2T < _parameters.MaxOutstandingR2T && task.SolicitedUpTo < expected)
        {
            int length = Math.Min(burst, expected - task.SolicitedUpTo);
            QueueR2T(task, task.NextR2TSn++, task.SolicitedUpTo, length);
            task.SolicitedUpTo += length;
            task.OutstandingR2T++;
        }
    }

    private uint _nextTtt;

    private uint NextTargetTransferTag()
    {
        while (true)
        {
            uint tag = ++_nextTtt;
            if (tag != 0 && tag != IscsiReservedTag.None) return tag;
        }
    }

    private void Execute(IscsiTask task)
    {
        // Under the task lock: an abort from another thread either sees the task still collecting
        // (and it never runs) or sees it executing (and waits for it to end).
        bool dropped;
        lock (_taskLock)
        {
            dropped = task.Dropped;
            if (!dropped) task.State = IscsiTaskState.Executing;
        }
        if (dropped)
        {
            // Aborted by task management (possibly from another session) while collecting data.
            OnTaskExecuted(task, onReceiveLoop: true);
            return;
        }
        if (task.DataOut is not null) task.DataOutLength = Math.Min(task.ReceivedBytes, task.ExpectedDataTransferLength);
        if (task.Absorbing)
        {
            OnTaskExecuted(task, onReceiveLoop: true);
            return;
        }
        if (task.DigestFailed)
        {
            // RFC 7143 7.8: the task ends with CHECK CONDITION, "protocol service CRC error".
            task.CheckCondition(new ScsiSenseInfo(SenseKey.AbortedCommand, Asc.IscsiDigestError), Unit!.DescriptorSense);
            OnTaskExecuted(task, onReceiveLoop: true);
            return;
        }
        ValueTask execution = Unit!.ExecuteAsync(task, _serverToken);
        if (execution.IsCompleted)
        {
            try
            {
                execution.GetAwaiter().GetResult();
            }
            catch (Exception ex)
            {
                _logger.LogError(ex, "iscsi {Peer}: command execution failed", Peer);
            }
            OnTaskExecuted(task, onReceiveLoop: true);
            return;
        }
        task.AwaitExecution(execution);
    }

    /// <summary>A task finished on the logical unit (inline or from its continuation): queue its response.</summary>
    internal void OnTaskExecuted(IscsiTask task, bool onReceiveLoop)
    {
        task.State = IscsiTaskState.Done;
        Enqueue(new OutItem { Kind = OutKind.TaskResponse, Task = task }, onReceiveLoop);
    }

    /// <summary>
    /// Receive loop: tasks an abort from another session (or PREEMPT AND ABORT) dropped while they
    /// were waiting for data end now, so they leave the task table (and free their tag) without
    /// waiting for data the initiator may never send; a data segment being received for one is
    /// read on and dropped.
    /// </summary>
    private void EndDroppedCollectingTasks()
    {
        List<IscsiTask>? dropped = null;
        lock (_taskLock)
        {
            foreach (IscsiTask task in _tasks.Values)
                if (task.Dropped && task.State == IscsiTaskState.Collecting) (dropped ??= new()).Add(task);
        }
        if (dropped is null) return;
        foreach (IscsiTask task in dropped)
        {
            if (ReferenceEquals(task, _payloadTask))
            {
                _payloadKind = PayloadKind.Discard;
                _payloadTask = null;
                _payloadTarget = null;
            }
            EndCollecting(task);
        }
        _logger.LogDebug("iscsi {Peer}: {Count} aborted task(s) that were waiting for data ended", Peer, dropped.Count);
    }

    // ---- Data-Out ----

    private void HandleDataOut(in IscsiPduHeader header)
    {
        int dataBytes = header.DataSegmentBytes;
        uint itt = header.InitiatorTaskTag;
        uint ttt = header.Word20;
        uint offset = header.Word40;
        IscsiTask? task = FindTask(itt);
        if (task is null || task.State != IscsiTaskState.Collecting)
        {
            // A task aborted by task management may still receive data; anything else is an initiator error.
            _logger.LogDebug("iscsi {Peer}: Data-Out for unknown or finished task 0x{Itt:x8} dropped", Peer, itt);
            BeginDiscard(dataBytes);
            return;
        }
        bool solicited = ttt != IscsiReservedTag.None;
        string? error = null;
        if (solicited && (ttt != task.TargetTransferTag || task.OutstandingR2T == 0)) error = $"unknown target transfer tag 0x{ttt:x8}";
        else if (!solicited && task.UnsolicitedDone) error = "unsolicited Data-Out after the unsolicited sequence ended";
        else if (!solicited && (long)offset + dataBytes > _parameters.FirstBurstBytes) error = "unsolicited data beyond FirstBurstLength";
        else if ((long)offset + dataBytes > task.ExpectedDataTransferLength) error = "Data-Out beyond the expected data transfer length";

        if (error is not null)
        {
            _logger.LogWarning("iscsi {Peer}: Data-Out for task 0x{Itt:x8} rejected: {Reason}", Peer, itt, error);
            QueueReject(in header, IscsiRejectReason.ProtocolError);
            BeginDiscard(dataBytes);
            return;
        }

        // DataPDUInOrder=Yes and DataSequenceInOrder=Yes: Data-Out PDUs of a sequence arrive in order
        // with DataSN 0, 1, ...; a wrong DataSN at ErrorRecoveryLevel 0 fails the command (the data is dropped).
        uint dataSn = header.Word36;
        if (dataSn != task.NextDataSn && !task.Absorbing)
        {
            _logger.LogWarning("iscsi {Peer}: Data-Out for task 0x{Itt:x8} with DataSN {DataSn}, expected {Expected}; the command fails",
                Peer, itt, dataSn, task.NextDataSn);
            PresetCheckCondition(task, SenseKey.AbortedCommand, Asc.DataPhaseError);
        }
        task.NextDataSn = header.Final ? 0 : dataSn + 1;

        _payloadFinal = header.Final;
        _payloadSolicited = solicited;
        if (dataBytes == 0)
        {
            BeginPayload(PayloadKind.DataOut, task, null, 0, 0, in header);
            FinishPayload();
            return;
        }
        BeginPayload(PayloadKind.DataOut, task, task.Absorbing ? null : task.DataOut, (int)offset, dataBytes, in header);
    }
}
