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

    /// <summary>Commands still running finish (and their responses go out) before the logout response.</summary>
    private async Task SendLogoutResponseAfterDrainAsync(IscsiControlPdu control)
    {
        try
        {
            while (TaskCount > 0 && !_sendFailed)
                await Task.Delay(5, _serverToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            return;
        }
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
        byte response;
        var aborted = new List<IscsiTask>();

        switch (function)
        {
            case IscsiTaskFunction.AbortTask:
                {
                    IscsiTask? task = FindTask(referencedTag);
                    if (task is not null && !task.Dropped && task.Lun == lun && task.TryClaimForAbort())
                    {
                        aborted.Add(task);
                        response = IscsiTaskResponse.FunctionComplete;
                    }
                    else if (task is null && !SerialLess(referencedCmdSn, _expCmdSn) && SerialLess(referencedCmdSn, header.CmdSn))
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
                CollectTasks(aborted);
                response = IscsiTaskResponse.FunctionComplete;
                break;
            case IscsiTaskFunction.ClearTaskSet:
                if (lun != 0)
                {
                    response = IscsiTaskResponse.LunDoesNotExist;
                    break;
                }
                // One shared task set per logical unit: every session's tasks go (SAM-5 7.4).
                CollectTasks(aborted);
                AbortOtherSessions(Asc.CommandsClearedByAnotherInitiator);
                response = IscsiTaskResponse.FunctionComplete;
                break;
            case IscsiTaskFunction.LogicalUnitReset:
                if (lun != 0)
                {
                    response = IscsiTaskResponse.LunDoesNotExist;
                    break;
                }
                CollectTasks(aborted);
                AbortOtherSessions(unitAttention: null);
                Unit?.Reset(_nexus);
                response = IscsiTaskResponse.FunctionComplete;
                break;
            case IscsiTaskFunction.TargetWarmReset:
            case IscsiTaskFunction.TargetColdReset:
                // A target is one logical unit here: the reset reaches every session on it.
                CollectTasks(aborted);
                AbortOtherSessions(unitAttention: null);
                Unit?.Reset(_nexus);
                response = IscsiTaskResponse.FunctionComplete;
                break;
            case IscsiTaskFunction.ClearAca:
                response = IscsiTaskResponse.FunctionComplete;   // NACA is never set: there is no ACA to clear
                break;
            case IscsiTaskFunction.ItNexusReset:
                CollectTasks(aborted);
                response = IscsiTaskResponse.FunctionComplete;
                break;
            case IscsiTaskFunction.TaskReassign:
                response = IscsiTaskResponse.ReassignmentNotSupported;
                break;
            default:
                response = IscsiTaskResponse.NotSupported;
                break;
        }

        IscsiPduWriter.TaskManagementResponse(control.Bhs, response, header.InitiatorTaskTag);
        _logger.LogInformation("iscsi {Peer}: task management function {Function} (ref 0x{Ref:x8}): response {Response}, {Count} task(s) aborted",
            Peer, function, referencedTag, response, aborted.Count);
        if (aborted.Count == 0)
        {
            QueueControl(control);
            return;
        }
        var pending = new PendingTaskManagement { Response = control, Remaining = aborted.Count };
        lock (_taskLock)
        {
            foreach (IscsiTask task in aborted) _abortWaiters[task] = pending;
        }
        foreach (IscsiTask task in aborted)
        {
            task.Dropped = true;
            task.Aborted = true;
            if (task.State == IscsiTaskState.Collecting)
            {
                task.State = IscsiTaskState.Done;
                Enqueue(new OutItem { Kind = OutKind.TaskResponse, Task = task }, onReceiveLoop: true);
            }
            // Executing tasks: their completion goes to the sender, which drops the response and releases them.
        }
    }

    /// <summary>
    /// Task management that reaches the whole logical unit: the tasks of every other session on it
    /// are aborted (no response is sent for them; SAM-5 with TAS=0) and, when given, a unit
    /// attention tells those initiators why.
    /// </summary>
    private void AbortOtherSessions(ushort? unitAttention)
    {
        if (Unit is null) return;
        foreach (IscsiConnection other in _server.ConnectionsOf(Unit))
        {
            if (ReferenceEquals(other, this)) continue;
            int count = other.AbortTasksForOtherNexus();
            if (unitAttention is ushort ua) other._nexus?.PostUnitAttention(ua);
            if (count > 0)
                _logger.LogInformation("iscsi {Peer}: {Count} task(s) of session {Tsih} aborted by task management from {Initiator}",
                    Peer, count, other.Tsih, InitiatorName);
        }
    }

    /// <summary>Called from another session's receive loop: marks this session's open tasks aborted (thread-safe).</summary>
    internal int AbortTasksForOtherNexus()
    {
        int count = 0;
        lock (_taskLock)
        {
            foreach (IscsiTask task in _tasks.Values)
            {
                if (task.Dropped || task.State == IscsiTaskState.Done || !task.TryClaimForAbort()) continue;
                task.Aborted = true;
                task.Dropped = true;
                count++;
            }
        }
        // Collecting tasks end when their receive loop next looks at them (Execute skips dropped
        // tasks); executing ones finish in the engine and their responses are dropped.
        return count;
    }

    /// <summary>The tasks of this session still collecting data or running.</summary>
    private void CollectTasks(List<IscsiTask> into)
    {
        lock (_taskLock)
        {
            foreach (IscsiTask task in _tasks.Values)
            {
                // Every task in the table arrived before this request (one connection, in order).
                if (task.Dropped || task.State == IscsiTaskState.Done || !task.TryClaimForAbort()) continue;
                into.Add(task);
            }
        }
    }

    private ushort _loginCid;

    internal static string Describe(ReadOnlySpan<byte> text) => Encoding.UTF8.GetString(text).Replace('\0', ' ');
}
