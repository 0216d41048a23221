using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Target.Tests.Interop;

/// <summary>
/// A minimal NBD client for tests that need exact control over connections (multi-conn + one FLUSH):
/// fixed newstyle handshake, NBD_OPT_GO, simple replies only, one request at a time.
/// Written from the protocol document, independent of Target.Protocol's own code.
/// </summary>
public sealed class RawNbdClient : IAsyncDisposable
{
    private const ulong InitPasswd = 0x4e42444d41474943; // "NBDMAGIC"
    private const ulong IHaveOpt = 0x49484156454F5054; // "IHAVEOPT"
    private const ulong OptionReplyMagic = 0x3e889045565a9;
    private const uint RequestMagic = 0x25609513;
    private const uint SimpleReplyMagic = 0x67446698;
    private const uint OptGo = 7;
    private const uint RepAck = 1;
    private const uint RepInfo = 3;
    private const ushort InfoExport = 0;
    private const ushort FlagFixedNewstyle = 1;
    private const ushort FlagNoZeroes = 2;

    public const ushort TransmissionHasFlags = 1 << 0;
    public const ushort TransmissionSendFlush = 1 << 2;
    public const ushort TransmissionCanMultiConn = 1 << 8;

    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private ulong _handle;

    private RawNbdClient(Socket socket)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: true);
    }

    public long SizeBytes { get; private set; }

    public ushort TransmissionFlags { get; private set; }

    public static async Task<RawNbdClient> ConnectAsync(IPEndPoint endPoint, string exportName, CancellationToken ct)
    {
        var socket = new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            await socket.ConnectAsync(endPoint, ct);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
        var client = new RawNbdClient(socket);
        try
        {
            await client.HandshakeAsync(exportName, ct);
        }
        catch
        {
            await client.DisposeAsync();
            throw;
        }
        return client;
    }

    private async Task HandshakeAsync(string exportName, CancellationToken ct)
    {
        byte[] greeting = await ReadExactAsync(18, ct);
        if (BinaryPrimitives.ReadUInt64BigEndian(greeting) != InitPasswd || BinaryPrimitives.ReadUInt64BigEndian(greeting.AsSpan(8)) != IHaveOpt)
            throw new InvalidDataException("not a newstyle NBD server");
        ushort serverFlags = BinaryPrimitives.ReadUInt16BigEndian(greeting.AsSpan(16));
        if ((serverFlags & FlagFixedNewstyle) == 0)
            throw new InvalidDataException("server is not fixed newstyle");
        uint clientFlags = FlagFixedNewstyle | (uint)(serverFlags & FlagNoZeroes);
        await WriteAsync(BigEndian32(clientFlags), ct);

        byte[] name = Encoding.UTF8.GetBytes(exportName);
        byte[] option = new byte[16 + 4 + name.Length + 2];
        BinaryPrimitives.WriteUInt64BigEndian(option, IHaveOpt);
        BinaryPrimitives.WriteUInt32BigEndian(option.AsSpan(8), OptGo);
        BinaryPrimitives.WriteUInt32BigEndian(option.AsSpan(12), (uint)(4 + name.Length + 2));
        BinaryPrimitives.WriteUInt32BigEndian(option.AsSpan(16), (uint)name.Length);
        name.CopyTo(option, 20);
        // zero information requests
        await WriteAsync(option, ct);

        while (true)
        {
            byte[] header = await ReadExactAsync(20, ct);
            if (BinaryPrimitives.ReadUInt64BigEndian(header) != OptionReplyMagic)
                throw new InvalidDataException("bad option reply magic");
            uint replyType = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12));
            int length = checked((int)BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(16)));
            byte[] data = await ReadExactAsync(length, ct);
            if ((replyType & 0x8000_0000) != 0)
                throw new InvalidOperationException($"NBD_OPT_GO for '{exportName}' failed: reply type 0x{replyType:x8} {Encoding.UTF8.GetString(data)}");
            if (replyType == RepInfo && length >= 12 && BinaryPrimitives.ReadUInt16BigEndian(data) == InfoExport)
            {
                SizeBytes = (long)BinaryPrimitives.ReadUInt64BigEndian(data.AsSpan(2));
                TransmissionFlags = BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(10));
            }
            if (replyType == RepAck)
                break;
        }
        if (SizeBytes == 0)
            throw new InvalidDataException("server sent no NBD_INFO_EXPORT");
    }

    public Task WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken ct, bool fua = false) =>
        CommandAsync(command: 1, flags: fua ? (ushort)1 : (ushort)0, offset, (uint)data.Length, data, default, ct);

    public Task ReadAsync(long offset, Memory<byte> destination, CancellationToken ct) =>
        CommandAsync(command: 0, flags: 0, offset, (uint)destination.Length, default, destination, ct);

    public Task FlushAsync(CancellationToken ct) => CommandAsync(command: 3, flags: 0, 0, 0, default, default, ct);

    public Task TrimAsync(long offset, uint length, CancellationToken ct) => CommandAsync(command: 4, flags: 0, offset, length, default, default, ct);

    /// <summary>Writes a large buffer in requests of at most <paramref name="requestBytes"/>.</summary>
    public async Task WriteAllAsync(long offset, ReadOnlyMemory<byte> data, int requestBytes, CancellationToken ct)
    {
        for (int done = 0; done < data.Length; done += requestBytes)
            await WriteAsync(offset + done, data.Slice(done, Math.Min(requestBytes, data.Length - done)), ct);
    }

    public async Task ReadAllAsync(long offset, Memory<byte> destination, int requestBytes, CancellationToken ct)
    {
        for (int done = 0; done < destination.Length; done += requestBytes)
            await ReadAsync(offset + done, destination.Slice(done, Math.Min(requestBytes, destination.Length - done)), ct);
    }

    private async Task CommandAsync(ushort command, ushort flags, long offset, uint length, ReadOnlyMemory<byte> payload, Memory<byte> readInto, CancellationToken ct)
    {
        ulong handle = ++_handle;
        byte[] header = new byte[28];
        BinaryPrimitives.WriteUInt32BigEndian(header, RequestMagic);
        BinaryPrimitives.WriteUInt16BigEndian(header.AsSpan(4), flags);
        BinaryPrimitives.WriteUInt16BigEndian(header.AsSpan(6), command);
        BinaryPrimitives.WriteUInt64BigEndian(header.AsSpan(8), handle);
        BinaryPrimitives.WriteUInt64BigEndian(header.AsSpan(16), (ulong)offset);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(24), length);
        await WriteAsync(header, ct);
        if (!payload.IsEmpty)
            await _stream.WriteAsync(payload, ct);

        byte[] reply = await ReadExactAsync(16, ct);
        if (BinaryPrimitives.ReadUInt32BigEndian(reply) != SimpleReplyMagic)
            throw new InvalidDataException($"bad reply magic 0x{BinaryPrimitives.ReadUInt32BigEndian(reply):x8}");
        uint error = BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(4));
        ulong replyHandle = BinaryPrimitives.ReadUInt64BigEndian(reply.AsSpan(8));
        if (replyHandle != handle)
            throw new InvalidDataException($"reply for handle {replyHandle}, expected {handle}");
        if (error != 0)
            throw new NbdErrorException(command, offset, length, error);
        if (!readInto.IsEmpty)
            await _stream.ReadExactlyAsync(readInto, ct);
    }

    /// <summary>Politely disconnects (NBD_CMD_DISC), then closes.</summary>
    public async Task DisconnectAsync(CancellationToken ct)
    {
        byte[] header = new byte[28];
        BinaryPrimitives.WriteUInt32BigEndian(header, RequestMagic);
        BinaryPrimitives.WriteUInt16BigEndian(header.AsSpan(6), 2);
        BinaryPrimitives.WriteUInt64BigEndian(header.AsSpan(8), ++_handle);
        await WriteAsync(header, ct);
        _socket.Shutdown(SocketShutdown.Send);
    }

    private async Task<byte[]> ReadExactAsync(int count, CancellationToken ct)
    {
        byte[] buffer = new byte[count];
        await _stream.ReadExactlyAsync(buffer, ct);
        return buffer;
    }

    private async Task WriteAsync(byte[] data, CancellationToken ct) => await _stream.WriteAsync(data, ct);

    private static byte[] BigEndian32(uint value)
    {
        byte[] bytes = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(bytes, value);
        return bytes;
    }

    public async ValueTask DisposeAsync()
    {
        await _stream.DisposeAsync();
        _socket.Dispose();
    }
}

public sealed class NbdErrorException(ushort command, long offset, uint length, uint error)
    : Exception($"NBD command {command} at {offset} (+{length}) failed with error {error}")
{
    public uint Error { get; } = error;
}
