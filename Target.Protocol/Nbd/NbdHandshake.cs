// Fixed newstyle handshake and option haggling (proto.md "Handshake", "Option types").
// Invariants: every option but EXPORT_NAME gets a final reply (ACK or an error); unknown options
// get NBD_REP_ERR_UNSUP and haggling continues; a broken frame (bad magic, unknown client flags,
// oversized option, unknown export in EXPORT_NAME) closes this connection only, with a log line.
using System.Buffers;
using System.Buffers.Binary;
using System.Text;
using Microsoft.Extensions.Logging;
using Target.Dedup;

namespace Target.Protocol.Nbd;

internal sealed class NbdHandshake
{
    private const ushort ServerHandshakeFlags = NbdHandshakeFlags.FixedNewstyle | NbdHandshakeFlags.NoZeroes;
    private const uint ClientFlagsKnown = NbdHandshakeFlags.ClientFixedNewstyle | NbdHandshakeFlags.ClientNoZeroes;

    private readonly NbdConnection _connection;
    private readonly INbdExportCatalog _catalog;
    private readonly NbdServerOptions _options;
    private readonly ILogger _logger;
    private readonly ArrayBufferWriter<byte> _out = new(1024);

    private bool _noZeroes;
    private bool _structured;
    private string? _metaContextExport;
    private bool _metaContextSelected;

    public NbdHandshake(NbdConnection connection, INbdExportCatalog catalog, NbdServerOptions options, ILogger logger)
    {
        _connection = connection;
        _catalog = catalog;
        _options = options;
        _logger = logger;
    }

    private string Peer => _connection.Peer;

    /// <summary>Transmission flags for an export, given what was negotiated.</summary>
    public static NbdTransmissionFlags TransmissionFlags(NbdExport export, bool structuredReplies)
    {
        VolumeCapabilities capabilities = export.Volume.Capabilities;
        // FLUSH and FUA are always offered: harmless when the volume has no volatile cache.
        NbdTransmissionFlags flags = NbdTransmissionFlags.HasFlags | NbdTransmissionFlags.SendFlush | NbdTransmissionFlags.SendFua
            | NbdTransmissionFlags.SendCache | NbdTransmissionFlags.CanMultiConn;
        if (export.ReadOnly || (capabilities & VolumeCapabilities.ReadOnly) != 0)
        {
            flags |= NbdTransmissionFlags.ReadOnly;
        }
        else
        {
            if ((capabilities & VolumeCapabilities.Trim) != 0) flags |= NbdTransmissionFlags.SendTrim;
            // FAST_ZERO may be offered even when it always fails fast with ENOTSUP.
            if ((capabilities & VolumeCapabilities.WriteZeroes) != 0) flags |= NbdTransmissionFlags.SendWriteZeroes | NbdTransmissionFlags.SendFastZero;
        }
        if (structuredReplies) flags |= NbdTransmissionFlags.SendDf;
        return flags;
    }

    /// <summary>Preferred block size advertised: the volume's, if it is a power of two of at least 512.</summary>
    public static uint PreferredBlockBytes(IBlockVolume volume)
    {
        int preferred = volume.PreferredBlockSize;
        return preferred >= 512 && preferred <= NbdLimits.MaxRequestBytes && (preferred & (preferred - 1)) == 0
            ? (uint)preferred
            : NbdLimits.PreferredBlockBytes;
    }

    /// <summary>Runs the handshake. Returns the session to serve, or null when the connection must close.</summary>
    public async Task<NbdSession?> RunAsync(CancellationToken ct)
    {
        NbdReplies.WriteGreeting(_out.GetSpan(18), ServerHandshakeFlags);
        _out.Advance(18);
        await FlushAsync(ct).ConfigureAwait(false);

        if (!await _connection.FillAsync(4, ct).ConfigureAwait(false))
        {
            _logger.LogDebug("nbd {Peer}: closed before sending client flags", Peer);
            return null;
        }
        uint clientFlags = BinaryPrimitives.ReadUInt32BigEndian(_connection.Buffered);
        _connection.Consume(4);
        if ((clientFlags & ~ClientFlagsKnown) != 0)
        {
            _logger.LogWarning("nbd {Peer}: unknown client flags 0x{Flags:x8}, closing", Peer, clientFlags);
            return null;
        }
        _noZeroes = (clientFlags & NbdHandshakeFlags.ClientNoZeroes) != 0;

        for (int options = 0; options < NbdLimits.OptionsPerHandshakeMax; options++)
        {
            if (!await _connection.FillAsync(NbdLimits.OptionHeaderBytes, ct).ConfigureAwait(false))
            {
                _logger.LogDebug("nbd {Peer}: closed during option haggling", Peer);
                return null;
            }
            NbdParseStatus status = NbdOptions.TryParseHeader(_connection.Buffered, out NbdOptionHeader header, out int consumed);
            if (status != NbdParseStatus.Complete)
            {
                _logger.LogWarning("nbd {Peer}: bad option magic, closing", Peer);
                return null;
            }
            if (header.DataBytes > NbdLimits.OptionDataBytesMax)
            {
                _logger.LogWarning("nbd {Peer}: option {Option} carries {Bytes} bytes (limit {Limit}), closing", Peer, header.Option, header.DataBytes, NbdLimits.OptionDataBytesMax);
                return null;
            }
            int dataBytes = (int)header.DataBytes;
            if (!await _connection.FillAsync(consumed + dataBytes, ct).ConfigureAwait(false))
            {
                _logger.LogDebug("nbd {Peer}: closed in the middle of an option", Peer);
                return null;
            }
            byte[] data = _connection.Buffered.Slice(consumed, dataBytes).ToArray();
            _connection.Consume(consumed + dataBytes);

            OptionOutcome outcome = HandleOption(header.Option, data, out NbdSession? session);
            await FlushAsync(ct).ConfigureAwait(false);
            switch (outcome)
            {
                case OptionOutcome.Continue:
                    continue;
                case OptionOutcome.Transmit:
                    return session;
                default:
                    return null;
            }
        }
        _logger.LogWarning("nbd {Peer}: more than {Limit} options, closing", Peer, NbdLimits.OptionsPerHandshakeMax);
        return null;
    }

    private enum OptionOutcome
    {
        Continue,
        Transmit,
        Close,
    }

    private OptionOutcome HandleOption(uint option, byte[] data, out NbdSession? session)
    {
        session = null;
        switch (option)
        {
            case NbdOption.ExportName:
                return ExportName(data, out session);

            case NbdOption.Abort:
                WriteReply(option, NbdOptionReply.Ack, []);
                _logger.LogDebug("nbd {Peer}: client aborted the handshake", Peer);
                return OptionOutcome.Close;

            case NbdOption.List:
                if (data.Length != 0)
                {
                    WriteError(option, NbdOptionReply.ErrInvalid, "NBD_OPT_LIST takes no data");
                    return OptionOutcome.Continue;
                }
                foreach (NbdExport export in _catalog.ListExports())
                {
                    byte[] name = Encoding.UTF8.GetBytes(export.Name);
                    byte[] description = Encoding.UTF8.GetBytes(export.Description ?? "");
                    var payload = new byte[4 + name.Length + description.Length];
                    BinaryPrimitives.WriteUInt32BigEndian(payload, (uint)name.Length);
                    name.CopyTo(payload, 4);
                    description.CopyTo(payload, 4 + name.Length);
                    WriteReply(option, NbdOptionReply.Server, payload);
                }
                WriteReply(option, NbdOptionReply.Ack, []);
                return OptionOutcome.Continue;

            case NbdOption.Info:
            case NbdOption.Go:
                return InfoOrGo(option, data, out session);

            case NbdOption.StructuredReply:
                if (data.Length != 0)
                {
                    WriteError(option, NbdOptionReply.ErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data");
                    return OptionOutcome.Continue;
                }
                _structured = true;
                WriteReply(option, NbdOptionReply.Ack, []);
                return OptionOutcome.Continue;

            case NbdOption.ListMetaContext:
            case NbdOption.SetMetaContext:
                MetaContext(option, data);
                return OptionOutcome.Continue;

            case NbdOption.StartTls:
                WriteError(option, NbdOptionReply.ErrUnsupported, "TLS is not supported by this server");
                return OptionOutcome.Continue;

            default:
                _logger.LogDebug("nbd {Peer}: unsupported option {Option}", Peer, option);
                WriteError(option, NbdOptionReply.ErrUnsupported, "option not supported");
                return OptionOutcome.Continue;
        }
    }

    private bool TryResolve(string name, out NbdExport export)
    {
        if (name.Length == 0)
        {
            string? defaultName = _options.DefaultExportName;
            if (defaultName is not null) return _catalog.TryGetExport(defaultName, out export!);
            IReadOnlyList<NbdExport> all = _catalog.ListExports();
            if (all.Count > 0)
            {
                export = all[0];
                return true;
            }
            export = null!;
            return false;
        }
        return _catalog.TryGetExport(name, out export!);
    }

    private OptionOutcome ExportName(byte[] data, out NbdSession? session)
    {
        session = null;
        if (!NbdOptions.TryDecodeString(data, out string name) || !TryResolve(name, out NbdExport export))
        {
            // EXPORT_NAME cannot carry an error: the spec says to terminate the session.
            _logger.LogWarning("nbd {Peer}: NBD_OPT_EXPORT_NAME for unknown export '{Export}', closing", Peer, Encoding.UTF8.GetString(data));
            return OptionOutcome.Close;
        }
        NbdTransmissionFlags flags = TransmissionFlags(export, _structured);
        int bytes = 8 + 2 + (_noZeroes ? 0 : 124);
        Span<byte> span = _out.GetSpan(bytes).Slice(0, bytes);
        span.Clear();
        BinaryPrimitives.WriteUInt64BigEndian(span, (ulong)export.Volume.SizeBytes);
        BinaryPrimitives.WriteUInt16BigEndian(span.Slice(8), (ushort)flags);
        _out.Advance(bytes);
        session = new NbdSession(export, flags, _structured, BlockStatusEnabled(export));
        return OptionOutcome.Transmit;
    }

    private bool BlockStatusEnabled(NbdExport export)
        => _structured && _metaContextSelected && _metaContextExport == export.Name;

    private OptionOutcome InfoOrGo(uint option, byte[] data, out NbdSession? session)
    {
        session = null;
        if (!NbdOptions.TryParseInfoRequest(data, out string name, out NbdInfoRequests requests))
        {
            WriteError(option, NbdOptionReply.ErrInvalid, "malformed NBD_OPT_INFO/NBD_OPT_GO");
            return OptionOutcome.Continue;
        }
        if (!TryResolve(name, out NbdExport export))
        {
            _logger.LogInformation("nbd {Peer}: unknown export '{Export}' requested", Peer, name);
            WriteError(option, NbdOptionReply.ErrUnknown, $"unknown export '{name}'");
            return OptionOutcome.Continue;
        }

        NbdTransmissionFlags flags = TransmissionFlags(export, _structured);
        Span<byte> info = stackalloc byte[14];
        BinaryPrimitives.WriteUInt16BigEndian(info, NbdInfo.Export);
        BinaryPrimitives.WriteUInt64BigEndian(info.Slice(2), (ulong)export.Volume.SizeBytes);
        BinaryPrimitives.WriteUInt16BigEndian(info.Slice(10), (ushort)flags);
        WriteReply(option, NbdOptionReply.Info, info.Slice(0, 12));

        if ((requests & NbdInfoRequests.Name) != 0) WriteInfoString(option, NbdInfo.Name, export.Name);
        if ((requests & NbdInfoRequests.Description) != 0 && !string.IsNullOrEmpty(export.Description))
            WriteInfoString(option, NbdInfo.Description, export.Description);

        // Always sent: our maximum (32 MiB) is tighter than the protocol default.
        BinaryPrimitives.WriteUInt16BigEndian(info, NbdInfo.BlockSize);
        BinaryPrimitives.WriteUInt32BigEndian(info.Slice(2), NbdLimits.MinimumBlockBytes);
        BinaryPrimitives.WriteUInt32BigEndian(info.Slice(6), PreferredBlockBytes(export.Volume));
        BinaryPrimitives.WriteUInt32BigEndian(info.Slice(10), NbdLimits.MaxRequestBytes);
        WriteReply(option, NbdOptionReply.Info, info);

        WriteReply(option, NbdOptionReply.Ack, []);
        if (option != NbdOption.Go) return OptionOutcome.Continue;
        session = new NbdSession(export, flags, _structured, BlockStatusEnabled(export));
        return OptionOutcome.Transmit;
    }

    private void MetaContext(uint option, byte[] data)
    {
        bool listing = option == NbdOption.ListMetaContext;
        if (!listing)
        {
            // SET replaces the previous selection even when it fails.
            _metaContextSelected = false;
            _metaContextExport = null;
        }
        if (!_structured)
        {
            WriteError(option, NbdOptionReply.ErrInvalid, "structured replies must be negotiated first");
            return;
        }
        if (!NbdOptions.TryParseMetaContextRequest(data, out string name, out string[] queries))
        {
            WriteError(option, NbdOptionReply.ErrInvalid, "malformed meta context request");
            return;
        }
        if (!TryResolve(name, out NbdExport export))
        {
            WriteError(option, NbdOptionReply.ErrUnknown, $"unknown export '{name}'");
            return;
        }
        if (NbdOptions.SelectsBaseAllocation(queries, listing))
        {
            byte[] contextName = Encoding.UTF8.GetBytes(NbdMetaContext.BaseAllocation);
            var payload = new byte[4 + contextName.Length];
            // LIST: the id is reserved and should be zero. SET: a unique nonzero id.
            BinaryPrimitives.WriteUInt32BigEndian(payload, listing ? 0 : NbdMetaContext.BaseAllocationId);
            contextName.CopyTo(payload, 4);
            WriteReply(option, NbdOptionReply.MetaContext, payload);
            if (!listing)
            {
                _metaContextSelected = true;
                _metaContextExport = export.Name;
            }
        }
        WriteReply(option, NbdOptionReply.Ack, []);
    }

    private void WriteInfoString(uint option, ushort infoType, string value)
    {
        byte[] text = Encoding.UTF8.GetBytes(value);
        int textBytes = Math.Min(text.Length, NbdLimits.StringBytesMax);
        var payload = new byte[2 + textBytes];
        BinaryPrimitives.WriteUInt16BigEndian(payload, infoType);
        text.AsSpan(0, textBytes).CopyTo(payload.AsSpan(2));
        WriteReply(option, NbdOptionReply.Info, payload);
    }

    private void WriteError(uint option, uint replyType, string message)
        => WriteReply(option, replyType, Encoding.UTF8.GetBytes(message));

    private void WriteReply(uint option, uint replyType, ReadOnlySpan<byte> payload)
    {
        Span<byte> span = _out.GetSpan(NbdLimits.OptionReplyHeaderBytes + payload.Length);
        int used = NbdReplies.WriteOptionReplyHeader(span, option, replyType, (uint)payload.Length);
        payload.CopyTo(span.Slice(used));
        _out.Advance(used + payload.Length);
    }

    private async ValueTask FlushAsync(CancellationToken ct)
    {
        if (_out.WrittenCount == 0) return;
        await _connection.SendHandshakeAsync(_out.WrittenMemory, ct).ConfigureAwait(false);
        _out.ResetWrittenCount();
    }
}
