// Bad input on a live iSCSI session (an in-process IscsiServer over memory volumes, real TCP on
// loopback): broken header and data digests, unknown opcodes, oversized and inconsistent lengths,
// CmdSN outside the window, DataSN violations, abrupt disconnects, and a seeded fuzzer that
// mutates valid PDU streams.
//
// Invariants checked (DESIGN "bad input on any port"):
// - each bad PDU gets the RFC 7143 answer: Reject, CHECK CONDITION, silence (CmdSN) or the close
//   of that connection only (header digest: PDU boundaries are lost);
// - another session, logged in all along to another volume, keeps working and its data never changes;
// - the server keeps accepting logins and leaks no connection.
using System.Buffers.Binary;
using System.Net;
using Microsoft.Extensions.Logging.Abstractions;
using Target.Protocol.Iscsi;
using Target.Protocol.Scsi;
using Target.Tests.Scsi;
using Target.Tests.Support;
using Xunit.Abstractions;

namespace Target.Tests.Iscsi;

public sealed class IscsiBadInputTests(ITestOutputHelper output) : IAsyncLifetime
{
    private const string VictimName = "iqn.2026-11.io.target:victim";
    private const string BystanderName = "iqn.2026-11.io.target:bystander";
    private const int Block = 512;
    private const uint CanaryLba = 1000;
    private const int CanaryBlocks = 8;

    private static readonly TimeSpan s_wait = TimeSpan.FromSeconds(10);

    private readonly MemoryVolume _victim = new("victim", 16 << 20);
    private readonly MemoryVolume _bystanderVolume = new("bystander", 16 << 20);
    private readonly CancellationTokenSource _stop = new();
    private IscsiServer _server = null!;
    private Task _run = Task.CompletedTask;
    private IPEndPoint _endPoint = null!;
    private RawIscsiSession _bystander = null!;
    private readonly byte[] _canary = new byte[CanaryBlocks * Block];

    public async Task InitializeAsync()
    {
        var catalog = new IscsiTargetList(new IscsiTarget(VictimName, _victim, false), new IscsiTarget(BystanderName, _bystanderVolume, false));
        _server = new IscsiServer(catalog, new IscsiServerOptions { NopInInterval = TimeSpan.Zero }, NullLogger.Instance);
        _server.ListenTcp(new IPEndPoint(IPAddress.Loopback, 0));
        _run = _server.RunAsync(_stop.Token);
        _endPoint = _server.BoundEndPoints[0];
        _bystander = await RawIscsiSession.LoginAsync(_endPoint, BystanderName, "iqn.2026-11.io.target.test:bystander", headerDigest: true, dataDigest: true);
        new Random(1000).NextBytes(_canary);
        RawScsiResult written = await _bystander.CommandAsync(Cdb.Write10(CanaryLba, CanaryBlocks), (uint)_canary.Length, _canary);
        Assert.Equal(0, written.Status);
    }

    public async Task DisposeAsync()
    {
        await _bystander.DisposeAsync();
        _stop.Cancel();
        await _run.WaitAsync(TimeSpan.FromSeconds(30));
        await _server.DisposeAsync();
    }

    /// <summary>The other session still works and its data is what it wrote; the server takes new logins.</summary>
    private async Task AssertOthersUnaffectedAsync()
    {
        Assert.True(await _bystander.PingAsync(s_wait), "the bystander session stopped answering");
        RawScsiResult read = await _bystander.CommandAsync(Cdb.Read10(CanaryLba, CanaryBlocks), (uint)_canary.Length);
        Assert.Equal(0, read.Status);
        Assert.Equal(_canary, read.DataIn);
        await using RawIscsiSession fresh = await RawIscsiSession.LoginAsync(_endPoint, VictimName, "iqn.2026-11.io.target.test:fresh", isidLast: 77);
        Assert.Equal(0, (await fresh.CommandAsync(Cdb.TestUnitReady(), 0)).Status);
    }

    private Task<RawIscsiSession> VictimAsync(bool digests = false, byte isid = 1) =>
        RawIscsiSession.LoginAsync(_endPoint, VictimName, "iqn.2026-11.io.target.test:victim", isid, headerDigest: digests, dataDigest: digests);

    [Fact]
    public async Task A_header_digest_error_closes_that_connection_only()
    {
        await using RawIscsiSession victim = await VictimAsync(digests: true);
        await victim.SendAsync(victim.ScsiCommand(Cdb.TestUnitReady(), 0, read: false, write: false, immediateBytes: 0), breakHeaderDigest: true);
        Assert.True(await victim.WaitClosedAsync(s_wait), "the target kept a connection whose PDU boundaries it cannot trust");
        await AssertOthersUnaffectedAsync();
    }

    [Fact]
    public async Task A_data_digest_error_on_immediate_data_is_rejected_and_the_write_fails_without_writing()
    {
        await using RawIscsiSession victim = await VictimAsync(digests: true);
        byte[] data = Enumerable.Repeat((byte)0xEE, 4 * Block).ToArray();
        byte[] bhs = victim.ScsiCommand(Cdb.Write10(10, 4), (uint)data.Length, read: false, write: true, immediateBytes: data.Length);
        uint itt = BinaryPrimitives.ReadUInt32BigEndian(bhs.AsSpan(16));
        await victim.SendAsync(bhs, data, breakDataDigest: true);

        RawPdu? reject = await victim.ReceiveAsync(s_wait);
        Assert.NotNull(reject);
        Assert.Equal(IscsiOpcode.Reject, reject.Opcode);
        Assert.Equal(IscsiRejectReason.DataDigestError, reject.Bhs[2]);
        RawScsiResult result = await victim.ResultAsync(itt, s_wait);
        Assert.Equal((byte)ScsiStatus.CheckCondition, result.Status);
        Assert.True(ScsiSense.TryParse(result.Sense, out SenseKey key, out ushort asc));
        Assert.Equal(SenseKey.AbortedCommand, key);
        Assert.Equal(Asc.IscsiDigestError, asc);

        RawScsiResult read = await victim.CommandAsync(Cdb.Read10(10, 4), 4 * Block);
        Assert.True(read.DataIn.All(b => b == 0), "a write whose data failed its digest reached the volume");
        Assert.True(await victim.PingAsync(s_wait));
        await AssertOthersUnaffectedAsync();
    }

    [Fact]
    public async Task Unknown_opcodes_and_oversized_segments_are_rejected_and_the_session_lives_on()
    {
        await using RawIscsiSession victim = await VictimAsync();
        byte[] unknown = victim.NopOut(0);
        unknown[0] = 0x40 | 0x1C;                                      // no such initiator opcode
        await victim.SendAsync(unknown);
        RawPdu? reject = await victim.ReceiveAsync(s_wait);
        Assert.Equal(IscsiOpcode.Reject, reject!.Opcode);
        Assert.Equal(IscsiRejectReason.CommandNotSupported, reject.Bhs[2]);

        byte[] big = victim.NopOut(IscsiLimits.TargetMaxRecvDataSegmentBytes + 4096);   // beyond our MaxRecvDataSegmentLength
        await victim.SendAsync(big, new byte[IscsiLimits.TargetMaxRecvDataSegmentBytes + 4096]);
        reject = await victim.ReceiveAsync(s_wait);
        Assert.Equal(IscsiOpcode.Reject, reject!.Opcode);
        Assert.Equal(IscsiRejectReason.ProtocolError, reject.Bhs[2]);

        Assert.True(await victim.PingAsync(s_wait));
        await AssertOthersUnaffectedAsync();
    }

    [Fact]
    public async Task Bad_command_lengths_get_check_condition()
    {
        await using RawIscsiSession victim = await VictimAsync();
        long blocks = _victim.SizeBytes / Block;
        RawScsiResult beyond = await victim.CommandAsync(Cdb.Read10((uint)blocks - 1, 2), 2 * Block);
        Assert.Equal((byte)ScsiStatus.CheckCondition, beyond.Status);
        Assert.True(ScsiSense.TryParse(beyond.Sense, out _, out ushort asc));
        Assert.Equal(Asc.LbaOutOfRange, asc);

        // More immediate data than the expected data transfer length: a protocol error (Reject).
        byte[] bhs = victim.ScsiCommand(Cdb.Write10(0, 1), 512, read: false, write: true, immediateBytes: 1024);
        await victim.SendAsync(bhs, new byte[1024]);
        RawPdu? reject = await victim.ReceiveAsync(s_wait);
        Assert.Equal(IscsiOpcode.Reject, reject!.Opcode);

        Assert.True(await victim.PingAsync(s_wait));
        await AssertOthersUnaffectedAsync();
    }

    [Fact]
    public async Task A_command_outside_the_cmdsn_window_is_ignored_and_the_next_in_order_one_runs()
    {
        await using RawIscsiSession victim = await VictimAsync();
        byte[] stray = victim.ScsiCommand(Cdb.TestUnitReady(), 0, read: false, write: false, immediateBytes: 0, cmdSn: victim.CmdSn + 1000);
        await victim.SendAsync(stray);
        Assert.Null(await victim.ReceiveAsync(TimeSpan.FromMilliseconds(300), nullOnTimeout: true));
        Assert.Equal(0, (await victim.CommandAsync(Cdb.TestUnitReady(), 0)).Status);
        await AssertOthersUnaffectedAsync();
    }

    [Fact]
    public async Task A_data_out_with_the_wrong_datasn_fails_the_command()
    {
        await using RawIscsiSession victim = await VictimAsync();
        byte[] bhs = victim.ScsiCommand(Cdb.Write10(20, 2), 1024, read: false, write: true, immediateBytes: 0);
        bhs[1] &= 0x7F;                                                // F=0: unsolicited Data-Out follows
        uint itt = BinaryPrimitives.ReadUInt32BigEndian(bhs.AsSpan(16));
        await victim.SendAsync(bhs);
        byte[] dataOut = new byte[48];
        dataOut[0] = (byte)IscsiOpcode.DataOut;
        dataOut[1] = 0x80;
        IscsiPdu.SetLengths(dataOut, 0, 1024);
        BinaryPrimitives.WriteUInt32BigEndian(dataOut.AsSpan(16), itt);
        BinaryPrimitives.WriteUInt32BigEndian(dataOut.AsSpan(20), IscsiReservedTag.None);
        BinaryPrimitives.WriteUInt32BigEndian(dataOut.AsSpan(36), 27);  // DataSN must be 0
        await victim.SendAsync(dataOut, Enumerable.Repeat((byte)0x77, 1024).ToArray());
        RawScsiResult result = await victim.ResultAsync(itt, s_wait);
        Assert.Equal((byte)ScsiStatus.CheckCondition, result.Status);
        RawScsiResult read = await victim.CommandAsync(Cdb.Read10(20, 2), 1024);
        Assert.True(read.DataIn.All(b => b == 0));
        await AssertOthersUnaffectedAsync();
    }

    [Fact]
    public async Task An_abrupt_disconnect_in_the_middle_of_a_pdu_leaves_the_rest_serving()
    {
        RawIscsiSession victim = await VictimAsync();
        byte[] data = new byte[64 * 1024];
        byte[] frame = RawIscsiSession.Frame(victim.ScsiCommand(Cdb.Write10(0, 128), (uint)data.Length, read: false, write: true, immediateBytes: data.Length),
            data, headerDigest: false, dataDigest: false);
        await victim.SendRawAsync(frame.AsMemory(0, 48 + 1000));
        victim.Abort();
        await AssertOthersUnaffectedAsync();
        await WaitForConnectionsAsync(expected: 1);
    }

    [Fact]
    public async Task Seeded_fuzzing_of_valid_pdu_streams_never_hurts_another_session()
    {
        int seed = int.TryParse(Environment.GetEnvironmentVariable("TARGET_ISCSI_FUZZ_SEED"), out int fixedSeed) ? fixedSeed : Random.Shared.Next();
        int iterations = int.TryParse(Environment.GetEnvironmentVariable("TARGET_ISCSI_FUZZ_ITERATIONS"), out int n) ? n : 150;
        output.WriteLine($"iSCSI PDU fuzz: seed {seed}, {iterations} iterations (replay with TARGET_ISCSI_FUZZ_SEED={seed})");
        var random = new Random(seed);
        for (int i = 0; i < iterations; i++)
        {
            bool digests = random.Next(3) == 0;
            await using RawIscsiSession victim = await VictimAsync(digests, isid: (byte)(1 + i % 200));
            byte[] stream = ValidStream(victim, random);
            Mutate(stream, random);
            try
            {
                await victim.SendRawAsync(stream);
            }
            catch (System.Net.Sockets.SocketException)
            {
                // The target closed on a framing error while we were still sending: allowed.
            }
            // Read whatever comes back for a moment, then drop the connection (sometimes abruptly).
            while (await victim.ReceiveAsync(TimeSpan.FromMilliseconds(30), nullOnTimeout: true) is not null)
            {
            }
            if (random.Next(2) == 0) victim.Abort();
            if (i % 25 == 24) await AssertOthersUnaffectedAsync();
        }
        await AssertOthersUnaffectedAsync();
        await WaitForConnectionsAsync(expected: 1);
    }

    /// <summary>A few valid PDUs: NOP-Out with data, TEST UNIT READY, a WRITE with immediate data, a READ.</summary>
    private static byte[] ValidStream(RawIscsiSession session, Random random)
    {
        var stream = new MemoryStream();
        int count = random.Next(1, 6);
        for (int p = 0; p < count; p++)
        {
            switch (random.Next(4))
            {
                case 0:
                    {
                        byte[] ping = new byte[random.Next(0, 64)];
                        random.NextBytes(ping);
                        stream.Write(RawIscsiSession.Frame(session.NopOut(ping.Length), ping, session.HeaderDigest, session.DataDigest));
                        break;
                    }
                case 1:
                    stream.Write(RawIscsiSession.Frame(session.ScsiCommand(Cdb.TestUnitReady(), 0, false, false, 0), [], session.HeaderDigest, session.DataDigest));
                    break;
                case 2:
                    {
                        ushort blocks = (ushort)random.Next(1, 9);
                        byte[] data = new byte[blocks * Block];
                        random.NextBytes(data);
                        byte[] bhs = session.ScsiCommand(Cdb.Write10((uint)random.Next(0, 64), blocks), (uint)data.Length, false, true, data.Length);
                        stream.Write(RawIscsiSession.Frame(bhs, data, session.HeaderDigest, session.DataDigest));
                        break;
                    }
                default:
                    {
                        ushort blocks = (ushort)random.Next(1, 9);
                        byte[] bhs = session.ScsiCommand(Cdb.Read10((uint)random.Next(0, 64), blocks), (uint)(blocks * Block), true, false, 0);
                        stream.Write(RawIscsiSession.Frame(bhs, [], session.HeaderDigest, session.DataDigest));
                        break;
                    }
            }
        }
        return stream.ToArray();
    }

    /// <summary>Flips bytes (biased towards the headers), or truncates, or duplicates a slice.</summary>
    private static void Mutate(byte[] stream, Random random)
    {
        int flips = random.Next(1, 5);
        for (int f = 0; f < flips; f++)
        {
            int at = random.Next(3) == 0 ? random.Next(stream.Length) : random.Next(Math.Min(48, stream.Length));
            stream[at] = random.Next(2) == 0 ? (byte)random.Next(256) : (byte)(stream[at] ^ (1 << random.Next(8)));
        }
    }

    private async Task WaitForConnectionsAsync(int expected)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (_server.ConnectionCount > expected && clock.Elapsed < TimeSpan.FromSeconds(20))
            await Task.Delay(20);
        Assert.Equal(expected, _server.ConnectionCount);
    }
}
