// Bad input, one case per test. Invariant under test (DESIGN.md): bad input gets the protocol's
// error and a log line; other connections and the stored data are unaffected.
using Microsoft.Extensions.Logging;
using Target.Dedup;
using Target.Protocol.Nbd;
using Target.Tests.Support;
using Xunit.Abstractions;

namespace Target.Tests.Nbd;

public sealed class NbdBadInputTests(ITestOutputHelper output)
{
    private static async Task AssertServesAsync(TestNbdClient client, ulong offset = 0)
    {
        byte[] data = [1, 2, 3, 4, 5, 6, 7, 8];
        await client.WriteAsync(offset, data);
        Assert.Equal(data, await client.ReadAsync(offset, (uint)data.Length));
    }

    [Fact]
    public async Task Bad_request_magic_closes_only_that_connection()
    {
        var (server, _, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient good = await server.OpenAsync();
        await using TestNbdClient bad = await server.OpenAsync();
        await AssertServesAsync(good);

        byte[] request = TestNbdClient.EncodeRequest(NbdCommand.Read, 0, 1, 0, 512);
        request[0] ^= 0xff;
        await bad.SendAsync(request);
        Assert.True(await bad.IsClosedByServerAsync());
        Assert.True(await server.Logger.WaitForAsync(LogLevel.Warning, "bad request magic"));

        await AssertServesAsync(good, 4096);
        await using TestNbdClient fresh = await server.OpenAsync();
        await AssertServesAsync(fresh, 8192);
    }

    [Fact]
    public async Task Requests_before_bad_magic_are_still_answered()
    {
        var (server, _, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient client = await server.OpenAsync();
        ulong handle = client.NextHandle();
        client.Track(NbdCommand.Read, handle, 0, 16);
        var bytes = new MemoryStream();
        bytes.Write(TestNbdClient.EncodeRequest(NbdCommand.Read, 0, handle, 0, 16));
        bytes.Write(new byte[28]);
        await client.SendAsync(bytes.ToArray());
        TestReply reply = await client.ReadReplyAsync();
        Assert.Equal(handle, reply.Handle);
        Assert.Equal(0u, reply.Error);
        Assert.True(await client.IsClosedByServerAsync());
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Out_of_range_read_is_einval_and_the_connection_continues(bool structured)
    {
        var (server, disk, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient client = await server.OpenAsync("disk", structured);
        ulong size = (ulong)disk.SizeBytes;
        foreach ((ulong offset, uint length) in new[] { (size, 1u), (size - 4096, 8192u), (ulong.MaxValue - 10, 4096u), (size + 4096, 0u) })
        {
            TestReply reply = await client.RequestAsync(NbdCommand.Read, 0, offset, length);
            Assert.Equal(NbdError.Invalid, reply.Error);
            if (structured) Assert.Contains("beyond the end", reply.ErrorMessage);
        }
        await AssertServesAsync(client);
    }

    [Fact]
    public async Task Out_of_range_write_is_enospc_its_payload_is_skipped_and_the_connection_continues()
    {
        var (server, disk, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient client = await server.OpenAsync();
        byte[] payload = Enumerable.Repeat((byte)0x55, 8192).ToArray();
        TestReply reply = await client.RequestAsync(NbdCommand.Write, 0, (ulong)disk.SizeBytes - 4096, 8192, payload);
        Assert.Equal(NbdError.NoSpace, reply.Error);
        Assert.Equal(0, disk.WriteCount);
        Assert.Equal(NbdError.NoSpace, (await client.RequestAsync(NbdCommand.WriteZeroes, 0, (ulong)disk.SizeBytes, 1)).Error);
        Assert.Equal(NbdError.Invalid, (await client.RequestAsync(NbdCommand.Trim, 0, (ulong)disk.SizeBytes, 1)).Error);
        Assert.Equal(NbdError.Invalid, (await client.RequestAsync(NbdCommand.BlockStatus, 0, (ulong)disk.SizeBytes, 1)).Error);
        await AssertServesAsync(client);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Oversized_read_is_einval_or_eoverflow_with_df_and_the_connection_continues(bool structured)
    {
        var big = new MemoryVolume("big", 64L << 20);
        await using var server = new NbdTestServer(output, null, null, new NbdExport("big", big, "", false));
        await using TestNbdClient client = await server.OpenAsync("big", structured);
        TestReply reply = await client.RequestAsync(NbdCommand.Read, 0, 0, NbdLimits.MaxRequestBytes + 1u);
        Assert.Equal(NbdError.Invalid, reply.Error);
        if (structured)
        {
            reply = await client.RequestAsync(NbdCommand.Read, NbdCommandFlags.DontFragment, 0, NbdLimits.MaxRequestBytes + 4096u);
            Assert.Equal(NbdError.Overflow, reply.Error);
            Assert.Equal(ReplyTypes(NbdReplyType.Error), reply.Chunks.Select(c => c.Type));
        }
        Assert.Equal(0, big.ReadCount);
        await AssertServesAsync(client);
    }

    private static ushort[] ReplyTypes(params ushort[] types) => types;

    [Fact]
    public async Task Oversized_write_is_einval_its_payload_is_drained_and_the_connection_continues()
    {
        var big = new MemoryVolume("big", 64L << 20);
        await using var server = new NbdTestServer(output, null, null, new NbdExport("big", big, "", false));
        await using TestNbdClient client = await server.OpenAsync("big");
        var payload = new byte[NbdLimits.MaxRequestBytes + 4096];
        payload.AsSpan().Fill(0x77);
        TestReply reply = await client.RequestAsync(NbdCommand.Write, 0, 0, (uint)payload.Length, payload);
        Assert.Equal(NbdError.Invalid, reply.Error);
        Assert.Equal(0, big.WriteCount);
        await AssertServesAsync(client);
        Assert.Equal(0, big.Snapshot(16, 1)[0]);
    }

    [Fact]
    public async Task Absurd_write_length_closes_the_connection_only()
    {
        var (server, _, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient other = await server.OpenAsync();
        await using TestNbdClient client = await server.OpenAsync();
        await client.SendAsync(TestNbdClient.EncodeRequest(NbdCommand.Write, 0, 1, 0, uint.MaxValue));
        Assert.True(await client.IsClosedByServerAsync());
        Assert.True(await server.Logger.WaitForAsync(LogLevel.Warning, "exceeds any sane limit"));
        await AssertServesAsync(other);
    }

    [Fact]
    public async Task Write_to_a_read_only_export_is_eperm_and_changes_nothing()
    {
        var (server, _, readOnly) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        readOnly.Fill(0, [9, 9, 9, 9]);
        await using TestNbdClient client = await server.OpenAsync("ro");
        Assert.Equal(NbdError.Perm, (await client.RequestAsync(NbdCommand.Write, 0, 0, 4, new byte[] { 1, 2, 3, 4 })).Error);
        Assert.Equal(NbdError.Perm, (await client.RequestAsync(NbdCommand.Trim, 0, 0, 4096)).Error);
        Assert.Equal(NbdError.Perm, (await client.RequestAsync(NbdCommand.WriteZeroes, 0, 0, 4096)).Error);
        Assert.Equal(new byte[] { 9, 9, 9, 9 }, await client.ReadAsync(0, 4));
        Assert.Equal(0, readOnly.WriteCount);
    }

    [Fact]
    public async Task Volume_turned_read_only_under_a_writable_export_gives_eperm()
    {
        var (server, disk, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient client = await server.OpenAsync();
        disk.ReadOnly = true;
        Assert.Equal(NbdError.Perm, (await client.RequestAsync(NbdCommand.Write, 0, 0, 4, new byte[] { 1, 2, 3, 4 })).Error);
        disk.ReadOnly = false;
        await AssertServesAsync(client);
    }

    [Fact]
    public async Task No_space_in_the_engine_is_enospc_and_reads_keep_working()
    {
        var (server, disk, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient client = await server.OpenAsync();
        await client.WriteAsync(0, [1, 2, 3]);
        disk.FailWritesWithNoSpace = true;
        TestReply reply = await client.RequestAsync(NbdCommand.Write, 0, 0, 3, new byte[] { 7, 7, 7 });
        Assert.Equal(NbdError.NoSpace, reply.Error);
        Assert.Contains("no space", reply.ErrorMessage);
        Assert.Equal(NbdError.NoSpace, (await client.RequestAsync(NbdCommand.WriteZeroes, NbdCommandFlags.NoHole, 0, 4096)).Error);
        Assert.Equal(new byte[] { 1, 2, 3 }, await client.ReadAsync(0, 3));
        disk.FailWritesWithNoSpace = false;
        await AssertServesAsync(client);
    }

    [Theory]
    [InlineData("media", NbdError.IO)]
    [InlineData("not-owner", NbdError.Shutdown)]
    [InlineData("unexpected", NbdError.IO)]
    [InlineData("range", NbdError.Invalid)]
    public async Task Engine_errors_map_to_errno_and_the_connection_continues(string kind, uint expected)
    {
        foreach (bool asynchronous in new[] { false, true })
        {
            var (server, disk, _) = NbdTestServer.StartDefault(output);
            await using var _s = server;
            await using TestNbdClient client = await server.OpenAsync("disk", structured: asynchronous);
            disk.FaultInjector = (operation, offset) => operation == "read" && offset == 4096 ? kind switch
            {
                "media" => new MediaErrorException("checksum mismatch"),
                "not-owner" => new NotOwnerException("volume moved"),
                "range" => new Target.Dedup.OutOfRangeException("outside"),
                _ => new InvalidOperationException("engine bug"),
            } : null;
            if (asynchronous) disk.Latency = (_, _) => TimeSpan.FromMilliseconds(1);
            TestReply reply = await client.RequestAsync(NbdCommand.Read, 0, 4096, 512);
            Assert.Equal(expected, reply.Error);
            if (!asynchronous) Assert.Null(reply.Data);   // a simple error reply carries no payload
            if (kind == "unexpected")
            {
                Assert.True(await server.Logger.WaitForAsync(LogLevel.Error, "failed unexpectedly"));
                if (asynchronous) Assert.Equal("internal error", reply.ErrorMessage);
            }
            disk.FaultInjector = null;
            disk.Latency = null;
            await AssertServesAsync(client);
        }
    }

    [Fact]
    public async Task Client_vanishing_mid_write_payload_changes_nothing_and_harms_no_one()
    {
        var (server, disk, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        disk.Fill(0, Enumerable.Repeat((byte)0x11, 128 * 1024).ToArray());
        await using TestNbdClient other = await server.OpenAsync();

        foreach (int payloadBytes in new[] { 4096, 128 * 1024 })
        {
            TestNbdClient vanishing = await server.OpenAsync();
            byte[] request = TestNbdClient.EncodeRequest(NbdCommand.Write, 0, 1, 0, (uint)payloadBytes,
                Enumerable.Repeat((byte)0xee, payloadBytes / 2).ToArray());
            await vanishing.SendAsync(request);
            await vanishing.DisposeAsync();
            Assert.True(await server.Logger.WaitForAsync(LogLevel.Warning, "in the middle of a request"));
        }

        await AssertServesAsync(other, 256 * 1024);
        Assert.Equal(1, disk.WriteCount);   // only the other client's write
        Assert.All(disk.Snapshot(0, 128 * 1024), b => Assert.Equal(0x11, b));
    }

    [Fact]
    public async Task Garbage_after_the_handshake_closes_that_connection_and_the_server_keeps_serving()
    {
        Random random = TestSeed.Create(output);
        var (server, _, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient client = await server.OpenAsync();
        var garbage = new byte[10_000];
        random.NextBytes(garbage);
        garbage[0] = 0;   // never the request magic
        await client.SendAsync(garbage);
        Assert.True(await client.IsClosedByServerAsync());

        await using TestNbdClient fresh = await server.OpenAsync();
        await AssertServesAsync(fresh);
    }

    [Fact]
    public async Task Unknown_command_and_unknown_flags_are_einval_and_the_connection_continues()
    {
        var (server, _, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient client = await server.OpenAsync();
        Assert.Equal(NbdError.Invalid, (await client.RequestAsync((NbdCommand)42, 0, 0, 0)).Error);
        Assert.Equal(NbdError.Invalid, (await client.RequestAsync(NbdCommand.Read, (NbdCommandFlags)0x4000, 0, 512)).Error);
        Assert.Equal(NbdError.Invalid, (await client.RequestAsync(NbdCommand.Trim, NbdCommandFlags.NoHole, 0, 512)).Error);
        // A WRITE with a bad flag still has its payload skipped.
        Assert.Equal(NbdError.Invalid, (await client.RequestAsync(NbdCommand.Write, NbdCommandFlags.ReqOne, 0, 4, new byte[] { 1, 2, 3, 4 })).Error);
        await AssertServesAsync(client);
    }

    [Fact]
    public async Task Df_without_structured_replies_is_einval()
    {
        var (server, _, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient client = await server.OpenAsync("disk", structured: false);
        TestReply reply = await client.RequestAsync(NbdCommand.Read, NbdCommandFlags.DontFragment, 0, 512);
        Assert.Equal(NbdError.Invalid, reply.Error);
        Assert.Null(reply.Data);
        await AssertServesAsync(client);
    }
}
