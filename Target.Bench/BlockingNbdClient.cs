// A minimal blocking NBD client for benchmarks: fixed newstyle handshake with NBD_OPT_GO, simple
// replies, then raw sends and exact receives. Synchronous socket calls allocate nothing, so a
// benchmark's allocation figure is the server's.
using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Target.Protocol.Nbd;

namespace Target.Bench;

internal sealed class BlockingNbdClient : IDisposable
{
    private readonly Socket _socket;

    private BlockingNbdClient(Socket socket) => _socket = socket;

    public static BlockingNbdClient Connect(EndPoint server, string export)
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true, ReceiveTimeout = 30_000, SendTimeout = 30_000 };
        socket.Connect(server);
        var client = new BlockingNbdClient(socket);
        client.Handshake(export);
        return client;
    }

    private void Handshake(string export)
    {
        Span<byte> buffer = stackalloc byte[256];
        ReceiveExactly(buffer.Slice(0, 18));
        BinaryPrimitives.WriteUInt32BigEndian(buffer, NbdHandshakeFlags.ClientFixedNewstyle | NbdHandshakeFlags.ClientNoZeroes);
        Send(buffer.Slice(0, 4));

        // NBD_OPT_GO with the export name and no information requests: simple replies.
        int nameBytes = System.Text.Encoding.UTF8.GetBytes(export, buffer.Slice(NbdLimits.OptionHeaderBytes + 4));
        int used = NbdOptions.WriteHeader(buffer, NbdOption.Go, (uint)(4 + nameBytes + 2));
        BinaryPrimitives.WriteUInt32BigEndian(buffer.Slice(used), (uint)nameBytes);
        BinaryPrimitives.WriteUInt16BigEndian(buffer.Slice(used + 4 + nameBytes), 0);
        Send(buffer.Slice(0, used + 4 + nameBytes + 2));
        while (true)
        {
            ReceiveExactly(buffer.Slice(0, NbdLimits.OptionReplyHeaderBytes));
            uint type = BinaryPrimitives.ReadUInt32BigEndian(buffer.Slice(12));
            int length = (int)BinaryPrimitives.ReadUInt32BigEndian(buffer.Slice(16));
            ReceiveExactly(new byte[length]);
            if (type == NbdOptionReply.Ack) return;
            if ((type & NbdOptionReply.ErrorBit) != 0) throw new InvalidOperationException($"NBD_OPT_GO failed: 0x{type:x8}");
        }
    }

    public void Send(ReadOnlySpan<byte> bytes)
    {
        while (!bytes.IsEmpty) bytes = bytes.Slice(_socket.Send(bytes));
    }

    public void ReceiveExactly(Span<byte> destination)
    {
        while (!destination.IsEmpty)
        {
            int received = _socket.Receive(destination);
            if (received == 0) throw new EndOfStreamException("server closed");
            destination = destination.Slice(received);
        }
    }

    public void Dispose() => _socket.Dispose();
}
