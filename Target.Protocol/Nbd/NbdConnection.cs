// One client connection: owns the socket, the receive buffer, the pool of operations and the
// sender. The handshake (NbdHandshake.cs) and the command handlers (NbdTransmission.cs) run on it.
//
// Invariants:
// - Only the receive loop reads the socket; only the sender loop writes it after the handshake.
// - The receive loop parses EVERY complete request already buffered and dispatches each at once
//   (the volume sees them concurrently); replies completed during that pass go out in one send.
// - Every rented operation is released exactly once, by the sender (after its reply is copied or
//   sent, or dropped when the socket is gone), or by the close path for an unfinished WRITE payload.
// - A framing error (bad magic, absurd length) closes this connection only; request errors get an
//   NBD error and the connection lives on.
using System.Buffers;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using Microsoft.Extensions.Logging;
using Target.Dedup;

namespace Target.Protocol.Nbd;

internal sealed record NbdSession(NbdExport Export, NbdTransmissionFlags Flags, bool StructuredReplies, bool BlockStatusEnabled);

internal sealed partial class NbdConnection : IServerConnection
{
    private readonly Socket _socket;
    private readonly INbdExportCatalog _catalog;
    private readonly NbdServerOptions _options;
    private readonly ILogger _logger;
    private readonly CancellationToken _serverToken;

    public string Peer { get; }

    // ---- receive side (receive loop only) ----
    private byte[] _receiveBuffer = [];
    private int _receiveStart;
    private int _receiveEnd;
    private NbdOperation? _pendingWrite;
    private int _pendingWriteFilled;
    private int _receiveLowWater = 1;
    private long _discardRemainingBytes;
    private bool _repliesQueuedInPass;

    // ---- operations ----
    private readonly object _poolLock = new();
    private readonly Stack<NbdOperation> _freeOperations = new();
    private int _inFlight;
    private long _inFlightBytes;
    private int _receiveWaitingForCapacity;
    private readonly AsyncSignal _capacitySignal = new(runContinuationsAsynchronously: true);
    private int _closing;
    private TaskCompletionSource? _drained;

    // ---- send side ----
    private readonly object _replyLock = new();
    private List<NbdOperation> _readyReplies = new(64);
    private List<NbdOperation> _sendingReplies = new(64);
    private readonly AsyncSignal _replySignal = new(runContinuationsAsynchronously: false);
    private byte[] _sendBuffer = [];
    private volatile bool _sendFailed;
    private volatile bool _senderStop;

    public NbdConnection(Socket socket, string peer, INbdExportCatalog catalog, NbdServerOptions options, ILogger logger, CancellationToken serverToken)
    {
        _socket = socket;
        Peer = peer;
        _catalog = catalog;
        _options = options;
        _logger = logger;
        _serverToken = serverToken;
    }

    /// <summary>Runs the connection to its end. Never throws: every failure ends this connection only.</summary>
    public async Task RunAsync()
    {
        _receiveBuffer = ArrayPool<byte>.Shared.Rent(NbdLimits.ReceiveBufferBytes);
        Task? sender = null;
        try
        {
            NbdSession? session;
            using (var handshakeTimeout = CancellationTokenSource.CreateLinkedTokenSource(_serverToken))
            {
                handshakeTimeout.CancelAfter(_options.HandshakeTimeout);
                try
                {
                    session = await new NbdHandshake(this, _catalog, _options, _logger).RunAsync(handshakeTimeout.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (!_serverToken.IsCancellationRequested)
                {
                    _logger.LogWarning("nbd {Peer}: handshake not finished within {TimeoutMs} ms, closing", Peer, (long)_options.HandshakeTimeout.TotalMilliseconds);
                    return;
                }
            }
            if (session is null) return;

            StartTransmission(session);
            _sendBuffer = ArrayPool<byte>.Shared.Rent(NbdLimits.SendBufferBytes);
            sender = SendLoopAsync();
            await ReceiveLoopAsync().ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            ServerSockets.LogConnectionEnd(ex, "nbd", Peer, _logger, _serverToken);
        }
        finally
        {
            await CloseAsync(sender).ConfigureAwait(false);
        }
    }

    // ---- buffered I/O used by the handshake ----

    internal ReadOnlySpan<byte> Buffered => _receiveBuffer.AsSpan(_receiveStart, _receiveEnd - _receiveStart);

    internal void Consume(int bytes) => _receiveStart += bytes;

    /// <summary>Reads until at least <paramref name="bytes"/> are buffered. False when the peer closed first.</summary>
    internal async ValueTask<bool> FillAsync(int bytes, CancellationToken ct)
    {
        if (bytes > _receiveBuffer.Length) throw new InvalidOperationException($"cannot buffer {bytes} bytes");
        while (_receiveEnd - _receiveStart < bytes)
        {
            if (_receiveBuffer.Length - _receiveStart < bytes) CompactReceiveBuffer();
            int received = await _socket.ReceiveAsync(_receiveBuffer.AsMemory(_receiveEnd), SocketFlags.None, ct).ConfigureAwait(false);
            if (received == 0) return false;
            _receiveEnd += received;
        }
        return true;
    }

    internal async ValueTask SendHandshakeAsync(ReadOnlyMemory<byte> bytes, CancellationToken ct)
    {
        while (!bytes.IsEmpty)
        {
            int sent = await _socket.SendAsync(bytes, SocketFlags.None, ct).ConfigureAwait(false);
            bytes = bytes.Slice(sent);
        }
    }

    private void CompactReceiveBuffer()
    {
        int buffered = _receiveEnd - _receiveStart;
        if (_receiveStart > 0)
        {
            Buffer.BlockCopy(_receiveBuffer, _receiveStart, _receiveBuffer, 0, buffered);
            _receiveStart = 0;
            _receiveEnd = buffered;
        }
    }

    // ---- receive loop ----

    private async Task ReceiveLoopAsync()
    {
        while (true)
        {
            bool stop = ProcessBuffered(out bool overCapacity);
            if (_repliesQueuedInPass)
            {
                _repliesQueuedInPass = false;
                _replySignal.Set();
            }
            if (stop) return;
            if (overCapacity)
            {
                // Requests stay buffered until enough in-flight ones finish; then parsing resumes.
                await WaitForCapacityAsync().ConfigureAwait(false);
                continue;
            }

            if (_pendingWrite is { } write && _receiveStart == _receiveEnd && write.PayloadBytes - _pendingWriteFilled >= NbdLimits.DirectReceiveMinBytes)
            {
                // Large payload: receive straight into the operation's buffer, no copy.
                ServerSockets.SetReceiveLowWater(_socket, ref _receiveLowWater, Math.Min(write.PayloadBytes - _pendingWriteFilled, ServerSockets.PayloadLowWaterBytes), "nbd", Peer, _logger);
                int direct = await _socket.ReceiveAsync(write.Payload.AsMemory(_pendingWriteFilled, write.PayloadBytes - _pendingWriteFilled), SocketFlags.None, _serverToken).ConfigureAwait(false);
                if (direct == 0)
                {
                    LogPeerClosed();
                    return;
                }
                _pendingWriteFilled += direct;
                continue;
            }

            if (_receiveStart == _receiveEnd)
            {
                _receiveStart = 0;
                _receiveEnd = 0;
            }
            else
            {
                CompactReceiveBuffer();
            }
            ServerSockets.SetReceiveLowWater(_socket, ref _receiveLowWater, 1, "nbd", Peer, _logger);
            int received = await _socket.ReceiveAsync(_receiveBuffer.AsMemory(_receiveEnd), SocketFlags.None, _serverToken).ConfigureAwait(false);
            if (received == 0)
            {
                LogPeerClosed();
                return;
            }
            _receiveEnd += received;
        }
    }

    private void LogPeerClosed()
    {
        if (_pendingWrite is not null || _discardRemainingBytes > 0 || _receiveEnd != _receiveStart)
            _logger.LogWarning("nbd {Peer}: client closed the connection in the middle of a request; the partial request is dropped", Peer);
        else
            _logger.LogDebug("nbd {Peer}: client closed the connection", Peer);
    }

    /// <summary>
    /// Parses and dispatches every complete request buffered, unless the in-flight limits are
    /// reached first (<paramref name="overCapacity"/>). True when the connection must stop reading.
    /// </summary>
    private bool ProcessBuffered(out bool overCapacity)
    {
        overCapacity = false;
        while (true)
        {
            if (_discardRemainingBytes > 0)
            {
                int dropped = (int)Math.Min(_discardRemainingBytes, _receiveEnd - _receiveStart);
                _receiveStart += dropped;
                _discardRemainingBytes -= dropped;
                if (_discardRemainingBytes > 0) return false;
            }

            if (_pendingWrite is { } write)
            {
                int copied = Math.Min(write.PayloadBytes - _pendingWriteFilled, _receiveEnd - _receiveStart);
                Buffer.BlockCopy(_receiveBuffer, _receiveStart, write.Payload!, _pendingWriteFilled, copied);
                _receiveStart += copied;
                _pendingWriteFilled += copied;
                if (_pendingWriteFilled < write.PayloadBytes) return false;
                _pendingWrite = null;
                _pendingWriteFilled = 0;
                Dispatch(write);
            }

            if (OverCapacity())
            {
                overCapacity = true;
                return false;
            }
            NbdParseStatus status = NbdRequest.TryParse(Buffered, out NbdRequestHeader header, out int consumed);
            if (status == NbdParseStatus.Incomplete) return false;
            if (status == NbdParseStatus.BadMagic)
            {
                _logger.LogWarning("nbd {Peer}: bad request magic 0x{Magic:x8}, closing this connection", Peer,
                    System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(Buffered));
                return true;
            }
            _receiveStart += consumed;
            if (!AcceptRequest(in header)) return true;
        }
    }

    private bool OverCapacity()
        => Volatile.Read(ref _inFlight) >= NbdLimits.QueueDepthMax || Interlocked.Read(ref _inFlightBytes) >= NbdLimits.InFlightBytesMax;

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WaitForCapacityAsync()
    {
        while (OverCapacity())
        {
            Interlocked.Exchange(ref _receiveWaitingForCapacity, 1);
            if (!OverCapacity()) break;
            await _capacitySignal.WaitAsync().ConfigureAwait(false);
        }
        Volatile.Write(ref _receiveWaitingForCapacity, 0);
    }

    // ---- operation pool ----

    internal NbdOperation RentOperation(in NbdRequestHeader header, long accountedBytes)
    {
        NbdOperation? operation = null;
        lock (_poolLock)
        {
            _freeOperations.TryPop(out operation);
        }
        operation ??= new NbdOperation(this);
        operation.Header = header;
        operation.AccountedBytes = accountedBytes;
        Interlocked.Increment(ref _inFlight);
        if (accountedBytes != 0) Interlocked.Add(ref _inFlightBytes, accountedBytes);
        return operation;
    }

    private void ReleaseOperation(NbdOperation operation)
    {
        long accounted = operation.AccountedBytes;
        operation.Reset();
        lock (_poolLock)
        {
            if (_freeOperations.Count < NbdLimits.QueueDepthMax) _freeOperations.Push(operation);
        }
        if (accounted != 0) Interlocked.Add(ref _inFlightBytes, -accounted);
        int left = Interlocked.Decrement(ref _inFlight);
        if (Volatile.Read(ref _receiveWaitingForCapacity) != 0) _capacitySignal.Set();
        if (left == 0 && Volatile.Read(ref _closing) != 0) _drained?.TrySetResult();
    }

    /// <summary>
    /// Queues a finished operation's reply. On the receive loop the send waits for the end of the parse
    /// pass; elsewhere the send loop is woken at once (it sends every reply ready by then in one send).
    /// </summary>
    internal void EnqueueReply(NbdOperation operation, bool onReceiveLoop)
    {
        lock (_replyLock)
        {
            _readyReplies.Add(operation);
        }
        if (onReceiveLoop) _repliesQueuedInPass = true;
        else _replySignal.Set();
    }

    // ---- send loop ----

    private async Task SendLoopAsync()
    {
        while (true)
        {
            await _replySignal.WaitAsync().ConfigureAwait(false);
            while (true)
            {
                List<NbdOperation> batch;
                lock (_replyLock)
                {
                    if (_readyReplies.Count == 0) break;
                    batch = _readyReplies;
                    _readyReplies = _sendingReplies;
                    _sendingReplies = batch;
                }

                int used = 0;
                for (int i = 0; i < batch.Count; i++)
                {
                    NbdOperation operation = batch[i];
                    if (_sendFailed)
                    {
                        ReleaseOperation(operation);
                        continue;
                    }
                    int replyBytes = operation.ReplyBytes;
                    if (replyBytes > NbdLimits.CoalesceReplyBytesMax)
                    {
                        if (used > 0)
                        {
                            await SendAllAsync(_sendBuffer.AsMemory(0, used)).ConfigureAwait(false);
                            used = 0;
                        }
                        await SendAllAsync(operation.Reply).ConfigureAwait(false);
                    }
                    else
                    {
                        if (used + replyBytes > _sendBuffer.Length)
                        {
                            await SendAllAsync(_sendBuffer.AsMemory(0, used)).ConfigureAwait(false);
                            used = 0;
                        }
                        operation.Reply.Span.CopyTo(_sendBuffer.AsSpan(used));
                        used += replyBytes;
                    }
                    ReleaseOperation(operation);
                }
                batch.Clear();
                if (used > 0) await SendAllAsync(_sendBuffer.AsMemory(0, used)).ConfigureAwait(false);
            }
            if (_senderStop) return;
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask SendAllAsync(ReadOnlyMemory<byte> bytes)
    {
        if (_sendFailed) return;
        if (!await ServerSockets.TrySendAllAsync(_socket, bytes, "nbd", Peer, _logger, _serverToken).ConfigureAwait(false)) _sendFailed = true;
    }

    // ---- close ----

    private void ShutdownSocket() => ServerSockets.Shutdown(_socket);

    private async Task CloseAsync(Task? sender)
    {
        try
        {
            if (_pendingWrite is { } write)
            {
                // The payload never arrived in full: the write is dropped, the volume never saw it.
                _pendingWrite = null;
                ReleaseOperation(write);
            }
            if (sender is not null)
            {
                _drained = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                Interlocked.Exchange(ref _closing, 1);
                if (Volatile.Read(ref _inFlight) != 0) await _drained.Task.ConfigureAwait(false);
                _senderStop = true;
                _replySignal.Set();
                await sender.ConfigureAwait(false);
            }
        }
        catch (Exception ex)
        {
            _logger.LogError(ex, "nbd {Peer}: error while closing", Peer);
        }
        finally
        {
            ShutdownSocket();
            _socket.Dispose();
            if (_receiveBuffer.Length > 0) ArrayPool<byte>.Shared.Return(_receiveBuffer);
            if (_sendBuffer.Length > 0) ArrayPool<byte>.Shared.Return(_sendBuffer);
            _receiveBuffer = [];
            _sendBuffer = [];
        }
    }

    /// <summary>Closes the socket now (server shutdown); the connection's loops then end.</summary>
    public void Abort()
    {
        ShutdownSocket();
    }
}
