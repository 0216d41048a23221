// A deliberately small iSCSI initiator for tests that must send what real initiators never send:
// a one-PDU login straight to the full feature phase, then PDUs built byte by byte (optionally
// with broken digests or fields) and raw PDU reads. No error recovery, no R2T handling (writes
// carry their data as immediate data).
using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Target.Protocol.Iscsi;

namespace Target.Tests.Iscsi;

public sealed record RawPdu(byte[] Bhs, byte[] Data)
{
    public IscsiOpcode Opcode => (IscsiOpcode)(Bhs[0] & 0x3F);

    public uint Itt => BinaryPrimitives.ReadUInt32BigEndian(Bhs.AsSpan(16));
}

public sealed record RawScsiResult(byte Status, byte[] DataIn, byte[] Sense, RawPdu Response);

public sealed class RawIscsiSession : IAsyncDisposable
{
    public const int MaxRecvDataSegmentBytes = 262144;

    private readonly Socket _socket;
    private uint _itt = 0x100;

    private RawIscsiSession(Socket socket, bool headerDigest, bool dataDigest)
    {
        _socket = socket;
        HeaderDigest = headerDigest;
        DataDigest = dataDigest;
    }

    public bool HeaderDigest { get; }

    public bool DataDigest { get; }

    public uint CmdSn { get; set; }

    public uint ExpStatSn { get; private set; }

    public static async Task<RawIscsiSession> LoginAsync(IPEndPoint endPoint, string targetName, string initiatorName = "iqn.2026-11.io.target.test:raw",
        byte isidLast = 1, bool headerDigest = false, bool dataDigest = false)
    {
        var socket = new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await socket.ConnectAsync(endPoint);
        var session = new RawIscsiSession(socket, headerDigest, dataDigest);
        await session.SendRawAsync(LoginRequest(targetName, initiatorName, isidLast, headerDigest, dataDigest));
        RawPdu response = await session.ReceiveAsync(TimeSpan.FromSeconds(10), digests: false)
            ?? throw new InvalidOperationException("connection closed during login");
        (session.CmdSn, session.ExpStatSn) = CheckLoginResponse(response);
        return session;
    }

    /// <summary>The one-PDU login (straight to the full feature phase) as it goes on the wire; login PDUs never carry digests.</summary>
    public static byte[] LoginRequest(string targetName, string initiatorName, byte isidLast, bool headerDigest, bool dataDigest)
    {
        string digest(bool on) => on ? "CRC32C" : "None";
        byte[] text = Encoding.ASCII.GetBytes(
            $"InitiatorName={initiatorName}\0TargetName={targetName}\0SessionType=Normal\0HeaderDigest={digest(headerDigest)}\0" +
            $"DataDigest={digest(dataDigest)}\0ImmediateData=Yes\0InitialR2T=No\0MaxRecvDataSegmentLength={MaxRecvDataSegmentBytes}\0" +
            "FirstBurstLength=262144\0MaxBurstLength=1048576\0ErrorRecoveryLevel=0\0MaxConnections=1\0");
        byte[] bhs = new byte[48];
        bhs[0] = 0x40 | (byte)IscsiOpcode.LoginRequest;
        bhs[1] = 0x80 | (1 << 2) | 3;                      // T, CSG operational, NSG full feature
        bhs[8] = 0x80;                                       // ISID: random format
        bhs[13] = isidLast;
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(16), 1);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(24), 1);
        IscsiPdu.SetLengths(bhs, 0, text.Length);
        return Frame(bhs, text, headerDigest: false, dataDigest: false);
    }

    /// <summary>Throws unless the login succeeded into the full feature phase; the session's first CmdSN and ExpStatSN.</summary>
    public static (uint CmdSn, uint ExpStatSn) CheckLoginResponse(RawPdu response)
    {
        ushort status = BinaryPrimitives.ReadUInt16BigEndian(response.Bhs.AsSpan(36));
        if (response.Opcode != IscsiOpcode.LoginResponse || status != 0 || (response.Bhs[1] & 0x83) != 0x83)
            throw new InvalidOperationException($"login failed: opcode {response.Opcode}, status 0x{status:x4}, flags 0x{response.Bhs[1]:x2}, text {Encoding.ASCII.GetString(response.Data)}");
        return (BinaryPrimitives.ReadUInt32BigEndian(response.Bhs.AsSpan(28)), BinaryPrimitives.ReadUInt32BigEndian(response.Bhs.AsSpan(24)) + 1);
    }

    public uint NextItt() => _itt++;

    /// <summary>A PDU as it goes on the wire: BHS, header digest, data, padding, data digest.</summary>
    public static byte[] Frame(byte[] bhs, ReadOnlySpan<byte> data, bool headerDigest, bool dataDigest, bool breakHeaderDigest = false, bool breakDataDigest = false)
    {
        int padded = IscsiPdu.Pad4(data.Length);
        int length = 48 + (headerDigest ? 4 : 0) + padded + (dataDigest && data.Length > 0 ? 4 : 0);
        byte[] frame = new byte[length];
        bhs.AsSpan(0, 48).CopyTo(frame);
        int at = 48;
        if (headerDigest)
        {
            uint crc = Target.Dedup.Hashing.Crc32C.Compute(frame.AsSpan(0, 48));
            IscsiPdu.WriteDigest(frame.AsSpan(at), breakHeaderDigest ? ~crc : crc);
            at += 4;
        }
        data.CopyTo(frame.AsSpan(at));
        if (dataDigest && data.Length > 0)
        {
            uint crc = IscsiPdu.DataDigest(data, new byte[padded - data.Length]);
            IscsiPdu.WriteDigest(frame.AsSpan(at + padded), breakDataDigest ? crc ^ 0x5A : crc);
        }
        return frame;
    }

    public async Task SendRawAsync(ReadOnlyMemory<byte> bytes)
    {
        while (!bytes.IsEmpty)
        {
            int sent = await _socket.SendAsync(bytes, SocketFlags.None);
            bytes = bytes.Slice(sent);
        }
    }

    public Task SendAsync(byte[] bhs, ReadOnlySpan<byte> data = default, bool breakHeaderDigest = false, bool breakDataDigest = false)
        => SendRawAsync(Frame(bhs, data, HeaderDigest, DataDigest, breakHeaderDigest, breakDataDigest));

    /// <summary>A SCSI Command BHS (F bit set); the CmdSN is taken from the session unless given.</summary>
    public byte[] ScsiCommand(ReadOnlySpan<byte> cdb, uint expectedLength, bool read, bool write, int immediateBytes, uint? cmdSn = null, bool immediate = false)
    {
        byte[] bhs = new byte[48];
        bhs[0] = (byte)((immediate ? 0x40 : 0) | (byte)IscsiOpcode.ScsiCommand);
        bhs[1] = (byte)(0x80 | (read ? 0x40 : 0) | (write ? 0x20 : 0) | 0x01);
        IscsiPdu.SetLengths(bhs, 0, immediateBytes);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(16), NextItt());
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(20), expectedLength);
        uint sn = cmdSn ?? CmdSn;
        if (cmdSn is null && !immediate) CmdSn++;
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(24), sn);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(28), ExpStatSn);
        cdb.CopyTo(bhs.AsSpan(32));
        return bhs;
    }

    public byte[] NopOut(int dataBytes)
    {
        byte[] bhs = new byte[48];
        bhs[0] = 0x40 | (byte)IscsiOpcode.NopOut;
        bhs[1] = 0x80;
        IscsiPdu.SetLengths(bhs, 0, dataBytes);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(16), NextItt());
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(20), IscsiReservedTag.None);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(24), CmdSn);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(28), ExpStatSn);
        return bhs;
    }

    /// <summary>A Task Management Function Request BHS (immediate, like open-iscsi sends them).</summary>
    public byte[] TaskManagement(byte function, uint referencedTag = IscsiReservedTag.None, ulong lun = 0, uint? referencedCmdSn = null)
    {
        byte[] bhs = new byte[48];
        bhs[0] = 0x40 | (byte)IscsiOpcode.TaskManagementRequest;
        bhs[1] = (byte)(0x80 | function);
        BinaryPrimitives.WriteUInt16BigEndian(bhs.AsSpan(8), (ushort)lun);   // single-level LUN, peripheral addressing
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(16), NextItt());
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(20), referencedTag);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(24), CmdSn);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(28), ExpStatSn);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(32), referencedCmdSn ?? CmdSn);
        return bhs;
    }

    /// <summary>Sends a Task Management Function Request; returns its ITT (the response is read with <see cref="ReceiveForAsync"/>).</summary>
    public async Task<uint> SendTaskManagementAsync(byte function, uint referencedTag = IscsiReservedTag.None, ulong lun = 0, uint? referencedCmdSn = null)
    {
        byte[] bhs = TaskManagement(function, referencedTag, lun, referencedCmdSn);
        await SendAsync(bhs);
        return BinaryPrimitives.ReadUInt32BigEndian(bhs.AsSpan(16));
    }

    /// <summary>Sends a command without waiting for its status; returns its ITT.</summary>
    public async Task<uint> StartCommandAsync(byte[] cdb, uint expectedLength, byte[]? writeData = null)
    {
        bool write = writeData is not null;
        byte[] bhs = ScsiCommand(cdb, expectedLength, read: !write && expectedLength > 0, write: write, immediateBytes: writeData?.Length ?? 0);
        await SendAsync(bhs, writeData);
        return BinaryPrimitives.ReadUInt32BigEndian(bhs.AsSpan(16));
    }

    /// <summary>
    /// Reads PDUs until one with <paramref name="itt"/> arrives (returned) or <paramref name="timeout"/>
    /// passes (null); every other PDU read meanwhile is added to <paramref name="others"/> when given.
    /// </summary>
    public async Task<RawPdu?> ReceiveForAsync(uint itt, TimeSpan timeout, List<RawPdu>? others = null)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (clock.Elapsed < timeout)
        {
            RawPdu? pdu = await ReceiveAsync(timeout - clock.Elapsed, nullOnTimeout: true);
            if (pdu is null) return null;
            if (pdu.Itt == itt) return pdu;
            others?.Add(pdu);
        }
        return null;
    }

    /// <summary>The next PDU, or null when the target closed the connection (or nothing came within the timeout and <paramref name="nullOnTimeout"/>).</summary>
    public async Task<RawPdu?> ReceiveAsync(TimeSpan timeout, bool? digests = null, bool nullOnTimeout = false)
    {
        bool headerDigest = digests ?? HeaderDigest;
        bool dataDigest = digests ?? DataDigest;
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            byte[] bhs = new byte[48 + (headerDigest ? 4 : 0)];
            if (!await ReadExactlyAsync(bhs, cts.Token)) return null;
            int dataBytes = bhs[5] << 16 | bhs[6] << 8 | bhs[7];
            int wire = dataBytes == 0 ? 0 : IscsiPdu.Pad4(dataBytes) + (dataDigest ? 4 : 0);
            byte[] rest = new byte[bhs[4] * 4 + wire];
            if (!await ReadExactlyAsync(rest, cts.Token)) return null;
            int ahs = bhs[4] * 4;
            if (ahs > 0) throw new InvalidOperationException("unexpected AHS from the target");
            byte[] data = rest.AsSpan(0, dataBytes).ToArray();
            var pdu = new RawPdu(bhs.AsSpan(0, 48).ToArray(), data);
            if (pdu.Opcode is IscsiOpcode.ScsiResponse or IscsiOpcode.NopIn or IscsiOpcode.Reject or IscsiOpcode.TaskManagementResponse
                || (pdu.Opcode == IscsiOpcode.DataIn && (pdu.Bhs[1] & 0x01) != 0))
            {
                uint statSn = BinaryPrimitives.ReadUInt32BigEndian(pdu.Bhs.AsSpan(24));
                if (pdu.Opcode != IscsiOpcode.NopIn || pdu.Itt != IscsiReservedTag.None) ExpStatSn = statSn + 1;
            }
            return pdu;
        }
        catch (OperationCanceledException) when (nullOnTimeout)
        {
            return null;
        }
        catch (SocketException)
        {
            return null;
        }
    }

    private async Task<bool> ReadExactlyAsync(Memory<byte> buffer, CancellationToken ct)
    {
        while (!buffer.IsEmpty)
        {
            int received = await _socket.ReceiveAsync(buffer, SocketFlags.None, ct);
            if (received == 0) return false;
            buffer = buffer.Slice(received);
        }
        return true;
    }

    /// <summary>Sends a command (write data as immediate data) and collects Data-In and the status.</summary>
    public async Task<RawScsiResult> CommandAsync(byte[] cdb, uint expectedLength, byte[]? writeData = null, TimeSpan? timeout = null)
    {
        bool write = writeData is not null;
        byte[] bhs = ScsiCommand(cdb, expectedLength, read: !write && expectedLength > 0, write: write, immediateBytes: writeData?.Length ?? 0);
        uint itt = BinaryPrimitives.ReadUInt32BigEndian(bhs.AsSpan(16));
        await SendAsync(bhs, writeData);
        return await ResultAsync(itt, timeout ?? TimeSpan.FromSeconds(10));
    }

    public async Task<RawScsiResult> ResultAsync(uint itt, TimeSpan timeout)
    {
        var dataIn = new MemoryStream();
        while (true)
        {
            RawPdu pdu = await ReceiveAsync(timeout) ?? throw new InvalidOperationException($"connection closed before the response to 0x{itt:x8}");
            if (pdu.Itt != itt && pdu.Opcode != IscsiOpcode.Reject) continue;
            switch (pdu.Opcode)
            {
                case IscsiOpcode.DataIn:
                    dataIn.Write(pdu.Data);
                    if ((pdu.Bhs[1] & 0x01) != 0) return new RawScsiResult(pdu.Bhs[3], dataIn.ToArray(), [], pdu);
                    break;
                case IscsiOpcode.ScsiResponse:
                    byte[] sense = pdu.Data.Length >= 2 ? pdu.Data.AsSpan(2, Math.Min(pdu.Data.Length - 2, pdu.Data[0] << 8 | pdu.Data[1])).ToArray() : [];
                    return new RawScsiResult(pdu.Bhs[3], dataIn.ToArray(), sense, pdu);
                case IscsiOpcode.Reject:
                    break;   // the caller asked for the command's own status; a Reject of another PDU is skipped
            }
        }
    }

    /// <summary>A NOP-Out ping answered by a NOP-In: true when the session still works.</summary>
    public async Task<bool> PingAsync(TimeSpan timeout)
    {
        byte[] bhs = NopOut(0);
        uint itt = BinaryPrimitives.ReadUInt32BigEndian(bhs.AsSpan(16));
        await SendAsync(bhs);
        while (true)
        {
            RawPdu? pdu = await ReceiveAsync(timeout, nullOnTimeout: true);
            if (pdu is null) return false;
            if (pdu.Opcode == IscsiOpcode.NopIn && pdu.Itt == itt) return true;
        }
    }

    /// <summary>True when the target closed the connection within the timeout (anything received meanwhile is skipped).</summary>
    public async Task<bool> WaitClosedAsync(TimeSpan timeout)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        byte[] buffer = new byte[4096];
        while (clock.Elapsed < timeout)
        {
            using var cts = new CancellationTokenSource(timeout - clock.Elapsed);
            try
            {
                if (await _socket.ReceiveAsync(buffer, SocketFlags.None, cts.Token) == 0) return true;
            }
            catch (OperationCanceledException)
            {
                return false;
            }
            catch (SocketException)
            {
                return true;
            }
        }
        return false;
    }

    public void Abort()
    {
        try
        {
            _socket.LingerState = new LingerOption(true, 0);
            _socket.Close();
        }
        catch (ObjectDisposedException)
        {
        }
    }

    public ValueTask DisposeAsync()
    {
        _socket.Dispose();
        return ValueTask.CompletedTask;
    }
}
