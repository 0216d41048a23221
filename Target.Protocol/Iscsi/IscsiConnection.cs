// One iSCSI connection (and, with MaxConnections=1, its session): owns the socket, the receive
// buffer, the task pool and the sender. Login runs first (request/response on this task); then
// the receive loop (IscsiConnection.Receive.cs) and the send loop (IscsiConnection.Send.cs) run
// the full feature phase.
//
// Invariants:
// - Only the receive loop reads the socket; after login only the send loop writes it.
// - StatSN is assigned by the sender in send order; ExpCmdSN is advanced only by the receive loop;
//   MaxCmdSN only grows (one step per finished non-immediate command), so at most QueueDepth
//   commands are in flight and the window never shrinks.
// - A framing error (header digest, absurd length, login violation) closes this connection only;
//   a request error gets a Reject or CHECK CONDITION and the connection lives on.
// - On close, tasks still running on the logical unit are waited for, at most AbortWaitTimeout
//   (shared with a logout's wait); a task's buffers return only when it has ended, on whichever
//   path releases it (the sender, or Enqueue once the sender is gone).
using System.Buffers;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Target.Protocol.Nbd;
using Target.Protocol.Scsi;

namespace Target.Protocol.Iscsi;

internal sealed partial class IscsiConnection : IServerConnection, IScsiTaskSet
{
    private readonly Socket _socket;
    private readonly IscsiServer _server;
    private readonly IscsiServerOptions _options;
    private readonly ILogger _logger;
    private readonly CancellationToken _serverToken;

    // ---- receive side (receive loop only) ----
    private byte[] _rx = [];
    private int _rxStart;
    private int _rxEnd;

    // ---- session ----
    private IscsiSessionParameters _parameters = new();
    private bool _headerDigest;
    private bool _dataDigest;
    private ScsiItNexus? _nexus;
    private bool _discovery;
    private bool _fullFeature;

    // ---- sequence numbers ----
    private uint _statSn;               // sender only (after login)
    private uint _expCmdSn;             // receive loop writes; sender reads
    private uint _maxCmdSn;             // sender writes; receive loop reads
    private long _lastReceiveTicks;

    public IscsiConnection(Socket socket, string peer, IscsiServer server, CancellationToken serverToken)
    {
        _socket = socket;
        Peer = peer;
        _server = server;
        _options = server.Options;
        _logger = server.Logger;
        _serverToken = serverToken;
    }

    public string Peer { get; }

    public ushort Tsih { get; private set; }

    public ulong Isid { get; private set; }

    public string InitiatorName => _parameters.InitiatorName;

    public string? TargetName => _parameters.TargetName;

    public ScsiLogicalUnit? Unit { get; private set; }

    internal IscsiSessionParameters Parameters => _parameters;

    /// <summary>Runs the connection to its end. Never throws: every failure ends this connection only.</summary>
    public async Task RunAsync()
    {
        _rx = ArrayPool<byte>.Shared.Rent(IscsiLimits.ReceiveBufferBytes);
        Task? sender = null;
        Task? pinger = null;
        using var pingStop = new CancellationTokenSource();
        try
        {
            bool loggedIn;
            using (var loginTimeout = CancellationTokenSource.CreateLinkedTokenSource(_serverToken))
            {
                loginTimeout.CancelAfter(_options.LoginTimeout);
                try
                {
                    loggedIn = await LoginAsync(loginTimeout.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (!_serverToken.IsCancellationRequested)
                {
                    _logger.LogWarning("iscsi {Peer}: login not finished within {Seconds} s, closing", Peer, _options.LoginTimeout.TotalSeconds);
                    return;
                }
            }
            if (!loggedIn) return;

            _fullFeature = true;
            _tx = ArrayPool<byte>.Shared.Rent(IscsiLimits.SendBufferBytes);
            sender = SendLoopAsync();
            if (_options.NopInInterval > TimeSpan.Zero) pinger = PingLoopAsync(pingStop.Token);
            await ReceiveLoopAsync().ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            ServerSockets.LogConnectionEnd(ex, "iscsi", Peer, _logger, _serverToken);
        }
        finally
        {
            pingStop.Cancel();
            if (pinger is not null)
            {
                try
                {
                    await pinger.ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                }
            }
            await CloseAsync(sender).ConfigureAwait(false);
        }
    }

    // ---- login phase ----

    /// <summary>Reads until <paramref name="bytes"/> are buffered. False when the peer closed first.</summary>
    private async ValueTask<bool> FillAsync(int bytes, CancellationToken ct)
    {
        if (bytes > _rx.Length) throw new InvalidOperationException($"cannot buffer {bytes} bytes");
        while (_rxEnd - _rxStart < bytes)
        {
            if (_rx.Length - _rxStart < bytes) CompactReceiveBuffer();
            int received = await _socket.ReceiveAsync(_rx.AsMemory(_rxEnd), SocketFlags.None, ct).ConfigureAwait(false);
            if (received == 0) return false;
            _rxEnd += received;
            Volatile.Write(ref _lastReceiveTicks, Environment.TickCount64);
        }
        return true;
    }

    private void CompactReceiveBuffer()
    {
        int buffered = _rxEnd - _rxStart;
        if (_rxStart > 0)
        {
            Buffer.BlockCopy(_rx, _rxStart, _rx, 0, buffered);
            _rxStart = 0;
            _rxEnd = buffered;
        }
    }

    private async ValueTask SendDirectAsync(ReadOnlyMemory<byte> bytes, CancellationToken ct)
    {
        while (!bytes.IsEmpty)
        {
            int sent = await _socket.SendAsync(bytes, SocketFlags.None, ct).ConfigureAwait(false);
            bytes = bytes.Slice(sent);
        }
    }

    /// <summary>Runs the login phase. True when the connection entered the full feature phase.</summary>
    private async Task<bool> LoginAsync(CancellationToken ct)
    {
        var login = new IscsiLogin(_server.Catalog, _options, _server.SessionExists);
        uint statSn = 0;
        bool first = true;
        while (true)
        {
            if (!await FillAsync(IscsiLimits.BhsBytes, ct).ConfigureAwait(false))
            {
                _logger.LogDebug("iscsi {Peer}: closed during login", Peer);
                return false;
            }
            int ahsBytes = _rx[_rxStart + 4] * 4;
            if (!await FillAsync(IscsiLimits.BhsBytes + ahsBytes, ct).ConfigureAwait(false)) return false;
            IscsiPdu.TryParseHeader(_rx.AsSpan(_rxStart, _rxEnd - _rxStart), headerDigest: false, out IscsiPduHeader header);
            if (header.Opcode != IscsiOpcode.LoginRequest)
            {
                _logger.LogWarning("iscsi {Peer}: opcode 0x{Opcode:x2} before login completed, closing", Peer, (byte)header.Opcode);
                return false;
            }
            if (header.DataSegmentBytes > IscsiLimits.DefaultMaxRecvDataSegmentBytes * 8)
            {
                _logger.LogWarning("iscsi {Peer}: login PDU with {Bytes} bytes of text, closing", Peer, header.DataSegmentBytes);
                return false;
            }
            int total = header.HeaderBytes + header.WireDataBytes(dataDigest: false);
            if (!await FillAsync(total, ct).ConfigureAwait(false)) return false;
            ReadOnlySpan<byte> data = _rx.AsSpan(_rxStart + header.HeaderBytes, header.DataSegmentBytes);

            var request = IscsiLoginRequest.FromHeader(header);
            if (first)
            {
                statSn = request.ExpStatSn;
                first = false;
            }
            IscsiLoginReply reply = login.Process(request, data);
            _rxStart += total;

            ushort tsih = 0;
            if (reply.Outcome == IscsiLoginOutcome.Complete)
            {
                _parameters = login.Parameters;
                Isid = login.First.Isid;
                tsih = await _server.RegisterSessionAsync(this, _parameters.InitiatorName, Isid, _parameters.TargetName).ConfigureAwait(false);
                Tsih = tsih;
            }

            byte[] response = new byte[IscsiLimits.BhsBytes + IscsiPdu.Pad4(reply.Text.Length)];
            byte[] isid = new byte[6];
            request.WriteIsid(isid);
            IscsiPduWriter.LoginResponse(response, reply.StageFlags, isid, tsih, request.InitiatorTaskTag, reply.Status, reply.Text.Length);
            uint maxCmdSn = request.CmdSn + IscsiLimits.QueueDepth - 1;
            IscsiPduWriter.SetSequenceNumbers(response, statSn, request.CmdSn, maxCmdSn);
            reply.Text.CopyTo(response, IscsiLimits.BhsBytes);
            await SendDirectAsync(response, ct).ConfigureAwait(false);
            statSn++;

            switch (reply.Outcome)
            {
                case IscsiLoginOutcome.Failed:
                    _logger.LogWarning("iscsi {Peer}: login refused (status 0x{Status:x4}): {Reason}", Peer, reply.Status, login.FailureReason);
                    return false;
                case IscsiLoginOutcome.Complete:
                    _statSn = statSn;
                    _loginCid = login.First.Cid;
                    _expCmdSn = request.CmdSn;
                    _maxCmdSn = maxCmdSn;
                    _headerDigest = _parameters.HeaderDigest;
                    _dataDigest = _parameters.DataDigest;
                    _discovery = _parameters.SessionType == IscsiSessionType.Discovery;
                    if (!_discovery)
                    {
                        IscsiTarget target = login.Target!;
                        _nexus = new ScsiItNexus(_parameters.InitiatorName, isid, target.Name, IscsiLimits.TargetPortalGroupTag) { TaskSet = this };
                        Unit = _server.GetUnit(target);
                        Unit.Attach(_nexus);
                    }
                    _logger.LogInformation("iscsi {Peer}: {Initiator} logged in ({Type} session {Tsih}{Target}); {Parameters}",
                        Peer, _parameters.InitiatorName, _discovery ? "discovery" : "normal", tsih,
                        _discovery ? "" : " to " + _parameters.TargetName, _parameters);
                    return true;
            }
        }
    }

    // ---- close ----

    private void ShutdownSocket() => ServerSockets.Shutdown(_socket);

    /// <summary>Ends this session's I_T nexus on its logical unit (idempotent: logout, then close).</summary>
    private void DetachNexus()
    {
        if (_nexus is not null) Unit?.Detach(_nexus);
    }

    private async Task CloseAsync(Task? sender)
    {
        try
        {
            AbandonCollectingTasks();
            if (sender is not null)
            {
                if (!await WaitForTasksAsync().ConfigureAwait(false))
                    _logger.LogWarning("iscsi {Peer}: closing session {Tsih} with {Count} task(s) still running on the logical unit after {Seconds} s; each is released when it ends",
                        Peer, Tsih, TaskCount, _options.AbortWaitTimeout.TotalSeconds);
                _senderStop = true;
                _sendSignal.Set();
                await sender.ConfigureAwait(false);
            }
        }
        catch (Exception ex)
        {
            _logger.LogError(ex, "iscsi {Peer}: error while closing", Peer);
        }
        finally
        {
            if (Tsih != 0) _server.UnregisterSession(this);
            DetachNexus();
            ShutdownSocket();
            _socket.Dispose();
            if (_rx.Length > 0) ArrayPool<byte>.Shared.Return(_rx);
            if (_tx.Length > 0) ArrayPool<byte>.Shared.Return(_tx);
            _rx = [];
            _tx = [];
            if (_fullFeature)
                _logger.LogInformation("iscsi {Peer}: session {Tsih} of {Initiator} closed", Peer, Tsih, _parameters.InitiatorName);
        }
    }

    /// <summary>Closes the socket now (server shutdown, session reinstatement, dead peer); the loops then end.</summary>
    public void Abort()
    {
        ShutdownSocket();
    }

    // ---- target-initiated NOP-In pings (dead peer detection) ----

    private async Task PingLoopAsync(CancellationToken ct)
    {
        long intervalMs = (long)_options.NopInInterval.TotalMilliseconds;
        long timeoutMs = (long)_options.NopInTimeout.TotalMilliseconds;
        int tickMs = (int)Math.Clamp(intervalMs / 4, 10, 1000);
        Volatile.Write(ref _lastReceiveTicks, Environment.TickCount64);
        while (!ct.IsCancellationRequested)
        {
            await Task.Delay(tickMs, ct).ConfigureAwait(false);
            long now = Environment.TickCount64;
            long idleMs = now - Volatile.Read(ref _lastReceiveTicks);
            long pingSent = Volatile.Read(ref _pingSentTicks);
            if (pingSent != 0)
            {
                if (now - pingSent > timeoutMs)
                {
                    _logger.LogWarning("iscsi {Peer}: no answer to a NOP-In ping within {Ms} ms; the initiator is gone, closing session {Tsih}", Peer, timeoutMs, Tsih);
                    Abort();
                    return;
                }
                continue;
            }
            if (idleMs >= intervalMs) SendPing();
        }
    }

    internal static string FormatAddress(EndPoint? endPoint) => endPoint switch
    {
        IPEndPoint { AddressFamily: AddressFamily.InterNetworkV6 } ip => $"[{ip.Address}]:{ip.Port}",
        IPEndPoint ip => $"{ip.Address}:{ip.Port}",
        _ => "",
    };
}
