// Transmission phase: validates each request (flags, limits, range, read-only) and runs it on the
// volume, then encodes its reply. Request errors get an NBD error and the connection continues.
// Hot path rules: no allocation per request (pooled operations, rented buffers), no LINQ, no
// closures; a volume call that already completed is finished inline, otherwise the operation's
// cached continuation picks it up.
//
// Error choices (proto.md "Error values"): out-of-range READ/TRIM/CACHE/BLOCK_STATUS -> EINVAL,
// out-of-range WRITE/WRITE_ZEROES -> ENOSPC; longer than MaxRequestBytes -> EINVAL (EOVERFLOW
// for a READ with DF); unknown command or flag -> EINVAL; writes to a read-only export -> EPERM.
using System.Buffers;
using Microsoft.Extensions.Logging;
using Target.Dedup;

namespace Target.Protocol.Nbd;

internal sealed partial class NbdConnection
{
    private const NbdCommandFlags ReadFlagsAllowed = NbdCommandFlags.Fua | NbdCommandFlags.DontFragment;
    private const NbdCommandFlags WriteFlagsAllowed = NbdCommandFlags.Fua;
    private const NbdCommandFlags ZeroFlagsAllowed = NbdCommandFlags.Fua | NbdCommandFlags.NoHole | NbdCommandFlags.FastZero;
    private const NbdCommandFlags BlockStatusFlagsAllowed = NbdCommandFlags.Fua | NbdCommandFlags.ReqOne;

    private NbdSession _session = null!;
    private IBlockVolume _volume = null!;
    private ulong _sizeBytes;
    private bool _structured;
    private bool _readOnly;
    private bool _blockStatusEnabled;
    private bool _volumeReportsAllocation;
    private bool _fastZeroSupported;
    private int _holeReplyMinBytes;

    private void StartTransmission(NbdSession session)
    {
        _session = session;
        _volume = session.Export.Volume;
        _sizeBytes = (ulong)_volume.SizeBytes;
        _structured = session.StructuredReplies;
        _readOnly = (session.Flags & NbdTransmissionFlags.ReadOnly) != 0;
        _blockStatusEnabled = session.BlockStatusEnabled;
        _volumeReportsAllocation = (_volume.Capabilities & VolumeCapabilities.BlockStatus) != 0;
        _fastZeroSupported = (_volume.Capabilities & VolumeCapabilities.FastZero) != 0;
        _holeReplyMinBytes = Math.Max(1, _options.HoleReplyMinBytes);
        _logger.LogInformation("nbd {Peer}: serving export '{Export}' ({SizeBytes} bytes, flags 0x{Flags:x4}, structured {Structured})",
            Peer, session.Export.Name, _sizeBytes, (ushort)session.Flags, _structured);
    }

    private bool InRange(ulong offset, uint length) => offset <= _sizeBytes && length <= _sizeBytes - offset;

    /// <summary>Takes one parsed header. False when the connection must stop reading (DISC or an absurd length).</summary>
    private bool AcceptRequest(in NbdRequestHeader header)
    {
        switch (header.Command)
        {
            case NbdCommand.Disconnect:
                _logger.LogDebug("nbd {Peer}: client sent NBD_CMD_DISC", Peer);
                return false;

            case NbdCommand.Write:
                return AcceptWrite(in header);

            default:
                Dispatch(RentOperation(in header, 0));
                return true;
        }
    }

    private bool AcceptWrite(in NbdRequestHeader header)
    {
        uint length = header.Length;
        if (length > NbdLimits.DrainableWriteBytesMax)
        {
            _logger.LogWarning("nbd {Peer}: WRITE of {Length} bytes exceeds any sane limit, closing this connection", Peer, length);
            return false;
        }

        uint error = NbdError.None;
        string? message = null;
        if ((header.Flags & ~WriteFlagsAllowed) != 0) (error, message) = (NbdError.Invalid, "unsupported flags for WRITE");
        else if (length > NbdLimits.MaxRequestBytes) (error, message) = (NbdError.Invalid, "WRITE longer than the maximum block size");
        else if (_readOnly) (error, message) = (NbdError.Perm, "export is read-only");
        else if (!InRange(header.Offset, length)) (error, message) = (NbdError.NoSpace, "WRITE beyond the end of the export");

        if (error != NbdError.None)
        {
            // The payload is read and dropped so that the next request header is found.
            _discardRemainingBytes = length;
            NbdOperation failed = RentOperation(in header, 0);
            ReplyError(failed, error, message!);
            EnqueueReply(failed, onReceiveLoop: true);
            return true;
        }

        NbdOperation operation = RentOperation(in header, length);
        if (length == 0)
        {
            Dispatch(operation);
            return true;
        }
        operation.RentPayload((int)length);
        _pendingWrite = operation;
        _pendingWriteFilled = 0;
        return true;
    }

    /// <summary>Validates and starts a request whose payload (if any) is complete.</summary>
    private void Dispatch(NbdOperation operation)
    {
        ref readonly NbdRequestHeader header = ref operation.Header;
        try
        {
            switch (header.Command)
            {
                case NbdCommand.Read:
                    StartRead(operation);
                    return;
                case NbdCommand.Write:
                    StartIo(operation, _volume.WriteAsync((long)header.Offset, operation.Payload.AsMemory(0, operation.PayloadBytes),
                        (header.Flags & NbdCommandFlags.Fua) != 0 ? WriteFlags.Fua : WriteFlags.None, _serverToken), onReceiveLoop: true);
                    return;
                case NbdCommand.Flush:
                    if ((header.Flags & ~NbdCommandFlags.Fua) != 0) FinishError(operation, NbdError.Invalid, "unsupported flags for FLUSH");
                    else StartIo(operation, _volume.FlushAsync(_serverToken), onReceiveLoop: true);
                    return;
                case NbdCommand.Trim:
                    StartTrim(operation);
                    return;
                case NbdCommand.WriteZeroes:
                    StartWriteZeroes(operation);
                    return;
                case NbdCommand.Cache:
                    if ((header.Flags & ~NbdCommandFlags.Fua) != 0) FinishError(operation, NbdError.Invalid, "unsupported flags for CACHE");
                    else if (!InRange(header.Offset, header.Length)) FinishError(operation, NbdError.Invalid, "CACHE beyond the end of the export");
                    else FinishOk(operation, onReceiveLoop: true);
                    return;
                case NbdCommand.BlockStatus:
                    StartBlockStatus(operation);
                    return;
                default:
                    FinishError(operation, NbdError.Invalid, "unknown command");
                    return;
            }
        }
        catch (Exception ex)
        {
            // The volume threw instead of returning a faulted task.
            OnIoCompleted(operation, ex, onReceiveLoop: true);
        }
    }

    private void StartIo(NbdOperation operation, ValueTask task, bool onReceiveLoop)
    {
        if (task.IsCompleted)
        {
            Exception? error = null;
            try
            {
                task.GetAwaiter().GetResult();
            }
            catch (Exception ex)
            {
                error = ex;
            }
            OnIoCompleted(operation, error, onReceiveLoop);
            return;
        }
        operation.AwaitIo(task);
    }

    /// <summary>A volume call of this operation finished (inline or from its continuation).</summary>
    internal void OnIoCompleted(NbdOperation operation, Exception? error, bool onReceiveLoop)
    {
        if (error is not null)
        {
            ReplyException(operation, error);
            EnqueueReply(operation, onReceiveLoop);
            return;
        }
        ref readonly NbdRequestHeader header = ref operation.Header;
        if (header.Command == NbdCommand.Trim && operation.Step == 0 && (header.Flags & NbdCommandFlags.Fua) != 0)
        {
            // TRIM has no FUA of its own in the volume interface: make it durable with a flush.
            operation.Step = 1;
            ValueTask flush;
            try
            {
                flush = _volume.FlushAsync(_serverToken);
            }
            catch (Exception ex)
            {
                OnIoCompleted(operation, ex, onReceiveLoop);
                return;
            }
            StartIo(operation, flush, onReceiveLoop);
            return;
        }
        if (header.Command == NbdCommand.Read) ReplyReadData(operation);
        else operation.SetReply(operation.Small, NbdReplies.WriteSimpleReply(operation.Small, NbdError.None, header.Handle));
        EnqueueReply(operation, onReceiveLoop);
    }

    // ---- READ ----

    private int ReadDataOffset => _structured ? NbdReplies.OffsetDataPrefixBytes : NbdLimits.SimpleReplyHeaderBytes;

    private void StartRead(NbdOperation operation)
    {
        ref readonly NbdRequestHeader header = ref operation.Header;
        bool dontFragment = (header.Flags & NbdCommandFlags.DontFragment) != 0;
        if ((header.Flags & ~ReadFlagsAllowed) != 0 || (dontFragment && !_structured))
        {
            FinishError(operation, NbdError.Invalid, "unsupported flags for READ");
            return;
        }
        if (header.Length > NbdLimits.MaxRequestBytes)
        {
            FinishError(operation, dontFragment ? NbdError.Overflow : NbdError.Invalid, "READ longer than the maximum block size");
            return;
        }
        if (!InRange(header.Offset, header.Length))
        {
            FinishError(operation, NbdError.Invalid, "READ beyond the end of the export");
            return;
        }
        if (header.Length == 0)
        {
            int bytes = _structured
                ? NbdReplies.WriteNoneChunk(operation.Small, header.Handle)
                : NbdReplies.WriteSimpleReply(operation.Small, NbdError.None, header.Handle);
            operation.SetReply(operation.Small, bytes);
            EnqueueReply(operation, onReceiveLoop: true);
            return;
        }

        operation.AccountedBytes = header.Length;
        Interlocked.Add(ref _inFlightBytes, header.Length);
        if (_structured && !dontFragment && _volumeReportsAllocation && header.Length >= _holeReplyMinBytes)
        {
            _ = ReadSparseAsync(operation);
            return;
        }

        int dataOffset = ReadDataOffset;
        operation.Rented = ArrayPool<byte>.Shared.Rent(dataOffset + (int)header.Length);
        StartIo(operation, _volume.ReadAsync((long)header.Offset, operation.Rented.AsMemory(dataOffset, (int)header.Length), _serverToken), onReceiveLoop: true);
    }

    /// <summary>Puts the reply header in front of data already read into <see cref="NbdOperation.Rented"/>.</summary>
    private void ReplyReadData(NbdOperation operation)
    {
        ref readonly NbdRequestHeader header = ref operation.Header;
        byte[] buffer = operation.Rented!;
        int headerBytes = _structured
            ? NbdReplies.WriteOffsetDataPrefix(buffer, NbdReplyType.FlagDone, header.Handle, header.Offset, (int)header.Length)
            : NbdReplies.WriteSimpleReply(buffer, NbdError.None, header.Handle);
        operation.SetReply(buffer, headerBytes + (int)header.Length);
    }

    /// <summary>
    /// Structured READ that sends holes and zero extents as OFFSET_HOLE chunks and reads only the
    /// data extents. Slow path (long reads only), so a plain async method is fine here.
    /// </summary>
    private async Task ReadSparseAsync(NbdOperation operation)
    {
        NbdRequestHeader header = operation.Header;
        long start = (long)header.Offset;
        long end = start + header.Length;
        try
        {
            ExtentList extents = await _volume.GetAllocationAsync(start, header.Length, _serverToken).ConfigureAwait(false);

            // Pass 1: size the reply.
            int chunks = 0;
            bool anyZero = false;
            long replyBytes = 0;
            int index = 0;
            long position = start;
            while (NextReadPiece(extents, ref index, ref position, end, out long pieceStart, out bool zero))
            {
                anyZero |= zero;
                replyBytes += zero ? NbdReplies.OffsetHoleBytes : NbdReplies.OffsetDataPrefixBytes + (position - pieceStart);
                chunks++;
            }

            if (!anyZero)
            {
                operation.Rented = ArrayPool<byte>.Shared.Rent(NbdReplies.OffsetDataPrefixBytes + (int)header.Length);
                await _volume.ReadAsync(start, operation.Rented.AsMemory(NbdReplies.OffsetDataPrefixBytes, (int)header.Length), _serverToken).ConfigureAwait(false);
                ReplyReadData(operation);
                EnqueueReply(operation, onReceiveLoop: false);
                return;
            }

            // Pass 2: write the chunks, reading each data piece in place.
            byte[] buffer = ArrayPool<byte>.Shared.Rent((int)replyBytes);
            operation.Rented = buffer;
            int used = 0;
            int written = 0;
            index = 0;
            position = start;
            while (NextReadPiece(extents, ref index, ref position, end, out long pieceStart, out bool zero))
            {
                written++;
                ushort flags = written == chunks ? NbdReplyType.FlagDone : (ushort)0;
                int pieceBytes = (int)(position - pieceStart);
                if (zero)
                {
                    used += NbdReplies.WriteOffsetHole(buffer.AsSpan(used), flags, header.Handle, (ulong)pieceStart, (uint)pieceBytes);
                }
                else
                {
                    used += NbdReplies.WriteOffsetDataPrefix(buffer.AsSpan(used), flags, header.Handle, (ulong)pieceStart, pieceBytes);
                    await _volume.ReadAsync(pieceStart, buffer.AsMemory(used, pieceBytes), _serverToken).ConfigureAwait(false);
                    used += pieceBytes;
                }
            }
            operation.SetReply(buffer, used);
            EnqueueReply(operation, onReceiveLoop: false);
        }
        catch (Exception ex)
        {
            ReplyException(operation, ex);
            EnqueueReply(operation, onReceiveLoop: false);
        }
    }

    /// <summary>
    /// Next piece of a sparse read: a maximal run of extents that all read as zero (hole or zero
    /// extents) or all hold data, clipped to [position, end). Where the extent list does not cover
    /// the range (a gap), the rest is treated as data and read.
    /// </summary>
    private static bool NextReadPiece(ExtentList extents, ref int index, ref long position, long end, out long pieceStart, out bool zero)
    {
        pieceStart = position;
        zero = false;
        if (position >= end) return false;
        while (index < extents.Count && extents[index].Offset + extents[index].Length <= position) index++;
        if (index >= extents.Count || extents[index].Offset > position)
        {
            position = end;
            return true;
        }
        zero = extents[index].Kind != ExtentKind.Data;
        long pieceEnd = Math.Min(end, extents[index].Offset + extents[index].Length);
        index++;
        while (pieceEnd < end && index < extents.Count)
        {
            Extent next = extents[index];
            if (next.Offset != pieceEnd || (next.Kind != ExtentKind.Data) != zero) break;
            pieceEnd = Math.Min(end, next.Offset + next.Length);
            index++;
        }
        position = pieceEnd;
        return true;
    }

    // ---- TRIM / WRITE_ZEROES ----

    private void StartTrim(NbdOperation operation)
    {
        ref readonly NbdRequestHeader header = ref operation.Header;
        if ((header.Flags & ~NbdCommandFlags.Fua) != 0) FinishError(operation, NbdError.Invalid, "unsupported flags for TRIM");
        else if (_readOnly) FinishError(operation, NbdError.Perm, "export is read-only");
        else if (!InRange(header.Offset, header.Length)) FinishError(operation, NbdError.Invalid, "TRIM beyond the end of the export");
        else if (header.Length == 0) FinishOk(operation, onReceiveLoop: true);
        else StartIo(operation, _volume.TrimAsync((long)header.Offset, header.Length, _serverToken), onReceiveLoop: true);
    }

    private void StartWriteZeroes(NbdOperation operation)
    {
        ref readonly NbdRequestHeader header = ref operation.Header;
        bool fast = (header.Flags & NbdCommandFlags.FastZero) != 0;
        if ((header.Flags & ~ZeroFlagsAllowed) != 0) FinishError(operation, NbdError.Invalid, "unsupported flags for WRITE_ZEROES");
        else if (_readOnly) FinishError(operation, NbdError.Perm, "export is read-only");
        else if (!InRange(header.Offset, header.Length)) FinishError(operation, NbdError.NoSpace, "WRITE_ZEROES beyond the end of the export");
        else if (fast && !_fastZeroSupported) FinishError(operation, NbdError.NotSupported, "fast zero not supported by this volume");
        else if (header.Length == 0) FinishOk(operation, onReceiveLoop: true);
        else
        {
            ZeroFlags flags = ZeroFlags.None;
            if ((header.Flags & NbdCommandFlags.Fua) != 0) flags |= ZeroFlags.Fua;
            if ((header.Flags & NbdCommandFlags.NoHole) != 0) flags |= ZeroFlags.NoHole;
            if (fast) flags |= ZeroFlags.Fast;
            StartIo(operation, _volume.WriteZeroesAsync((long)header.Offset, header.Length, flags, _serverToken), onReceiveLoop: true);
        }
    }

    // ---- BLOCK_STATUS ----

    private void StartBlockStatus(NbdOperation operation)
    {
        ref readonly NbdRequestHeader header = ref operation.Header;
        if (!_blockStatusEnabled)
        {
            FinishError(operation, NbdError.Invalid, "no metadata context was negotiated");
            return;
        }
        if ((header.Flags & ~BlockStatusFlagsAllowed) != 0)
        {
            FinishError(operation, NbdError.Invalid, "unsupported flags for BLOCK_STATUS");
            return;
        }
        if (header.Length == 0 || !InRange(header.Offset, header.Length))
        {
            FinishError(operation, NbdError.Invalid, "BLOCK_STATUS beyond the end of the export");
            return;
        }
        if (!_volumeReportsAllocation)
        {
            // The spec lets a server always report status 0 (allocated, contents unknown).
            int bytes = NbdReplies.WriteBlockStatusPrefix(operation.Small, NbdReplyType.FlagDone, header.Handle, NbdMetaContext.BaseAllocationId, 1);
            bytes += NbdReplies.WriteBlockStatusDescriptor(operation.Small.AsSpan(bytes), header.Length, 0);
            operation.SetReply(operation.Small, bytes);
            EnqueueReply(operation, onReceiveLoop: true);
            return;
        }
        ValueTask<ExtentList> task = _volume.GetAllocationAsync((long)header.Offset, header.Length, _serverToken);
        if (task.IsCompleted)
        {
            ExtentList? extents = null;
            Exception? error = null;
            try
            {
                extents = task.GetAwaiter().GetResult();
            }
            catch (Exception ex)
            {
                error = ex;
            }
            OnExtentsCompleted(operation, extents, error, onReceiveLoop: true);
            return;
        }
        operation.AwaitExtents(task);
    }

    internal void OnExtentsCompleted(NbdOperation operation, ExtentList? extents, Exception? error, bool onReceiveLoop)
    {
        if (error is not null || extents is null)
        {
            ReplyException(operation, error ?? new InvalidOperationException("volume returned no extent list"));
            EnqueueReply(operation, onReceiveLoop);
            return;
        }

        ref readonly NbdRequestHeader header = ref operation.Header;
        ulong start = header.Offset;
        ulong end = start + header.Length;
        int limit = (header.Flags & NbdCommandFlags.ReqOne) != 0 ? 1 : NbdLimits.BlockStatusDescriptorsMax;

        // Pass 1: count descriptors (extents clipped to the request, stopping at any gap).
        int count = 0;
        ulong position = start;
        for (int i = 0; i < extents.Count && position < end && count < limit; i++)
        {
            Extent extent = extents[i];
            ulong extentEnd = Math.Min(end, (ulong)(extent.Offset + extent.Length));
            if (extentEnd <= position) continue;
            if ((ulong)extent.Offset > position) break;
            count++;
            position = extentEnd;
        }

        int replyBytes = NbdReplies.BlockStatusPrefixBytes + Math.Max(1, count) * NbdReplies.BlockStatusDescriptorBytes;
        byte[] buffer = operation.Small;
        if (replyBytes > buffer.Length)
        {
            operation.Rented = ArrayPool<byte>.Shared.Rent(replyBytes);
            buffer = operation.Rented;
        }
        int used = NbdReplies.WriteBlockStatusPrefix(buffer, NbdReplyType.FlagDone, header.Handle, NbdMetaContext.BaseAllocationId, Math.Max(1, count));
        if (count == 0)
        {
            // The volume described nothing at the start of the range: report "allocated, unknown".
            used += NbdReplies.WriteBlockStatusDescriptor(buffer.AsSpan(used), header.Length, 0);
        }
        else
        {
            int emitted = 0;
            position = start;
            for (int i = 0; i < extents.Count && emitted < count; i++)
            {
                Extent extent = extents[i];
                ulong extentEnd = Math.Min(end, (ulong)(extent.Offset + extent.Length));
                if (extentEnd <= position) continue;
                used += NbdReplies.WriteBlockStatusDescriptor(buffer.AsSpan(used), (uint)(extentEnd - position), NbdReplies.AllocationStatus(extent.Kind));
                emitted++;
                position = extentEnd;
            }
        }
        operation.SetReply(buffer, used);
        EnqueueReply(operation, onReceiveLoop);
    }

    // ---- replies ----

    private void FinishOk(NbdOperation operation, bool onReceiveLoop)
    {
        operation.SetReply(operation.Small, NbdReplies.WriteSimpleReply(operation.Small, NbdError.None, operation.Header.Handle));
        EnqueueReply(operation, onReceiveLoop);
    }

    private void FinishError(NbdOperation operation, uint error, string message)
    {
        ReplyError(operation, error, message);
        EnqueueReply(operation, onReceiveLoop: true);
    }

    private void ReplyError(NbdOperation operation, uint error, string message)
    {
        operation.ReturnRented();
        int bytes = _structured
            ? NbdReplies.WriteErrorChunk(operation.Small, operation.Header.Handle, error, message)
            : NbdReplies.WriteSimpleReply(operation.Small, error, operation.Header.Handle);
        operation.SetReply(operation.Small, bytes);
    }

    private void ReplyException(NbdOperation operation, Exception exception)
    {
        StorageErrorKind kind = ProtocolErrors.Classify(exception);
        uint error = ProtocolErrors.ToNbdError(kind);
        string message;
        if (kind == StorageErrorKind.Unexpected)
        {
            _logger.LogError(exception, "nbd {Peer}: {Command} at offset {Offset} length {Length} failed unexpectedly; answering EIO",
                Peer, operation.Header.Command, operation.Header.Offset, operation.Header.Length);
            message = "internal error";
        }
        else
        {
            if (kind is StorageErrorKind.Media or StorageErrorKind.NotFound)
                _logger.LogWarning("nbd {Peer}: {Command} at offset {Offset} failed: {Message}", Peer, operation.Header.Command, operation.Header.Offset, exception.Message);
            message = exception.Message;
        }
        ReplyError(operation, error, message);
    }
}
