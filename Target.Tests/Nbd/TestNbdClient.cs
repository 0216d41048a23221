// A small raw NBD client for tests. It speaks the wire protocol itself (only the server's pure
// encoders/parsers for request headers are shared), and bounds every wait with a timeout.
using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Target.Protocol.Nbd;

namespace Target.Tests.Nbd;

public sealed record OptionReplyMessage(uint Option, uint Type, byte[] Data)
{
    public bool IsError => (Type & NbdOptionReply.ErrorBit) != 0;
}

public sealed record ExportInfo(ulong SizeBytes, NbdTransmissionFlags Flags, uint MinimumBlockBytes, uint PreferredBlockBytes, uint MaximumBlockBytes, string? Name, string? Description);

public sealed record ReplyChunk(ushort Flags, ushort Type, byte[] Payload);

public sealed class TestReply
{
    public ulong Handle { get; init; }
    public NbdCommand Command { get; init; }
    public uint Error { get; set; }
    public string? ErrorMessage { get; set; }
    public bool Structured { get; init; }
    public List<ReplyChunk> Chunks { get; } = new();

    /// <summary>For READ: the bytes, assembled from data and hole chunks.</summary>
    public byte[]? Data { get; set; }

    /// <summary>For BLOCK_STATUS: (length, status) descriptors.</summary>
    public List<(uint LengthBytes, uint Status)> Extents { get; } = new();

    public int CountChunks(ushort type) => Chunks.Count(c => c.Type == type);
}

public sealed class TestNbdClient : IAsyncDisposable
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    private readonly Socket _socket;
    private readonly Dictionary<ulong, (NbdCommand Command, ulong Offset, uint Length)> _pending = new();
    private readonly Dictionary<ulong, TestReply> _partial = new();
    private ulong _nextHandle = 1;

    private TestNbdClient(Socket socket) => _socket = socket;

    public bool Structured { get; private set; }

    public ExportInfo? Export { get; private set; }

    public static async Task<TestNbdClient> ConnectAsync(EndPoint endPoint)
    {
        var socket = endPoint is UnixDomainSocketEndPoint
            ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
            : new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        using var cts = new CancellationTokenSource(Timeout);
        await socket.ConnectAsync(endPoint, cts.Token);
        return new TestNbdClient(socket);
    }

    /// <summary>Greeting, flags, optional structured replies and base:allocation, then GO.</summary>
    public static async Task<TestNbdClient> OpenAsync(EndPoint endPoint, string exportName, bool structured = true, bool metaContext = true)
    {
        TestNbdClient client = await ConnectAsync(endPoint);
        try
        {
            await client.ReadGreetingAsync();
            await client.SendClientFlagsAsync(NbdHandshakeFlags.ClientFixedNewstyle | NbdHandshakeFlags.ClientNoZeroes);
            if (structured)
            {
                List<OptionReplyMessage> replies = await client.OptionAsync(NbdOption.StructuredReply, []);
                Assert.Equal(NbdOptionReply.Ack, replies[^1].Type);
                client.Structured = true;
                if (metaContext)
                {
                    replies = await client.OptionAsync(NbdOption.SetMetaContext, MetaContextData(exportName, NbdMetaContext.BaseAllocation));
                    Assert.Equal(NbdOptionReply.Ack, replies[^1].Type);
                }
            }
            (ExportInfo? info, List<OptionReplyMessage> goReplies) = await client.InfoAsync(NbdOption.Go, exportName, NbdInfo.BlockSize, NbdInfo.Name, NbdInfo.Description);
            Assert.True(info is not null, $"GO failed: reply type 0x{goReplies[^1].Type:x8} {Encoding.UTF8.GetString(goReplies[^1].Data)}");
            client.Export = info;
            return client;
        }
        catch
        {
            await client.DisposeAsync();
            throw;
        }
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (SocketException)
        {
        }
        catch (ObjectDisposedException)
        {
        }
        _socket.Dispose();
        await Task.CompletedTask;
    }

    // ---- raw I/O ----

    public async Task SendAsync(ReadOnlyMemory<byte> bytes)
    {
        using var cts = new CancellationTokenSource(Timeout);
        while (!bytes.IsEmpty)
        {
            int sent = await _socket.SendAsync(bytes, SocketFlags.None, cts.Token);
            bytes = bytes.Slice(sent);
        }
    }

    public async Task<byte[]> ReceiveExactAsync(int count)
    {
        var buffer = new byte[count];
        using var cts = new CancellationTokenSource(Timeout);
        int filled = 0;
        while (filled < count)
        {
            int received = await _socket.ReceiveAsync(buffer.AsMemory(filled), SocketFlags.None, cts.Token);
            if (received == 0) throw new EndOfStreamException($"server closed after {filled} of {count} bytes");
            filled += received;
        }
        return buffer;
    }

    /// <summary>True if the server closes the connection (EOF or reset) within the timeout, ignoring any bytes before that.</summary>
    public async Task<bool> IsClosedByServerAsync()
    {
        var buffer = new byte[4096];
        using var cts = new CancellationTokenSource(Timeout);
        try
        {
            while (true)
            {
                int received = await _socket.ReceiveAsync(buffer, SocketFlags.None, cts.Token);
                if (received == 0) return true;
            }
        }
        catch (SocketException)
        {
            return true;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }

    // ---- handshake ----

    public async Task<ushort> ReadGreetingAsync()
    {
        byte[] greeting = await ReceiveExactAsync(18);
        Assert.Equal(NbdMagic.InitPassword, BinaryPrimitives.ReadUInt64BigEndian(greeting));
        Assert.Equal(NbdMagic.IHaveOpt, BinaryPrimitives.ReadUInt64BigEndian(greeting.AsSpan(8)));
        return BinaryPrimitives.ReadUInt16BigEndian(greeting.AsSpan(16));
    }

    public Task SendClientFlagsAsync(uint flags)
    {
        var bytes = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(bytes, flags);
        return SendAsync(bytes);
    }

    public Task SendOptionAsync(uint option, ReadOnlySpan<byte> data)
    {
        var bytes = new byte[NbdLimits.OptionHeaderBytes + data.Length];
        NbdOptions.WriteHeader(bytes, option, (uint)data.Length);
        data.CopyTo(bytes.AsSpan(NbdLimits.OptionHeaderBytes));
        return SendAsync(bytes);
    }

    public async Task<OptionReplyMessage> ReadOptionReplyAsync()
    {
        byte[] header = await ReceiveExactAsync(NbdLimits.OptionReplyHeaderBytes);
        Assert.Equal(NbdMagic.OptionReply, BinaryPrimitives.ReadUInt64BigEndian(header));
        uint option = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8));
        uint type = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12));
        uint length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(16));
        Assert.True(length < 1 << 20, $"option reply length {length}");
        byte[] data = length == 0 ? [] : await ReceiveExactAsync((int)length);
        return new OptionReplyMessage(option, type, data);
    }

    /// <summary>Sends an option and reads replies up to the final one (ACK or an error).</summary>
    public async Task<List<OptionReplyMessage>> OptionAsync(uint option, byte[] data)
    {
        await SendOptionAsync(option, data);
        var replies = new List<OptionReplyMessage>();
        while (true)
        {
            OptionReplyMessage reply = await ReadOptionReplyAsync();
            Assert.Equal(option, reply.Option);
            replies.Add(reply);
            if (reply.Type == NbdOptionReply.Ack || reply.IsError) return replies;
        }
    }

    public static byte[] InfoData(string exportName, params ushort[] requests)
    {
        byte[] name = Encoding.UTF8.GetBytes(exportName);
        var data = new byte[4 + name.Length + 2 + 2 * requests.Length];
        BinaryPrimitives.WriteUInt32BigEndian(data, (uint)name.Length);
        name.CopyTo(data, 4);
        BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(4 + name.Length), (ushort)requests.Length);
        for (int i = 0; i < requests.Length; i++) BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(6 + name.Length + 2 * i), requests[i]);
        return data;
    }

    public static byte[] MetaContextData(string exportName, params string[] queries)
    {
        var stream = new MemoryStream();
        Span<byte> word = stackalloc byte[4];
        byte[] name = Encoding.UTF8.GetBytes(exportName);
        BinaryPrimitives.WriteUInt32BigEndian(word, (uint)name.Length);
        stream.Write(word);
        stream.Write(name);
        BinaryPrimitives.WriteUInt32BigEndian(word, (uint)queries.Length);
        stream.Write(word);
        foreach (string query in queries)
        {
            byte[] bytes = Encoding.UTF8.GetBytes(query);
            BinaryPrimitives.WriteUInt32BigEndian(word, (uint)bytes.Length);
            stream.Write(word);
            stream.Write(bytes);
        }
        return stream.ToArray();
    }

    /// <summary>NBD_OPT_INFO or NBD_OPT_GO. The info is null when the final reply is an error.</summary>
    public async Task<(ExportInfo? Info, List<OptionReplyMessage> Replies)> InfoAsync(uint option, string exportName, params ushort[] requests)
    {
        List<OptionReplyMessage> replies = await OptionAsync(option, InfoData(exportName, requests));
        if (replies[^1].Type != NbdOptionReply.Ack) return (null, replies);
        ulong size = 0;
        NbdTransmissionFlags flags = 0;
        uint minimum = 0, preferred = 0, maximum = 0;
        string? name = null, description = null;
        bool sawExport = false;
        foreach (OptionReplyMessage reply in replies)
        {
            if (reply.Type != NbdOptionReply.Info) continue;
            ushort type = BinaryPrimitives.ReadUInt16BigEndian(reply.Data);
            switch (type)
            {
                case NbdInfo.Export:
                    Assert.Equal(12, reply.Data.Length);
                    size = BinaryPrimitives.ReadUInt64BigEndian(reply.Data.AsSpan(2));
                    flags = (NbdTransmissionFlags)BinaryPrimitives.ReadUInt16BigEndian(reply.Data.AsSpan(10));
                    sawExport = true;
                    break;
                case NbdInfo.Name:
                    name = Encoding.UTF8.GetString(reply.Data.AsSpan(2));
                    break;
                case NbdInfo.Description:
                    description = Encoding.UTF8.GetString(reply.Data.AsSpan(2));
                    break;
                case NbdInfo.BlockSize:
                    Assert.Equal(14, reply.Data.Length);
                    minimum = BinaryPrimitives.ReadUInt32BigEndian(reply.Data.AsSpan(2));
                    preferred = BinaryPrimitives.ReadUInt32BigEndian(reply.Data.AsSpan(6));
                    maximum = BinaryPrimitives.ReadUInt32BigEndian(reply.Data.AsSpan(10));
                    break;
            }
        }
        Assert.True(sawExport, "NBD_INFO_EXPORT missing before ACK");
        return (new ExportInfo(size, flags, minimum, preferred, maximum, name, description), replies);
    }

    // ---- transmission ----

    public ulong NextHandle() => _nextHandle++;

    /// <summary>Sends one request; remembers it so its reply can be decoded.</summary>
    public Task SendRequestAsync(NbdCommand command, NbdCommandFlags flags, ulong handle, ulong offset, uint length, ReadOnlyMemory<byte> payload = default)
    {
        byte[] bytes = EncodeRequest(command, flags, handle, offset, length, payload.Span);
        Track(command, handle, offset, length);
        return SendAsync(bytes);
    }

    public void Track(NbdCommand command, ulong handle, ulong offset, uint length)
    {
        if (command != NbdCommand.Disconnect) _pending[handle] = (command, offset, length);
    }

    public static byte[] EncodeRequest(NbdCommand command, NbdCommandFlags flags, ulong handle, ulong offset, uint length, ReadOnlySpan<byte> payload = default)
    {
        var bytes = new byte[NbdLimits.RequestHeaderBytes + payload.Length];
        NbdRequest.Write(bytes, new NbdRequestHeader(flags, command, handle, offset, length));
        payload.CopyTo(bytes.AsSpan(NbdLimits.RequestHeaderBytes));
        return bytes;
    }

    /// <summary>Reads reply messages until one request's reply is complete and returns it.</summary>
    public async Task<TestReply> ReadReplyAsync()
    {
        while (true)
        {
            byte[] magicBytes = await ReceiveExactAsync(4);
            uint magic = BinaryPrimitives.ReadUInt32BigEndian(magicBytes);
            if (magic == NbdMagic.SimpleReply)
            {
                byte[] rest = await ReceiveExactAsync(12);
                uint error = BinaryPrimitives.ReadUInt32BigEndian(rest);
                ulong handle = BinaryPrimitives.ReadUInt64BigEndian(rest.AsSpan(4));
                Assert.True(_pending.Remove(handle, out var request), $"simple reply for unknown handle {handle}");
                var reply = new TestReply { Handle = handle, Command = request.Command, Error = error, Structured = false };
                if (request.Command == NbdCommand.Read)
                {
                    Assert.False(Structured, "a simple reply to READ after structured replies were negotiated");
                    if (error == 0) reply.Data = request.Length == 0 ? [] : await ReceiveExactAsync((int)request.Length);
                }
                return reply;
            }

            Assert.Equal(NbdMagic.StructuredReply, magic);
            Assert.True(Structured, "structured reply without negotiation");
            byte[] header = await ReceiveExactAsync(16);
            ushort flags = BinaryPrimitives.ReadUInt16BigEndian(header);
            ushort type = BinaryPrimitives.ReadUInt16BigEndian(header.AsSpan(2));
            ulong chunkHandle = BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(4));
            uint length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12));
            byte[] payload = length == 0 ? [] : await ReceiveExactAsync((int)length);
            Assert.True(_pending.TryGetValue(chunkHandle, out var pending), $"chunk for unknown handle {chunkHandle}");
            if (!_partial.TryGetValue(chunkHandle, out TestReply? partial))
            {
                partial = new TestReply { Handle = chunkHandle, Command = pending.Command, Structured = true };
                if (pending.Command == NbdCommand.Read) partial.Data = new byte[pending.Length];
                _partial[chunkHandle] = partial;
            }
            partial.Chunks.Add(new ReplyChunk(flags, type, payload));
            ApplyChunk(partial, pending.Offset, pending.Length, type, payload);
            if ((flags & NbdReplyType.FlagDone) != 0)
            {
                _partial.Remove(chunkHandle);
                _pending.Remove(chunkHandle);
                return partial;
            }
        }
    }

    private static void ApplyChunk(TestReply reply, ulong requestOffset, uint requestLength, ushort type, byte[] payload)
    {
        switch (type)
        {
            case NbdReplyType.None:
                Assert.Empty(payload);
                break;
            case NbdReplyType.OffsetData:
            {
                Assert.True(payload.Length >= 9, "OFFSET_DATA shorter than 9 bytes");
                ulong offset = BinaryPrimitives.ReadUInt64BigEndian(payload);
                int dataBytes = payload.Length - 8;
                Assert.True(offset >= requestOffset && offset + (ulong)dataBytes <= requestOffset + requestLength, "OFFSET_DATA outside the request");
                payload.AsSpan(8).CopyTo(reply.Data.AsSpan((int)(offset - requestOffset)));
                break;
            }
            case NbdReplyType.OffsetHole:
            {
                Assert.Equal(12, payload.Length);
                ulong offset = BinaryPrimitives.ReadUInt64BigEndian(payload);
                uint holeBytes = BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(8));
                Assert.True(holeBytes > 0, "empty hole");
                Assert.True(offset >= requestOffset && offset + holeBytes <= requestOffset + requestLength, "OFFSET_HOLE outside the request");
                reply.Data.AsSpan((int)(offset - requestOffset), (int)holeBytes).Clear();
                break;
            }
            case NbdReplyType.BlockStatus:
            {
                Assert.True(payload.Length >= 12 && (payload.Length - 4) % 8 == 0, $"BLOCK_STATUS payload of {payload.Length} bytes");
                Assert.NotEqual(0u, BinaryPrimitives.ReadUInt32BigEndian(payload));
                for (int i = 4; i < payload.Length; i += 8)
                    reply.Extents.Add((BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(i)), BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(i + 4))));
                break;
            }
            case NbdReplyType.Error:
            {
                Assert.True(payload.Length >= 6, "ERROR chunk shorter than 6 bytes");
                reply.Error = BinaryPrimitives.ReadUInt32BigEndian(payload);
                Assert.NotEqual(0u, reply.Error);
                int messageBytes = BinaryPrimitives.ReadUInt16BigEndian(payload.AsSpan(4));
                Assert.True(messageBytes <= payload.Length - 6, "error message longer than its chunk");
                reply.ErrorMessage = Encoding.UTF8.GetString(payload, 6, messageBytes);
                break;
            }
            default:
                Assert.Fail($"unexpected chunk type {type}");
                break;
        }
    }

    /// <summary>Sends one request and waits for its reply (no other requests may be outstanding).</summary>
    public async Task<TestReply> RequestAsync(NbdCommand command, NbdCommandFlags flags, ulong offset, uint length, ReadOnlyMemory<byte> payload = default)
    {
        ulong handle = NextHandle();
        await SendRequestAsync(command, flags, handle, offset, length, payload);
        TestReply reply = await ReadReplyAsync();
        Assert.Equal(handle, reply.Handle);
        return reply;
    }

    public async Task<byte[]> ReadAsync(ulong offset, uint length, NbdCommandFlags flags = NbdCommandFlags.None)
    {
        TestReply reply = await RequestAsync(NbdCommand.Read, flags, offset, length);
        Assert.True(reply.Error == 0, $"READ failed with {reply.Error} {reply.ErrorMessage}");
        return reply.Data!;
    }

    public async Task WriteAsync(ulong offset, byte[] data, NbdCommandFlags flags = NbdCommandFlags.None)
    {
        TestReply reply = await RequestAsync(NbdCommand.Write, flags, offset, (uint)data.Length, data);
        Assert.True(reply.Error == 0, $"WRITE failed with {reply.Error} {reply.ErrorMessage}");
    }

    public Task SendDisconnectAsync() => SendAsync(EncodeRequest(NbdCommand.Disconnect, 0, NextHandle(), 0, 0));
}
