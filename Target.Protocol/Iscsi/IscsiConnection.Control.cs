// Full feature phase, non-SCSI requests: NOP-Out (pings both ways), Text (SendTargets and
// declarations), Logout, Task Management, and Reject for everything a target must refuse.
using System.Text;
using Microsoft.Extensions.Logging;
using Target.Protocol.Scsi;

namespace Target.Protocol.Iscsi;

internal sealed partial class IscsiConnection
{
    // A long Text response being handed out in pieces (C bit + target transfer tag).
    private byte[]? _textPending;
    private int _textPendingOffset;
    private uint _textPendingTtt;
    private readonly MemoryStream _textRequest = new();

    /// <summary>Handles a wholly buffered non-data PDU. True when the connection must stop reading.</summary>
    private bool HandleControlPdu(in IscsiPduHeader header, ReadOnlySpan<byte> data)
    {
        switch (header.Opcode)
        {
            case IscsiOpcode.NopOut:
                HandleNopOut(in header, data);
                return false;
            case IscsiOpcode.TextRequest:
                HandleText(in header, data);
                return false;
            case IscsiOpcode.LogoutRequest:
                HandleLogout(in header);
                return false;
            case IscsiOpcode.TaskManagementRequest:
                HandleTaskManagement(in header);
                return false;
            case IscsiOpcode.LoginRequest:
                _logger.LogWarning("iscsi {Peer}: Login Request in the full feature phase; rejected", Peer);
                QueueReject(in header, IscsiRejectReason.ProtocolError);
                return false;
            case IscsiOpcode.SnackRequest:
                _logger.LogWarning("iscsi {Peer}: SNACK at ErrorRecoveryLevel 0; rejected", Peer);
                QueueReject(in header, IscsiRejectReason.ProtocolError);
                return false;
            default:
                _logger.LogWarning("iscsi {Peer}: unknown opcode 0x{Opcode:x2}; rejected", Peer, (byte)header.Opcode);
                QueueReject(in header, IscsiRejectReason.CommandNotSupported, releasesCmdSn: !header.Immediate && AcceptCmdSn(in header));
                return false;
        }
    }

    // ---- NOP ----

    private void HandleNopOut(in IscsiPduHeader header, ReadOnlySpan<byte> data)
    {
        uint itt = header.InitiatorTaskTag;
        uint ttt = header.Word20;
        if (itt == IscsiReservedTag.None)
        {
            // An answer to our ping (TTT echoed) or a one-way keep-alive: no reply.
            if (ttt != IscsiReservedTag.None && ttt == Volatile.Read(ref _pingTtt)) Volatile.Write(ref _pingSentTicks, 0);
            return;
        }
        if (!AcceptCmdSn(in header)) return;
        int echo = Math.Min(data.Length, _parameters.InitiatorMaxRecvDataSegmentBytes);
        var control = new IscsiControlPdu { ReleasesCmdSn = !header.Immediate };
        IscsiPduWriter.NopIn(control.Bhs, header.LunField, itt, IscsiReservedTag.None, echo);
        if (echo > 0)
        {
            control.Data = data.Slice(0, echo).ToArray();
            control.DataLength = echo;
        }
        QueueControl(control);
    }

    // ---- Text ----

    private void HandleText(in IscsiPduHeader header, ReadOnlySpan<byte> data)
    {
        if (!AcceptCmdSn(in header)) return;
        bool release = !header.Immediate;
        uint itt = header.InitiatorTaskTag;
        uint ttt = header.Word20;
        bool more = (header.Flags & IscsiFlags.Continue) != 0;

        if (ttt != IscsiReservedTag.None)
        {
            if (_textPending is not null && ttt == _textPendingTtt && data.Length == 0)
            {
                SendTextPiece(header.LunField, itt, release);
                return;
            }
            _logger.LogWarning("iscsi {Peer}: Text Request with unknown target transfer tag 0x{Ttt:x8}; rejected", Peer, ttt);
            QueueReject(in header, IscsiRejectReason.InvalidPduField, release);
            return;
        }
        _textPending = null;

        if (_textRequest.Length + data.Length > IscsiLimits.TextBytesMax)
        {
            _textRequest.SetLength(0);
            QueueReject(in header, IscsiRejectReason.ProtocolError, release);
            return;
        }
        _textRequest.Write(data);
        if (more)
        {
            // The initiator continues its text: acknowledge with an empty response.
            var ack = new IscsiControlPdu { ReleasesCmdSn = release };
            IscsiPduWriter.TextResponse(ack.Bhs, final: false, more: false, header.LunField, itt, NextTargetTransferTag(), 0);
            QueueControl(ack);
            return;
        }
        byte[] text = _textRequest.ToArray();
        _textRequest.SetLength(0);

        var pairs = new List<KeyValuePair<string, string>>();
        if (!IscsiText.TryParse(text, pairs, out string? error))
        {
            _logger.LogWarning("iscsi {Peer}: bad Text Request: {Error}; rejected", Peer, error);
            QueueReject(in header, IscsiRejectReason.ProtocolError, release);
            return;
        }

        var reply = new IscsiTextWriter();
        foreach (KeyValuePair<string, string> pair in pairs)
        {
            switch (pair.Key)
            {
                case "SendTargets":
                    SendTargets(pair.Value, reply);
                    break;
                case "MaxRecvDataSegmentLength":
                    if (IscsiValues.TryParseNumber(pair.Value, IscsiLimits.MaxRecvDataSegmentBytesMin, IscsiLimits.MaxRecvDataSegmentBytesMax, out long mrdsl))
                        _parameters.InitiatorMaxRecvDataSegmentBytes = (int)mrdsl;
                    else
                        reply.Add(pair.Key, IscsiValues.Reject);
                    break;
                case "HeaderDigest":
                case "DataDigest":
                case "MaxBurstLength":
                case "FirstBurstLength":
                case "InitialR2T":
                case "ImmediateData":
                case "MaxOutstandingR2T":
                case "DataPDUInOrder":
                case "DataSequenceInOrder":
                case "ErrorRecoveryLevel":
                case "MaxConnections":
                case "DefaultTime2Wait":
                case "DefaultTime2Retain":
                case "SessionType":
                case "InitiatorName":
                case "TargetName":
                case "AuthMethod":
                    // Leading-only or login-only keys cannot change in the full feature phase.
                    reply.Add(pair.Key, IscsiValues.Reject);
                    break;
                default:
                    reply.Add(pair.Key, IscsiValues.NotUnderstood);
                    break;
            }
        }
        _textPending = reply.ToArray();
        _textPendingOffset = 0;
        _textPendingTtt = NextTargetTransferTag();
        SendTextPiece(header.LunField, itt, release);
    }

    /// <summary>Sends the next piece of the pending Text response (at most the initiator's MaxRecvDataSegmentLength).</summary>
    private void SendTextPiece(ulong lunField, uint itt, bool release)
    {
        byte[] text = _textPending!;
        int piece = Math.Min(text.Length - _textPendingOffset, _parameters.InitiatorMaxRecvDataSegmentBytes);
        bool last = _textPendingOffset + piece == text.Length;
        var control = new IscsiControlPdu { ReleasesCmdSn = release };
        IscsiPduWriter.TextResponse(control.Bhs, final: last, more: !last, lunField, itt, last ? IscsiReservedTag.None : _textPendingTtt, piece);
        control.Data = text.AsSpan(_textPendingOffset, piece).ToArray();
        control.DataLength = piece;
        _textPendingOffset += piece;
        if (last) _textPending = null;
        QueueControl(control);
    }

    private void SendTargets(string value, IscsiTextWriter reply)
    {
        string address = _options.AdvertisedAddress ?? FormatAddress(_socket.LocalEndPoint);
        string portal = $"{address},{IscsiLimits.TargetPortalGroupTag}";
        if (value == "All")
        {
            if (!_discovery)
            {
                // "All" belongs to discovery sessions; a normal session learns about its own target.
                AddTarget(_parameters.TargetName!);
                return;
            }
            foreach (IscsiTarget target in _server.Catalog.ListTargets())
            {
                if (_parameters.InitiatorName.Length > 0 && !_options.IsInitiatorAllowed(target.Name, _parameters.InitiatorName)) continue;
                AddTarget(target.Name);
            }
            return;
        }
        if (value.Length == 0)
        {
            if (!_discovery) AddTarget(_parameters.TargetName!);
            return;
        }
        if (_server.Catalog.TryGetTarget(value, out IscsiTarget? named) && (_discovery || string.Equals(named.Name, _parameters.TargetName, StringComparison.OrdinalIgnoreCase)))
            AddTarget(named.Name);

        void AddTarget(string name)
        {
            reply.Add("TargetName", name);
            reply.Add("TargetAddress", portal);
        }
    }

    // ---- Logout ----

    private void HandleLogout(in IscsiPduHeader header)
    {
        if (!AcceptCmdSn(in header)) return;
        byte reason = (byte)(header.Flags & 0x7F);
        ushort cid = (ushort)(header.Span[20] << 8 | header.Span[21]);
        byte response = IscsiLogoutResponse.Closed;
        if (reason == IscsiLogoutReason.RemoveConnectionForRecovery) response = IscsiLogoutResponse.RecoveryNotSupported;
        else if (reason == IscsiLogoutReason.CloseConnection && cid != _loginCid) response = IscsiLogoutResponse.CidNotFound;
        else if (reason > IscsiLogoutReason.RemoveConnectionForRecovery)
        {
            QueueReject(in header, IscsiRejectReason.ProtocolError, releasesCmdSn: !header.Immediate);
            return;
        }

        var control = new IscsiControlPdu { ReleasesCmdSn = !header.Immediate, CloseAfterSend = response == IscsiLogoutResponse.Closed };
        IscsiPduWriter.LogoutResponse(control.Bhs, response, header.InitiatorTaskTag, (ushort)_parameters.DefaultTime2Wait, (ushort)_parameters.DefaultTime2Retain);
        if (response != IscsiLogoutResponse.Closed)
        {
            QueueControl(control);
            return;
        }
        _logger.LogDebug("iscsi {Peer}: logout (reason {Reason})", Peer, reason);
        _stopReading = true;
        _ = SendLogoutResponseAfterDrainAsync(control);
    }

    /// <summary>
    /// Commands still running finish (and their responses go out) before the logout response. The
    /// wait is bounded by AbortWaitTimeout: past it the answer is "cleanup failed" (RFC 7143
    /// 11.15.1) and the connection closes anyway, without the responses of those still running.
    /// The I_T nexus is detached (its SPC-2 reservation released) before the response is queued.
    /// </summary>
    private async Task SendLogoutResponseAfterDrainAsync(IscsiControlPdu control)
    {
        if (!await WaitForTasksAsync().ConfigureAwait(false))
        {
            _logger.LogWarning("iscsi {Peer}: logout of session {Tsih}: {Count} task(s) still running after {Seconds} s; answering cleanup failed and closing",
                Peer, Tsih, TaskCount, _options.AbortWaitTimeout.TotalSeconds);
            control.Bhs[2] = IscsiLogoutResponse.CleanupFailed;
        }
        // The nexus ends before the initiator hears that it did: an initiator that logs in again
        // (or another that RESERVEs) right after the response must find the reservation released.
        DetachNexus();
        QueueControl(control, onReceiveLoop: false);
    }

    // ---- Task management ----

    private void HandleTaskManagement(in IscsiPduHeader header)
    {
        if (!AcceptCmdSn(in header)) return;
        byte function = (byte)(header.Flags & 0x7F);
        uint referencedTag = header.Word20;
        uint referencedCmdSn = header.Word32;
        ulong lun = ScsiCdb.DecodeLun(header.Span.Slice(8, 8));
        var control = new IscsiControlPdu { ReleasesCmdSn = !header.Immediate };
        var pending = new PendingAbort();
        byte response;
        int aborted = 0;
        uint additional = 0;

        switch (function)
        {
            case IscsiTaskFunction.AbortTask:
                {
                    OwnAbort outcome = AbortOwnTask(referencedTag, lun, pending);
                    if (outcome == OwnAbort.Aborted)
                    {
                        aborted = 1;
                        response = IscsiTaskResponse.FunctionComplete;
                    }
                    else if (outcome == OwnAbort.NotFound && !SerialLess(referencedCmdSn, _expCmdSn) && SerialLess(referencedCmdSn, header.CmdSn))
                    {
                        // RFC 7143 11.5.1 b): a command not received yet (inside the window, before this
                        // request) is considered received and done.
                        response = IscsiTaskResponse.FunctionComplete;
                    }
                    else
                    {
                        // Not found, or its response is already on its way: the task completed.
                        response = IscsiTaskResponse.TaskDoesNotExist;
                    }
                    break;
                }
            case IscsiTaskFunction.AbortTaskSet:
                if (lun != 0)
                {
                    response = IscsiTaskResponse.LunDoesNotExist;
                    break;
                }
                aborted = AbortOwnTasks(pending);
                response = IscsiTaskResponse.FunctionComplete;
                break;
            case IscsiTaskFunction.ClearTaskSet:
                if (lun != 0)
                {
                    response = IscsiTaskResponse.LunDoesNotExist;
                    break;
                }
                // One shared task set per logical unit: every session's tasks go (SAM-5 7.4).
                aborted = AbortOwnTasks(pending);
                aborted += AbortOtherSessions(pending, Asc.CommandsClearedByAnotherInitiator);
                response = IscsiTaskResponse.FunctionComplete;
                break;
            case IscsiTaskFunction.LogicalUnitReset:
                if (lun != 0)
                {
                    response = IscsiTaskResponse.LunDoesNotExist;
                    break;
                }
                aborted = AbortOwnTasks(pending);
                aborted += AbortOtherSessions(pending, unitAttention: null);
                Unit?.Reset(_nexus);
                response = IscsiTaskResponse.FunctionComplete;
                break;
            case IscsiTaskFunction.TargetWarmReset:
            case IscsiTaskFunction.TargetColdReset:
                // A target is one logical unit here: the reset reaches every session on it.
                aborted = AbortOwnTasks(pending);
                aborted += AbortOtherSessions(pending, unitAttention: null);
                Unit?.Reset(_nexus);
                response = IscsiTaskResponse.FunctionComplete;
                break;
            case IscsiTaskFunction.ClearAca:
                response = IscsiTaskResponse.FunctionComplete;   // NACA is never set: there is no ACA to clear
                break;
            case IscsiTaskFunction.ItNexusReset:
                aborted = AbortOwnTasks(pending);
                response = IscsiTaskResponse.FunctionComplete;
                break;
            case IscsiTaskFunction.TaskReassign:
                response = IscsiTaskResponse.ReassignmentNotSupported;
                break;
            case IscsiTaskFunction.QueryTask:
                // SAM-5 7.9: FUNCTION SUCCEEDED when the task is in the task set, FUNCTION COMPLETE when not.
                if (lun != 0)
                {
                    response = IscsiTaskResponse.LunDoesNotExist;
                    break;
                }
                response = IsInTaskSet(referencedTag, lun) ? IscsiTaskResponse.FunctionSucceeded : IscsiTaskResponse.FunctionComplete;
                break;
            case IscsiTaskFunction.QueryTaskSet:
                // SAM-5 7.10: any task of this I_T nexus on the logical unit.
                if (lun != 0)
                {
                    response = IscsiTaskResponse.LunDoesNotExist;
                    break;
                }
                response = HasTasksInTaskSet(lun) ? IscsiTaskResponse.FunctionSucceeded : IscsiTaskResponse.FunctionComplete;
                break;
            case IscsiTaskFunction.QueryAsyncEvent:
                // SAM-5 7.8: a pending unit attention (there are no deferred errors) is reported, not cleared.
                if (lun != 0 || _nexus is null)
                {
                    response = IscsiTaskResponse.LunDoesNotExist;
                    break;
                }
                if (_nexus.TryPeekUnitAttention(out ushort ascAscq, out int pendingCount))
                {
                    response = IscsiTaskResponse.FunctionSucceeded;
                    additional = QueryAsyncEventInformation(ascAscq, pendingCount);
                }
                else
                {
                    response = IscsiTaskResponse.FunctionComplete;
                }
                break;
            default:
                response = IscsiTaskResponse.NotSupported;
                break;
        }

        IscsiPduWriter.TaskManagementResponse(control.Bhs, response, header.InitiatorTaskTag, additional);
        pending.Arm(_options.AbortWaitTimeout);
        _logger.LogInformation("iscsi {Peer}: task management function {Function} (ref 0x{Ref:x8}): response {Response}, {Count} task(s) aborted, {Running} still running",
            Peer, function, referencedTag, response, aborted, pending.Running);
        if (pending.Ended.IsCompleted)
        {
            QueueControl(control);
            return;
        }
        _ = SendTaskManagementResponseAsync(pending, control, function);
    }

    /// <summary>
    /// The response goes out once every aborted task has ended (its buffers are free, its tag may be
    /// reused, none of its writes is still to land). Past the bound the function is answered
    /// FUNCTION REJECTED: the initiator escalates (target reset, then a new session) rather than
    /// believe tasks are gone that are still running.
    /// </summary>
    private async Task SendTaskManagementResponseAsync(PendingAbort pending, IscsiControlPdu control, byte function)
    {
        bool ended = await pending.Ended.ConfigureAwait(false);
        if (!ended)
        {
            _logger.LogWarning("iscsi {Peer}: task management function {Function}: {Running} aborted task(s) still running after {Seconds} s; answering FUNCTION REJECTED",
                Peer, function, pending.Running, _options.AbortWaitTimeout.TotalSeconds);
            control.Bhs[2] = IscsiTaskResponse.FunctionRejected;
        }
        QueueControl(control, onReceiveLoop: false);
    }

    /// <summary>
    /// Task management that reaches the whole logical unit: the tasks of every other session on it
    /// are aborted (no response is sent for them; SAM-5 with TAS=0), <paramref name="pending"/>
    /// waits for those still running and, when given, a unit attention tells those initiators why.
    /// </summary>
    private int AbortOtherSessions(PendingAbort pending, ushort? unitAttention)
    {
        if (Unit is null) return 0;
        int total = 0;
        foreach (IscsiConnection other in _server.ConnectionsOf(Unit))
        {
            if (ReferenceEquals(other, this)) continue;
            int count = other.AbortTasksFromElsewhere(pending, except: null);
            total += count;
            if (unitAttention is ushort ua) other._nexus?.PostUnitAttention(ua);
            if (count > 0)
                _logger.LogInformation("iscsi {Peer}: {Count} task(s) of session {Tsih} aborted by task management from {Initiator}",
                    Peer, count, other.Tsih, InitiatorName);
        }
        return total;
    }

    /// <summary>PREEMPT AND ABORT (through the logical unit): this session's tasks but <paramref name="except"/> are aborted.</summary>
    public ScsiTaskSetAbort AbortTaskSet(ScsiTask? except)
    {
        var pending = new PendingAbort();
        int count = AbortTasksFromElsewhere(pending, except);
        pending.Arm(_options.AbortWaitTimeout);
        if (count > 0)
            _logger.LogInformation("iscsi {Peer}: {Count} task(s) of session {Tsih} aborted by PREEMPT AND ABORT, {Running} still running",
                Peer, count, Tsih, pending.Running);
        return new ScsiTaskSetAbort(count, pending.Ended);
    }

    /// <summary>
    /// Aborts this session's open tasks from any thread (another session's task management, or
    /// PREEMPT AND ABORT). Each is claimed, marked aborted and dropped: no response is sent for
    /// it, and <paramref name="pending"/> waits until it is released (as does a task an earlier
    /// abort left running). A task still collecting data never runs (Execute looks under the task
    /// lock): the receive loop is woken to end it at once, so no more R2Ts go out for it and its
    /// tag is free without waiting for data the initiator may never send.
    /// </summary>
    internal int AbortTasksFromElsewhere(PendingAbort pending, ScsiTask? except)
    {
        int count = 0;
        bool collecting = false;
        lock (_taskLock)
        {
            foreach (IscsiTask task in _tasks.Values)
            {
                if (ReferenceEquals(task, except) || task.State == IscsiTaskState.Done) continue;
                if (task.TryClaimForAbort())
                {
                    task.Aborted = true;
                    task.Dropped = true;
                    count++;
                }
                else if (!task.AbortClaimed)
                {
                    continue;   // its response is already on its way: it completed
                }
                WaitFor(task, pending);
                collecting |= task.State == IscsiTaskState.Collecting;
            }
        }
        if (collecting) WakeReceiveLoop();
        return count;
    }

    /// <summary>Receive loop: aborts this session's open tasks; <paramref name="pending"/> waits for all of them (and for earlier-aborted ones).</summary>
    private int AbortOwnTasks(PendingAbort pending)
    {
        List<IscsiTask>? collecting = null;
        int count = 0;
        lock (_taskLock)
        {
            foreach (IscsiTask task in _tasks.Values)
            {
                // Every task in the table arrived before this request (one connection, in order).
                if (task.State == IscsiTaskState.Done) continue;
                if (task.TryClaimForAbort())
                {
                    task.Aborted = true;
                    task.Dropped = true;
                    count++;
                }
                else if (!task.AbortClaimed)
                {
                    continue;
                }
                WaitFor(task, pending);
                if (task.State == IscsiTaskState.Collecting) (collecting ??= new()).Add(task);
            }
        }
        if (collecting is not null)
            foreach (IscsiTask task in collecting) EndCollecting(task);
        return count;
    }

    private enum OwnAbort : byte
    {
        Aborted,
        NotFound,
        OtherLun,
        /// <summary>Its response claimed it first, or an earlier abort (maybe from another session) did.</summary>
        AlreadyEnding,
    }

    /// <summary>
    /// Receive loop: ABORT TASK. The lookup and the claim happen under one hold of the task lock,
    /// so a task released (and reset for reuse) in between is never claimed. A task an earlier abort
    /// dropped is gone too, but its tag must be free when the answer arrives: it ends now if it was
    /// still collecting data and <paramref name="pending"/> waits for its release.
    /// </summary>
    private OwnAbort AbortOwnTask(uint itt, ulong lun, PendingAbort pending)
    {
        IscsiTask? task;
        OwnAbort outcome;
        bool collecting;
        lock (_taskLock)
        {
            if (!_tasks.TryGetValue(itt, out task)) return OwnAbort.NotFound;
            if (task.Lun != lun) return OwnAbort.OtherLun;
            if (task.TryClaimForAbort())
            {
                task.Aborted = true;
                task.Dropped = true;
                outcome = OwnAbort.Aborted;
            }
            else if (task.AbortClaimed)
            {
                outcome = OwnAbort.AlreadyEnding;
            }
            else
            {
                return OwnAbort.AlreadyEnding;   // its response is on its way
            }
            WaitFor(task, pending);
            collecting = task.State == IscsiTaskState.Collecting;
        }
        if (collecting) EndCollecting(task);
        return outcome;
    }

    /// <summary>A task of this session in the task set: not aborted and not finished (a finished one's status goes out before this answer).</summary>
    private bool IsInTaskSet(uint itt, ulong lun)
    {
        lock (_taskLock)
            return _tasks.TryGetValue(itt, out IscsiTask? task) && task.Lun == lun && !task.Dropped && task.State != IscsiTaskState.Done;
    }

    private bool HasTasksInTaskSet(ulong lun)
    {
        lock (_taskLock)
        {
            foreach (IscsiTask task in _tasks.Values)
                if (task.Lun == lun && !task.Dropped && task.State != IscsiTaskState.Done) return true;
        }
        return false;
    }

    /// <summary>
    /// ADDITIONAL RESPONSE INFORMATION of QUERY ASYNCHRONOUS EVENT (SAM-5): UADE DEPTH (01b one
    /// pending, 10b more than one) and SENSE KEY in the first byte, then ASC and ASCQ.
    /// </summary>
    internal static uint QueryAsyncEventInformation(ushort ascAscq, int pending)
    {
        uint depth = pending > 1 ? 2u : 1u;
        return (depth << 4 | (uint)SenseKey.UnitAttention) << 16 | ascAscq;
    }

    /// <summary>Receive loop: an aborted task still waiting for data ends now; the sender drops its response and releases it.</summary>
    private void EndCollecting(IscsiTask task)
    {
        task.State = IscsiTaskState.Done;
        Enqueue(new OutItem { Kind = OutKind.TaskResponse, Task = task }, onReceiveLoop: true);
    }

    /// <summary>Makes <paramref name="pending"/> wait for <paramref name="task"/> to be released. Under _taskLock.</summary>
    private static void WaitFor(IscsiTask task, PendingAbort pending)
    {
        pending.Add();
        (task.AbortWaiters ??= new List<PendingAbort>(1)).Add(pending);
    }

    private ushort _loginCid;

    internal static string Describe(ReadOnlySpan<byte> text) => Encoding.UTF8.GetString(text).Replace('\0', ' ');
}
