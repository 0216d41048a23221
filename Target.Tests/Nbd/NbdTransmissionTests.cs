// Transmission-phase round trips against a live server over MemoryVolume.
using System.Net.Sockets;
using Target.Dedup;
using Target.Protocol.Nbd;
using Target.Tests.Support;
using Xunit.Abstractions;

namespace Target.Tests.Nbd;

public sealed class NbdTransmissionTests(ITestOutputHelper output)
{
    private static byte[] RandomBytes(Random random, int length)
    {
        var bytes = new byte[length];
        random.NextBytes(bytes);
        return bytes;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Random_writes_then_reads_round_trip(bool structured)
    {
        Random random = TestSeed.Create(output);
        var (server, disk, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient client = await server.OpenAsync("disk", structured);
        var model = new byte[disk.SizeBytes];
        for (int i = 0; i < 100; i++)
        {
            int length = random.Next(1, 3) == 1 ? 4096 : random.Next(1, 200_000);
            long offset = random.Next(1, 3) == 1 ? random.Next(0, (int)(disk.SizeBytes / 4096)) * 4096L : random.NextInt64(0, disk.SizeBytes - length);
            offset = Math.Min(offset, disk.SizeBytes - length);
            byte[] data = RandomBytes(random, length);
            await client.WriteAsync((ulong)offset, data);
            data.CopyTo(model, offset);

            int readLength = random.Next(1, 300_000);
            long readOffset = random.NextInt64(0, disk.SizeBytes - readLength);
            byte[] read = await client.ReadAsync((ulong)readOffset, (uint)readLength);
            Assert.True(model.AsSpan((int)readOffset, readLength).SequenceEqual(read), $"mismatch reading [{readOffset}, +{readLength}) after write {i}");
        }
        Assert.True(model.AsSpan(0, 1 << 20).SequenceEqual(disk.Snapshot(0, 1 << 20)));
    }

    [Fact]
    public async Task Flush_and_fua_reach_the_volume()
    {
        var (server, disk, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient client = await server.OpenAsync();
        Assert.Equal(0u, (await client.RequestAsync(NbdCommand.Flush, 0, 0, 0)).Error);
        Assert.Equal(1, disk.FlushCount);
        await client.WriteAsync(0, new byte[4096], NbdCommandFlags.Fua);
        Assert.Equal(1, disk.FuaWriteCount);
        await client.WriteAsync(4096, new byte[4096]);
        Assert.Equal(1, disk.FuaWriteCount);
        Assert.Equal(2, disk.WriteCount);

        // TRIM with FUA is made durable with a flush; WRITE_ZEROES passes FUA down.
        Assert.Equal(0u, (await client.RequestAsync(NbdCommand.Trim, NbdCommandFlags.Fua, 0, 4096)).Error);
        Assert.Equal(2, disk.FlushCount);
        Assert.Equal(0u, (await client.RequestAsync(NbdCommand.WriteZeroes, NbdCommandFlags.Fua, 0, 4096)).Error);
        Assert.Equal(ZeroFlags.Fua, disk.LastZeroFlags);
    }

    [Fact]
    public async Task Trim_and_write_zeroes_show_in_block_status_and_read_as_zero()
    {
        var (server, disk, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient client = await server.OpenAsync();
        byte[] ones = Enumerable.Repeat((byte)1, 16 * 4096).ToArray();
        await client.WriteAsync(0, ones);

        Assert.Equal(0u, (await client.RequestAsync(NbdCommand.Trim, 0, 4096, 4096)).Error);
        Assert.Equal(0u, (await client.RequestAsync(NbdCommand.WriteZeroes, NbdCommandFlags.NoHole, 8192, 8192)).Error);
        Assert.Equal(ZeroFlags.NoHole, disk.LastZeroFlags);
        Assert.Equal(0u, (await client.RequestAsync(NbdCommand.WriteZeroes, 0, 16384, 4096)).Error);

        byte[] read = await client.ReadAsync(0, 6 * 4096);
        Assert.All(read.AsSpan(0, 4096).ToArray(), b => Assert.Equal(1, b));
        Assert.All(read.AsSpan(4096, 4 * 4096).ToArray(), b => Assert.Equal(0, b));
        Assert.All(read.AsSpan(5 * 4096).ToArray(), b => Assert.Equal(1, b));

        TestReply status = await client.RequestAsync(NbdCommand.BlockStatus, 0, 0, 6 * 4096);
        Assert.Equal(0u, status.Error);
        Assert.Equal(1, status.CountChunks(NbdReplyType.BlockStatus));
        Assert.Equal(
            [
                (4096u, 0u),
                (4096u, NbdAllocationState.Hole | NbdAllocationState.Zero),
                (8192u, NbdAllocationState.Zero),
                (4096u, NbdAllocationState.Hole | NbdAllocationState.Zero),
                (4096u, 0u),
            ],
            status.Extents);

        // Beyond the written area the volume is one hole, reported up to the request length.
        TestReply tail = await client.RequestAsync(NbdCommand.BlockStatus, 0, 1 << 20, 1 << 20);
        Assert.Equal([((uint)(1 << 20), NbdAllocationState.Hole | NbdAllocationState.Zero)], tail.Extents);
    }

    [Fact]
    public async Task Block_status_with_req_one_returns_exactly_one_extent_within_the_request()
    {
        var (server, _, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient client = await server.OpenAsync();
        await client.WriteAsync(0, new byte[8192].Select(_ => (byte)9).ToArray());
        TestReply reply = await client.RequestAsync(NbdCommand.BlockStatus, NbdCommandFlags.ReqOne, 4096, 64 * 1024);
        Assert.Equal([(4096u, 0u)], reply.Extents);
        reply = await client.RequestAsync(NbdCommand.BlockStatus, NbdCommandFlags.ReqOne, 8192, 100);
        Assert.Equal([(100u, NbdAllocationState.Hole | NbdAllocationState.Zero)], reply.Extents);
    }

    [Fact]
    public async Task Block_status_without_a_meta_context_is_einval()
    {
        var (server, _, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient client = await server.OpenAsync("disk", structured: true, metaContext: false);
        TestReply reply = await client.RequestAsync(NbdCommand.BlockStatus, 0, 0, 4096);
        Assert.Equal(NbdError.Invalid, reply.Error);
        Assert.Equal(new byte[16], await client.ReadAsync(0, 16));
    }

    [Fact]
    public async Task Fast_zero_on_a_volume_that_cannot_is_enotsup_and_changes_nothing()
    {
        var slow = new MemoryVolume("slow", 1 << 20, VolumeCapabilities.WriteZeroes | VolumeCapabilities.Trim | VolumeCapabilities.BlockStatus);
        await using var server = new NbdTestServer(output, null, null, new NbdExport("slow", slow, "", false));
        await using TestNbdClient client = await server.OpenAsync("slow");
        Assert.True((client.Export!.Flags & NbdTransmissionFlags.SendFastZero) != 0);
        await client.WriteAsync(0, Enumerable.Repeat((byte)5, 4096).ToArray());
        TestReply reply = await client.RequestAsync(NbdCommand.WriteZeroes, NbdCommandFlags.FastZero, 0, 4096);
        Assert.Equal(NbdError.NotSupported, reply.Error);
        Assert.All(await client.ReadAsync(0, 4096), b => Assert.Equal(5, b));
        Assert.Equal(0u, (await client.RequestAsync(NbdCommand.WriteZeroes, 0, 0, 4096)).Error);
        Assert.All(await client.ReadAsync(0, 4096), b => Assert.Equal(0, b));
    }

    [Fact]
    public async Task Structured_read_sends_holes_as_offset_hole_chunks_and_df_gets_one_data_chunk()
    {
        var (server, disk, _) = NbdTestServer.StartDefault(output, new NbdServerOptions { HoleReplyMinBytes = 4096 });
        await using var _s = server;
        await using TestNbdClient client = await server.OpenAsync();
        byte[] a = Enumerable.Repeat((byte)0xaa, 4096).ToArray();
        await client.WriteAsync(4096, a);
        await client.WriteAsync(3 * 4096, a);
        Assert.Equal(0u, (await client.RequestAsync(NbdCommand.WriteZeroes, NbdCommandFlags.NoHole, 5 * 4096, 4096)).Error);

        // [hole][data][hole][data][hole][zero][hole...] over 8 pages, starting mid-page.
        TestReply reply = await client.RequestAsync(NbdCommand.Read, 0, 2048, 8 * 4096 - 2048);
        Assert.Equal(0u, reply.Error);
        Assert.Equal(2, reply.CountChunks(NbdReplyType.OffsetData));
        Assert.Equal(3, reply.CountChunks(NbdReplyType.OffsetHole));
        Assert.Equal(disk.Snapshot(2048, 8 * 4096 - 2048), reply.Data);
        Assert.Equal(NbdReplyType.FlagDone, reply.Chunks[^1].Flags);
        Assert.All(reply.Chunks.Take(reply.Chunks.Count - 1), c => Assert.Equal(0, c.Flags));

        reply = await client.RequestAsync(NbdCommand.Read, NbdCommandFlags.DontFragment, 0, 8 * 4096);
        Assert.Equal(ReplyChunkTypes(NbdReplyType.OffsetData), reply.Chunks.Select(c => c.Type));
        Assert.Equal(disk.Snapshot(0, 8 * 4096), reply.Data);

        // A read of pure data is one chunk.
        reply = await client.RequestAsync(NbdCommand.Read, 0, 4096, 4096);
        Assert.Equal(ReplyChunkTypes(NbdReplyType.OffsetData), reply.Chunks.Select(c => c.Type));
        Assert.Equal(a, reply.Data);

        // A read of pure hole is one hole chunk.
        reply = await client.RequestAsync(NbdCommand.Read, 0, 1 << 20, 1 << 20);
        Assert.Equal(ReplyChunkTypes(NbdReplyType.OffsetHole), reply.Chunks.Select(c => c.Type));
        Assert.Equal(new byte[1 << 20], reply.Data);
    }

    private static ushort[] ReplyChunkTypes(params ushort[] types) => types;

    [Fact]
    public async Task Zero_length_requests_succeed()
    {
        var (server, _, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        foreach (bool structured in new[] { false, true })
        {
            await using TestNbdClient client = await server.OpenAsync("disk", structured);
            Assert.Empty(await client.ReadAsync(0, 0));
            Assert.Equal(0u, (await client.RequestAsync(NbdCommand.Write, 0, 0, 0)).Error);
            Assert.Equal(0u, (await client.RequestAsync(NbdCommand.Trim, 0, 0, 0)).Error);
            Assert.Equal(0u, (await client.RequestAsync(NbdCommand.WriteZeroes, 0, 0, 0)).Error);
        }
    }

    [Fact]
    public async Task Cache_is_a_successful_no_op()
    {
        var (server, disk, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient client = await server.OpenAsync();
        Assert.Equal(0u, (await client.RequestAsync(NbdCommand.Cache, 0, 0, 1 << 20)).Error);
        Assert.Equal(0, disk.ReadCount);
        Assert.Equal(NbdError.Invalid, (await client.RequestAsync(NbdCommand.Cache, 0, (ulong)disk.SizeBytes, 1)).Error);
    }

    [Fact]
    public async Task Sixty_four_pipelined_requests_are_dispatched_concurrently_and_answered_by_handle()
    {
        Random random = TestSeed.Create(output);
        var (server, disk, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient client = await server.OpenAsync();
        const int Count = 64;
        var expected = new Dictionary<ulong, byte[]>();
        var prefill = new byte[Count * 4096];
        random.NextBytes(prefill);
        disk.Fill(0, prefill);

        // Earlier requests are slower, so a server that works on them one at a time answers in
        // order and a concurrent one answers (mostly) in reverse.
        disk.Latency = (operation, offset) => operation is "read" or "write" ? TimeSpan.FromMilliseconds(2 * (Count - offset / 4096)) : TimeSpan.Zero;

        var batch = new MemoryStream();
        var handles = new List<ulong>();
        var written = new Dictionary<long, byte[]>();
        for (int i = 0; i < Count; i++)
        {
            ulong handle = client.NextHandle();
            handles.Add(handle);
            long offset = i * 4096L;
            if (i % 2 == 0)
            {
                byte[] data = RandomBytes(random, 4096);
                written[offset] = data;
                client.Track(NbdCommand.Write, handle, (ulong)offset, 4096);
                batch.Write(TestNbdClient.EncodeRequest(NbdCommand.Write, 0, handle, (ulong)offset, 4096, data));
            }
            else
            {
                expected[handle] = prefill.AsSpan((int)offset, 4096).ToArray();
                client.Track(NbdCommand.Read, handle, (ulong)offset, 4096);
                batch.Write(TestNbdClient.EncodeRequest(NbdCommand.Read, 0, handle, (ulong)offset, 4096));
            }
        }
        var stopwatch = System.Diagnostics.Stopwatch.StartNew();
        await client.SendAsync(batch.ToArray());   // all 64 in one send

        var order = new List<ulong>();
        for (int i = 0; i < Count; i++)
        {
            TestReply reply = await client.ReadReplyAsync();
            Assert.Equal(0u, reply.Error);
            order.Add(reply.Handle);
            if (expected.TryGetValue(reply.Handle, out byte[]? data)) Assert.Equal(data, reply.Data);
        }
        stopwatch.Stop();
        Assert.Equal(handles.Order(), order.Order());
        output.WriteLine($"64 requests answered in {stopwatch.ElapsedMilliseconds} ms; first replies: {string.Join(",", order.Take(8))}");
        Assert.NotEqual(handles, order);
        // Serial execution would take the sum of latencies (~4 s); concurrent takes about the longest (~128 ms).
        Assert.True(stopwatch.ElapsedMilliseconds < 2000, $"took {stopwatch.ElapsedMilliseconds} ms: requests were not dispatched concurrently");

        disk.Latency = null;
        foreach ((long offset, byte[] data) in written) Assert.Equal(data, disk.Snapshot(offset, 4096));
    }

    [Fact]
    public async Task More_pipelined_requests_than_the_queue_depth_are_all_answered()
    {
        var (server, disk, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient client = await server.OpenAsync();
        disk.Fill(0, Enumerable.Range(0, 4096).Select(i => (byte)i).ToArray());
        // Slow volume: requests stay in flight, so the receive loop must stop at QueueDepthMax and resume.
        disk.Latency = (_, _) => TimeSpan.FromMilliseconds(1);
        int count = NbdLimits.QueueDepthMax * 3;
        var batch = new MemoryStream();
        for (int i = 0; i < count; i++)
        {
            ulong handle = client.NextHandle();
            client.Track(NbdCommand.Read, handle, (ulong)(i % 16), 64);
            batch.Write(TestNbdClient.EncodeRequest(NbdCommand.Read, 0, handle, (ulong)(i % 16), 64));
        }
        await client.SendAsync(batch.ToArray());
        var seen = new HashSet<ulong>();
        for (int i = 0; i < count; i++)
        {
            TestReply reply = await client.ReadReplyAsync();
            Assert.Equal(0u, reply.Error);
            Assert.True(seen.Add(reply.Handle));
            int offset = (int)((reply.Handle - 1) % 16);
            Assert.Equal(Enumerable.Range(offset, 64).Select(b => (byte)b).ToArray(), reply.Data);
        }
        disk.Latency = null;
        await client.WriteAsync(0, [1]);
    }

    [Fact]
    public async Task Many_connections_work_at_once()
    {
        Random random = TestSeed.Create(output);
        var (server, disk, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        const int Connections = 8;
        int[] seeds = Enumerable.Range(0, Connections).Select(_ => random.Next()).ToArray();
        await Task.WhenAll(Enumerable.Range(0, Connections).Select(async c =>
        {
            var local = new Random(seeds[c]);
            await using TestNbdClient client = await server.OpenAsync("disk", structured: c % 2 == 0);
            long region = c * (disk.SizeBytes / Connections);
            for (int i = 0; i < 20; i++)
            {
                byte[] data = RandomBytes(local, local.Next(1, 65536));
                long offset = region + local.Next(0, 1 << 20);
                await client.WriteAsync((ulong)offset, data);
                Assert.Equal(data, await client.ReadAsync((ulong)offset, (uint)data.Length));
            }
            await client.SendDisconnectAsync();
            Assert.True(await client.IsClosedByServerAsync());
        }));
    }

    [Fact]
    public async Task Disconnect_answers_outstanding_requests_then_closes()
    {
        var (server, disk, _) = NbdTestServer.StartDefault(output);
        await using var _s = server;
        await using TestNbdClient client = await server.OpenAsync();
        disk.Latency = (_, _) => TimeSpan.FromMilliseconds(50);
        var data = Enumerable.Repeat((byte)3, 4096).ToArray();
        ulong handle = client.NextHandle();
        client.Track(NbdCommand.Write, handle, 0, 4096);
        var bytes = new MemoryStream();
        bytes.Write(TestNbdClient.EncodeRequest(NbdCommand.Write, 0, handle, 0, 4096, data));
        bytes.Write(TestNbdClient.EncodeRequest(NbdCommand.Disconnect, 0, client.NextHandle(), 0, 0));
        await client.SendAsync(bytes.ToArray());
        TestReply reply = await client.ReadReplyAsync();
        Assert.Equal(handle, reply.Handle);
        Assert.Equal(0u, reply.Error);
        Assert.True(await client.IsClosedByServerAsync());
        disk.Latency = null;
        Assert.Equal(data, disk.Snapshot(0, 4096));
    }

    [Fact]
    public async Task Large_reads_and_writes_up_to_the_maximum_block_size_work()
    {
        Random random = TestSeed.Create(output);
        var big = new MemoryVolume("big", 64L << 20);
        await using var server = new NbdTestServer(output, null, null, new NbdExport("big", big, "", false));
        foreach (bool structured in new[] { false, true })
        {
            await using TestNbdClient client = await server.OpenAsync("big", structured);
            byte[] data = RandomBytes(random, NbdLimits.MaxRequestBytes);
            await client.WriteAsync(4096, data);
            byte[] read = await client.ReadAsync(4096, (uint)data.Length);
            Assert.True(data.AsSpan().SequenceEqual(read));
        }
    }

    [Fact]
    public async Task A_large_write_whose_payload_arrives_in_pieces_with_pauses_is_answered()
    {
        // While a large payload arrives the server raises its receive low-water mark; it must never
        // wait for more than the payload still owed, or a client that sends the rest and then waits
        // for the reply would wait forever. Pieces straddle the mark (256 KiB) and end short of it.
        Random random = TestSeed.Create(output);
        var big = new MemoryVolume("big", 64L << 20);
        await using var server = new NbdTestServer(output, null, null, new NbdExport("big", big, "", false));
        await using TestNbdClient client = await server.OpenAsync("big");
        foreach (int[] pieces in new[] { new[] { 100_000, 300_000, 300_000, 348_576 }, new[] { 1_048_575, 1 }, new[] { 70_000, 1_000 } })
        {
            int total = pieces.Sum();
            byte[] data = RandomBytes(random, total);
            ulong handle = client.NextHandle();
            client.Track(NbdCommand.Write, handle, 8192, (uint)total);
            await client.SendAsync(TestNbdClient.EncodeRequest(NbdCommand.Write, 0, handle, 8192, (uint)total));
            int sent = 0;
            foreach (int piece in pieces)
            {
                await Task.Delay(50);
                await client.SendAsync(data.AsMemory(sent, piece));
                sent += piece;
            }
            TestReply reply = await client.ReadReplyAsync();
            Assert.Equal(handle, reply.Handle);
            Assert.Equal(0u, reply.Error);
            byte[] read = await client.ReadAsync(8192, (uint)total);
            Assert.True(data.AsSpan().SequenceEqual(read));
        }
    }

    [Fact]
    public async Task Unix_socket_listener_serves_and_is_removed_on_stop()
    {
        string path = Path.Combine(Path.GetTempPath(), $"nbd-test-{Guid.NewGuid():N}.sock");
        File.WriteAllText(path, "stale");   // a stale file at the path is replaced
        var disk = new MemoryVolume("disk", 1 << 20);
        var server = new NbdTestServer(output, null, path, new NbdExport("disk", disk, "", false));
        await using (server)
        {
            Assert.Contains(server.Server.BoundEndPoints, e => e is UnixDomainSocketEndPoint);
            await using TestNbdClient client = await TestNbdClient.OpenAsync(new UnixDomainSocketEndPoint(path), "disk");
            await client.WriteAsync(0, [1, 2, 3]);
            Assert.Equal(new byte[] { 1, 2, 3 }, await client.ReadAsync(0, 3));
        }
        Assert.False(File.Exists(path));
    }

    [Fact]
    public async Task Stopping_the_server_closes_open_connections()
    {
        var (server, _, _) = NbdTestServer.StartDefault(output);
        TestNbdClient client = await server.OpenAsync();
        await using (client)
        {
            await server.DisposeAsync();
            Assert.True(await client.IsClosedByServerAsync());
        }
    }
}
