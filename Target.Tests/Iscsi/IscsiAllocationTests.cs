// Allocation on the iSCSI request path of a running server, in steady state: the iSCSI twin of
// NbdAllocationTests. Invariant: 4 KiB READ(10)s (from the device through io_uring, and from the
// read cache) and 4 KiB WRITE(10)s with immediate data into the write cache allocate nothing per
// command on any thread (receive loop, SCSI layer, engine, io_uring thread, sender), through the
// metrics decorator the real host puts around each volume.
// Measured with GC.GetTotalAllocatedBytes (every thread) over many pipelined commands from a
// synchronous client that reuses its buffers, after a warm-up, minus what the process allocates
// idle for as long. Runs alone (the interop collection). Not timed.
using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging.Abstractions;
using Target.Dedup;
using Target.Metrics;
using Target.Protocol.Iscsi;
using Target.Protocol.Scsi;
using Target.Tests.Engine;
using Target.Tests.Interop;
using Target.Tests.Scsi;
using Target.Tests.Support;
using static Target.Tests.Support.SteadyStateAllocation;
using Xunit.Abstractions;

namespace Target.Tests.Iscsi;

[Collection(InteropCollection.Name)]
public sealed class IscsiAllocationTests(ITestOutputHelper output)
{
    private const string TargetName = "iqn.2026-11.io.target:alloc";
    private const int SectorBytes = 512;
    private const int BhsBytes = 48;

    public enum Kind { DeviceRead, CachedRead, Write }

    [Theory]
    [InlineData(Kind.DeviceRead)]
    [InlineData(Kind.CachedRead)]
    [InlineData(Kind.Write)]
    public async Task SteadyStateCommandsAllocateNothing(Kind kind)
    {
        using var dir = new TempPoolDir();
        // Dirty pages do not age out during the test, so no destage (and no checkpoint) allocates in
        // the windows measured: what the writes allocate shows in full instead of beside background work.
        await using Pool pool = Pool.Open(Options(dir.Path, readCache: kind != Kind.DeviceRead) with { DirtyAgeMaxMs = 600_000 });
        var random = new Random(8);
        Volume volume = await CreateFilledVolumeAsync(pool, SectorBytes, random);

        var server = new IscsiServer(new IscsiTargetList(new IscsiTarget(TargetName, new MeteredVolume(volume), false)),
            new IscsiServerOptions { NopInInterval = TimeSpan.Zero }, NullLogger.Instance);
        server.ListenTcp(new IPEndPoint(IPAddress.Loopback, 0));
        using var stop = new CancellationTokenSource();
        Task run = server.RunAsync(stop.Token);
        try
        {
            await Task.Run(() => Drive(kind, server.BoundEndPoints[0], random));
        }
        finally
        {
            stop.Cancel();
            await run;
            await server.DisposeAsync();
        }
    }

    private void Drive(Kind kind, EndPoint endPoint, Random random)
    {
        // Synchronous from the start: a socket that ever ran an async operation emulates blocking
        // calls with per-call objects, which would count against the server here.
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true, ReceiveTimeout = 30_000, SendTimeout = 30_000 };
        socket.Connect(endPoint);
        SendAll(socket, RawIscsiSession.LoginRequest(TargetName, "iqn.2026-11.io.target.test:alloc", 1, headerDigest: false, dataDigest: false));
        byte[] header = new byte[BhsBytes];
        byte[] data = new byte[RawIscsiSession.MaxRecvDataSegmentBytes];
        ReceiveExactly(socket, header);
        int textBytes = header[5] << 16 | header[6] << 8 | header[7];
        ReceiveExactly(socket, data.AsSpan(0, (textBytes + 3) & ~3));
        (uint cmdSn, uint expStatSn) = RawIscsiSession.CheckLoginResponse(new RawPdu(header.ToArray(), data.AsSpan(0, textBytes).ToArray()));
        bool write = kind == Kind.Write;
        int stride = BhsBytes + (write ? BlockBytes : 0);
        const int batches = 64;
        byte[][] requests = new byte[batches][];
        for (int b = 0; b < batches; b++)
        {
            requests[b] = new byte[QueueDepth * stride];
            for (int i = 0; i < QueueDepth; i++)
            {
                uint lba = (uint)(random.NextInt64(VolumeBytes / BlockBytes) * (BlockBytes / SectorBytes));
                byte[] cdb = write ? Cdb.Write10(lba, BlockBytes / SectorBytes) : Cdb.Read10(lba, BlockBytes / SectorBytes);
                Span<byte> bhs = requests[b].AsSpan(i * stride, BhsBytes);
                bhs[0] = (byte)IscsiOpcode.ScsiCommand;
                bhs[1] = (byte)(0x80 | (write ? 0x20 : 0x40) | 0x01);   // F, W or R, simple task attribute
                bhs[5] = (byte)((write ? BlockBytes : 0) >> 16);          // immediate data length
                bhs[6] = (byte)((write ? BlockBytes : 0) >> 8);
                BinaryPrimitives.WriteUInt32BigEndian(bhs[16..], (uint)i + 1);   // ITT: the command's place in the batch
                BinaryPrimitives.WriteUInt32BigEndian(bhs[20..], BlockBytes);     // expected data transfer length
                cdb.CopyTo(bhs[32..]);
                if (write) random.NextBytes(requests[b].AsSpan(i * stride + BhsBytes, BlockBytes));
            }
        }
        long stamp = 0;

        void RunBatches(int count)
        {
            for (int n = 0; n < count; n++)
            {
                byte[] batch = requests[n % batches];
                stamp++;
                for (int i = 0; i < QueueDepth; i++)
                {
                    Span<byte> pdu = batch.AsSpan(i * stride);
                    BinaryPrimitives.WriteUInt32BigEndian(pdu[24..], cmdSn++);
                    BinaryPrimitives.WriteUInt32BigEndian(pdu[28..], expStatSn);
                    if (write) BinaryPrimitives.WriteInt64LittleEndian(pdu[BhsBytes..], stamp * QueueDepth + i);
                }
                SendAll(socket, batch);
                // Each command ends with a SCSI Response, or a Data-In carrying the status (S bit).
                for (int done = 0; done < QueueDepth;)
                {
                    ReceiveExactly(socket, header);
                    int dataBytes = header[5] << 16 | header[6] << 8 | header[7];
                    if (header[4] != 0) throw new InvalidOperationException("unexpected AHS");
                    ReceiveExactly(socket, data.AsSpan(0, (dataBytes + 3) & ~3));
                    var opcode = (IscsiOpcode)(header[0] & 0x3F);
                    bool final = opcode == IscsiOpcode.ScsiResponse || (opcode == IscsiOpcode.DataIn && (header[1] & 0x01) != 0);
                    if (opcode != IscsiOpcode.ScsiResponse && opcode != IscsiOpcode.DataIn)
                        throw new InvalidOperationException("unexpected PDU from the target");
                    if (!final) continue;
                    // (No Assert here: xunit's comparers allocate, and this loop is measured.)
                    if (header[3] != 0 || (opcode == IscsiOpcode.ScsiResponse && header[2] != 0)) throw new InvalidOperationException("SCSI command failed");
                    expStatSn = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(24)) + 1;
                    done++;
                }
            }
        }

        AssertAllocatesNothing(output, kind.ToString(), "command", RunBatches);
    }
}
